"""The gallery's HTML, rendered on the server; gallery.js adds uploads, paste, drag and
drop, the Index progress and the search_service banner.

Conventions other tests rely on: every tile is an <img> whose alt is the record's id,
inside a .tile that shows the score as text with 3 decimals when it is a search result;
the outside-image query is <input type="file" accept="image/*">, the text query
<input type="search">, the Index button a <button> whose text contains "Index".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from imagesearch_client.sources import CIFAR_ID

PLACEHOLDER = "/static/placeholder.svg"


@dataclass(frozen=True, slots=True)
class GalleryTile:
    id: str
    metadata: Mapping[str, Any]
    score: float | None = None
    # Near-duplicates hidden behind this tile ("+N similar"), when they are hidden.
    similar: Sequence[GalleryTile] = ()


@dataclass
class View:
    """What the URL asks for: `/?similar=ID&k=12&ns=&label=cat&min_score=0.2`, `/?text=`,
    refined by `more=ID` and `less=ID` (repeated), `dedup=1` and `diverse=1`."""

    namespace: str = ""
    similar: str = ""
    text: str = ""
    k: int = 12
    label: str = ""
    min_score: float | None = None
    page_token: str = ""
    more: list[str] = field(default_factory=list)
    less: list[str] = field(default_factory=list)
    dedup: bool = False
    diverse: bool = False

    @property
    def searching(self) -> bool:
        return bool(self.text or self.similar or self.more or self.less)

    def link(self, **changes: Any) -> str:
        values = {
            "ns": self.namespace,
            "similar": self.similar,
            "text": self.text,
            "more": self.more,
            "less": self.less,
            "dedup": 1 if self.dedup else "",
            "diverse": 1 if self.diverse else "",
            "k": self.k,
            "label": self.label,
            "min_score": self.min_score,
            "page_token": self.page_token,
            **changes,
        }
        kept = {
            k: 1 if v is True else v
            for k, v in values.items()
            if v not in ("", None, [], False) and not (k == "k" and v == 12)
        }
        return "/?" + urlencode(kept, doseq=True) if kept else "/"

    def refined(self, record_id: str, *, like: bool) -> str:
        """This search, with `record_id` as one more example to be like (or unlike)."""
        more = [i for i in self.more if i != record_id]
        less = [i for i in self.less if i != record_id]
        (more if like else less).append(record_id)
        return self.link(more=more, less=less, page_token="")


@dataclass
class Page:
    view: View
    title: str
    root: str
    heading: str = ""
    tiles: Sequence[GalleryTile] = ()
    next_link: str = ""
    namespaces: Sequence[str] = ()
    labels: Sequence[str] = ()
    message: str = ""
    down: str = ""
    index_status: Mapping[str, Any] = field(default_factory=dict)
    max_upload_mb: int = 20
    query: GalleryTile | None = None  # the stored image a ?similar= search started from
    groups: Sequence[DuplicateTiles] | None = None  # the Duplicates page


@dataclass(frozen=True, slots=True)
class DuplicateTiles:
    """One group of the Duplicates page: the representative first, then by score."""

    tiles: Sequence[GalleryTile]
    exact: bool
    size: int  # members in the group; tiles may show fewer


def thumb_url(record_id: str, metadata: Mapping[str, Any]) -> str:
    path = metadata.get("path")
    if isinstance(path, str) and path:
        return "/thumb/" + quote(path)
    if CIFAR_ID.match(record_id):
        return "/cifar/" + quote(record_id)
    return PLACEHOLDER


def tile_json(tile: GalleryTile, view: View) -> dict[str, Any]:
    """A tile as gallery.js draws it (uploads are answered in JSON)."""
    return {
        "id": tile.id,
        "score": tile.score,
        "label": _text(tile.metadata.get("label")),
        "path": _text(tile.metadata.get("path")),
        "name": name_of(tile.id, tile.metadata),
        "thumb": thumb_url(tile.id, tile.metadata),
        "href": view.link(similar=tile.id, text="", page_token=""),
    }


def render(page: Page) -> str:
    view = page.view
    tiles = "\n".join(_tile(t, view) for t in page.tiles)
    if page.groups is not None:
        tiles = "\n".join(_group(n, g, view) for n, g in enumerate(page.groups, 1))
    namespaces = ""
    if len(page.namespaces) > 1:
        options = "".join(
            f'<option value="{escape(ns)}"{" selected" if ns == view.namespace else ""}>'
            f"{escape(ns or '(default)')}</option>"
            for ns in page.namespaces
        )
        namespaces = (
            f'<label>namespace <select id="namespace" name="ns" form="search">{options}'
            "</select></label>"
        )
    labels = "".join(f'<option value="{escape(label)}">' for label in page.labels)
    # Raw text inside <script>: only "<" could end it early.
    status = json.dumps(page.index_status or None).replace("<", "\\u003c")
    hidden_similar = (
        f'<input type="hidden" name="similar" value="{escape(view.similar)}">'
        if view.similar and not view.text
        else ""
    )
    # A refined search keeps its examples and toggles when the form changes k or a filter.
    hidden_similar += "".join(
        f'<input type="hidden" name="{name}" value="{escape(value)}">'
        for name, values in (("more", view.more), ("less", view.less))
        for value in values
    ) + "".join(
        f'<input type="hidden" name="{name}" value="1">'
        for name, on in (("dedup", view.dedup), ("diverse", view.diverse))
        if on
    )
    hidden_ns = (
        f'<input type="hidden" name="ns" value="{escape(view.namespace)}">'
        if len(page.namespaces) <= 1 and view.namespace
        else ""
    )
    min_score = "" if view.min_score is None else f"{view.min_score:g}"
    next_link = (
        f'<a id="next-page" href="{escape(page.next_link)}">Next page →</a>'
        if page.next_link
        else ""
    )
    banner = escape(page.down)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(page.heading or page.title)} · {escape(page.title)}</title>
<link rel="stylesheet" href="/static/gallery.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<script src="/static/gallery.js"></script>
</head>
<body data-down="{"1" if page.down else ""}" data-max-upload-mb="{page.max_upload_mb}"
      data-view="{"search" if view.searching else "browse"}" data-k="{view.k}"
      data-ns="{escape(view.namespace)}" data-label="{escape(view.label)}"
      data-min-score="{min_score}">
<header>
  <h1><a href="/">{escape(page.title)}</a></h1>
  <a id="duplicates-link" href="/duplicates">Duplicates</a>
  <form id="search" method="get" action="/">
    {hidden_ns}{hidden_similar}
    <input type="search" name="text" value="{escape(view.text)}"
           placeholder="Search by text: a dog on a beach" aria-label="Search by text">
    <label>label <input name="label" list="labels" value="{escape(view.label)}" size="10"></label>
    <datalist id="labels">{labels}</datalist>
    <label>min score <input name="min_score" type="number" step="0.01" min="-1" max="1"
           value="{min_score}" size="5"></label>
    <label>k <input name="k" type="number" min="1" max="200" value="{view.k}" size="4"></label>
    <button type="submit">Search</button>
    {namespaces}
  </form>
  <div id="drop" tabindex="0">
    <label>Search by an image (not stored):
      <input id="upload" type="file" accept="image/*"></label>
    <span>or drop one here, or paste one</span>
  </div>
  <div id="indexing">
    <button id="index-button" type="button">Index {escape(page.root)}</button>
    <progress id="index-progress" max="1" value="0" hidden></progress>
    <span id="index-text"></span>
    <ul id="index-failures"></ul>
  </div>
</header>
<div id="banner" role="alert"{"" if page.down else " hidden"}>{banner}</div>
<div id="message" role="status">{escape(page.message)}</div>
<main>
  <div class="heading-row">{_query(page.query)}<h2 id="heading">{escape(page.heading)}</h2></div>
  {_toggles(view)}
  <div id="results" class="{"groups" if page.groups is not None else "grid"}">
{tiles}
  </div>
  <nav>{next_link}</nav>
</main>
<script id="index-status" type="application/json">{status}</script>
</body>
</html>
"""


def name_of(record_id: str, metadata: Mapping[str, Any]) -> str:
    """What a person calls a record: its path, else its label, else its id, shortened."""
    return (
        _text(metadata.get("path"))
        or _text(metadata.get("label"))
        or (record_id if len(record_id) <= 24 else record_id[:12] + "…")
    )


def _tile(tile: GalleryTile, view: View) -> str:
    data = tile_json(tile, view)
    hover = " · ".join(x for x in (data["label"], data["path"]) if x) or tile.id
    score = f'<span class="score">{tile.score:.3f}</span>' if tile.score is not None else ""
    label = f'<span class="label">{escape(data["label"])}</span>' if data["label"] else ""
    path = f'<span class="path">{escape(data["name"])}</span>'
    refine = ""
    if view.searching:
        more, less = view.refined(tile.id, like=True), view.refined(tile.id, like=False)
        refine = (
            f'<span class="refine"><a class="more" href="{escape(more)}">more like this</a>'
            f' · <a class="less" href="{escape(less)}">less like this</a></span>'
        )
    similar = ""
    if tile.similar:
        hidden = "".join(
            f'<img alt="{escape(t.id)}" src="{escape(thumb_url(t.id, t.metadata))}"'
            ' width="64" height="64" loading="lazy">'
            for t in tile.similar
        )
        similar = (
            f'<details class="similar"><summary>+{len(tile.similar)} similar</summary>'
            f"{hidden}</details>"
        )
    return (
        f'<figure class="tile" title="{escape(hover)}">'
        f'<a href="{escape(data["href"])}"><img alt="{escape(tile.id)}"'
        f' src="{escape(data["thumb"])}" width="160" height="160" loading="lazy"></a>'
        f"<figcaption><span>{score}{label}</span>{path}{refine}{similar}</figcaption></figure>"
    )


def _group(number: int, group: DuplicateTiles, view: View) -> str:
    kind = "exact duplicates" if group.exact else "look-alikes"
    more = f" (the first {len(group.tiles)} shown)" if group.size > len(group.tiles) else ""
    return (
        f'<section class="group" data-kind="{"exact" if group.exact else "alike"}">'
        f"<h3>Group {number}: {group.size} {kind}{more}</h3>"
        f'<div class="grid">{"".join(_tile(t, view) for t in group.tiles)}</div></section>'
    )


def _toggles(view: View) -> str:
    """Links that switch a refinement of the current search on or off (the URL keeps it)."""
    if not view.searching:
        return ""
    dedup = view.link(dedup=not view.dedup, page_token="")
    diverse = view.link(diverse=not view.diverse, page_token="")
    return (
        '<p id="toggles">'
        f'<a id="toggle-dedup" href="{escape(dedup)}" aria-pressed="{str(view.dedup).lower()}">'
        f"{'☑' if view.dedup else '☐'} hide near-duplicates</a> "
        f'<a id="toggle-diverse" href="{escape(diverse)}"'
        f' aria-pressed="{str(view.diverse).lower()}">'
        f"{'☑' if view.diverse else '☐'} diversify</a></p>"
    )


def _query(tile: GalleryTile | None) -> str:
    if tile is None:
        return ""
    return (
        f'<figure id="query"><img alt="query: {escape(tile.id)}"'
        f' src="{escape(thumb_url(tile.id, tile.metadata))}" width="96" height="96">'
        f"<figcaption>{escape(name_of(tile.id, tile.metadata))}</figcaption></figure>"
    )


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)
