"""The gallery's routes: browse, search (refined by more/less like this, near-duplicates
hidden, diversified), upload, Index, Duplicates, thumbnails. `app.py` serves them.

Routes:
    GET  /                      browse (ListRecords), or search: ?similar=ID | ?text=T,
                                with k, label, min_score, ns, and more=ID / less=ID
                                (repeated), dedup=1, diverse=1; the state is the URL
    GET  /duplicates            groups of near-duplicates (?min_score=0.95)
    POST /api/query-image       an outside image (the body) -> JSON matches; not stored
    POST /api/index, GET ...    start the Index job / its progress (JSON)
    GET  /api/health            200 while search_service answers, 503 with why otherwise
    GET  /thumb/PATH            thumbnail of a file under --root
    GET  /cifar/ID              thumbnail of a CIFAR record from --cifar archives
    GET  /static/...            the page's own CSS, JS and placeholder: nothing external
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from imagesearch_client.aio import AsyncImageSearchClient
from imagesearch_client.errors import ImageSearchError, NotFound, Unauthenticated, Unavailable
from imagesearch_client.messages import Example, listed_name, reported_name
from imagesearch_client.web.config import WebSettings
from imagesearch_client.web.files import CifarImages, Thumbnails
from imagesearch_client.web.jobs import IndexJob
from imagesearch_client.web.pages import (
    DuplicateTiles,
    GalleryTile,
    Page,
    View,
    name_of,
    render,
    tile_json,
)

log = logging.getLogger("imagesearch_client.web")

STATIC = Path(__file__).parent / "static"
BROWSE_PAGE = 48
MAX_K = 200
LABEL_SCAN = 5000
LABEL_TTL_S = 30.0
# Namespaces whose labels are remembered: `?ns=` is whatever a visitor types.
LABEL_NAMESPACES = 64
HEALTH_TIMEOUT_S = 2.0
# "less like this" pushes away at half the pull of "more like this".
LESS_WEIGHT = -0.5
MAX_EXAMPLES = 15  # beside the search itself: the service takes 16
DEDUP_ABOVE = 0.95
DIVERSITY = 0.5
DUPLICATES_MIN_SCORE = 0.95
DUPLICATE_GROUPS_SHOWN = 100
GROUP_TILES_SHOWN = 24
FETCH_MOST = 1000


class Gallery:
    """State shared by the routes: the client, the Index job, caches."""

    def __init__(self, settings: WebSettings, client: AsyncImageSearchClient) -> None:
        self.settings = settings
        self.client = client
        self.thumbs = Thumbnails(settings.root)
        self.cifar = CifarImages(settings.cifar)
        self.job = IndexJob(settings.root)
        self._job_task: asyncio.Task[None] | None = None
        self._labels: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()

    # --- the page ------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        view = _view(request)
        page = Page(
            view=view,
            title=self.settings.title,
            root=self.settings.root.name or str(self.settings.root),
            index_status=self.job.status() if self.job.recent() else {},
            max_upload_mb=self.settings.max_upload_mb,
        )
        try:
            stats = await self.client.stats()
            page.namespaces = sorted(listed_name(ns) for ns in stats.namespaces) or [""]
            if view.namespace not in page.namespaces and len(page.namespaces) == 1:
                view.namespace = page.namespaces[0]
            page.labels = await self._labels_of(view.namespace)
            if view.text:
                page.heading = f"Most similar to the text “{view.text}”" + _refined(view)
                page.tiles = await self._query(view, Example(text=view.text))
            elif view.similar:
                found = await self.client.fetch([view.similar], namespace=view.namespace)
                if found:
                    page.query = GalleryTile(view.similar, found[0].metadata)
                    page.heading = f"Most similar to {name_of(view.similar, found[0].metadata)}"
                page.heading = (page.heading or "Most similar") + _refined(view)
                page.tiles = await self._query(view, Example(id=view.similar))
            elif view.more or view.less:
                page.heading = "Refined search" + _refined(view)
                page.tiles = await self._query(view, None)
            elif view.label:
                page.tiles, scanned, complete = await self._labelled(view)
                page.heading = f"{len(page.tiles)} images labelled “{view.label}”" + (
                    "" if complete else f" among the first {scanned}"
                )
            else:
                listing = await self.client.list_records(
                    namespace=view.namespace,
                    page_size=BROWSE_PAGE,
                    page_token=view.page_token,
                    include_metadata=True,
                )
                page.heading = (
                    f"{stats.namespaces.get(reported_name(view.namespace), 0)} images"
                    if listing.records
                    else "Nothing is stored yet: press Index"
                )
                page.tiles = [GalleryTile(r.id, r.metadata) for r in listing.records]
                if listing.next_page_token:
                    page.next_link = view.link(page_token=listing.next_page_token)
            if view.searching and not page.tiles:
                page.message = "No matches (lower the minimum score, or clear the label)."
        except (Unavailable, Unauthenticated) as exc:
            page.down = _down(self.client.target, exc)
        except NotFound as exc:
            page.message = exc.message
        except ImageSearchError as exc:
            page.message = f"search_service refused this: {exc.message}"
        return HTMLResponse(render(page), status_code=200)

    async def _query(self, view: View, base: Example | None) -> list[GalleryTile]:
        """The search `base` starts, with the view's more/less examples and toggles."""
        examples = [base] if base is not None else []
        examples += [Example(id=i) for i in view.more]
        examples += [Example(id=i, weight=LESS_WEIGHT) for i in view.less]
        what: dict[str, Any] = {"examples": examples}
        if len(examples) == 1 and base is not None:  # a plain search, its own id included
            plain = (("image", base.image), ("text", base.text), ("id", base.id))
            what = {name: value for name, value in plain if value is not None}
        matches = await self.client.query(
            top_k=view.k,
            namespace=view.namespace,
            filter={"label": view.label} if view.label else None,
            min_score=view.min_score,
            include_metadata=True,
            collapse_above=DEDUP_ABOVE if view.dedup else 0.0,
            diversity=DIVERSITY if view.diverse else 0.0,
            **what,
        )
        hidden = [i for m in matches for i in m.collapsed_ids]
        stored = await self._records(hidden, view.namespace)
        return [
            GalleryTile(m.id, m.metadata, m.score,
                        [GalleryTile(i, stored.get(i, {})) for i in m.collapsed_ids])
            for m in matches
        ]  # fmt: skip

    async def _records(self, ids: list[str], namespace: str) -> dict[str, dict[str, Any]]:
        """The metadata of `ids` (those still stored), fetched FETCH_MOST at a time."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), FETCH_MOST):
            chunk = ids[start : start + FETCH_MOST]
            found |= {r.id: r.metadata for r in await self.client.fetch(chunk, namespace=namespace)}
        return found

    async def duplicates(self, request: Request) -> Response:
        view = _view(request)
        try:
            min_score = float(request.query_params.get("min_score") or DUPLICATES_MIN_SCORE)
        except ValueError:
            min_score = DUPLICATES_MIN_SCORE
        page = Page(view=view, title=self.settings.title,
                    root=self.settings.root.name or str(self.settings.root),
                    max_upload_mb=self.settings.max_upload_mb, groups=[])  # fmt: skip
        try:
            groups = []
            async for step in self.client.find_duplicates(
                min_score=min_score, namespace=view.namespace
            ):
                groups.extend(step.groups)
                if len(groups) >= DUPLICATE_GROUPS_SHOWN:
                    break
            shown = [g.members[:GROUP_TILES_SHOWN] for g in groups[:DUPLICATE_GROUPS_SHOWN]]
            stored = await self._records([m.id for g in shown for m in g], view.namespace)
            page.groups = [
                DuplicateTiles([GalleryTile(m.id, stored.get(m.id, {}), m.score) for m in members],
                               group.exact, len(group.members))
                for members, group in zip(shown, groups, strict=False)
            ]  # fmt: skip
            page.heading = (
                f"{len(groups)} groups of near-duplicates (cosine ≥ {min_score:g})"
                if groups
                else f"No near-duplicates (cosine ≥ {min_score:g})"
            )
        except (Unavailable, Unauthenticated) as exc:
            page.down = _down(self.client.target, exc)
        except ImageSearchError as exc:
            page.message = f"search_service refused this: {exc.message}"
        return HTMLResponse(render(page), status_code=200)

    async def _labelled(self, view: View) -> tuple[list[GalleryTile], int, bool]:
        """Browsing with a label: the first BROWSE_PAGE records that carry it, found among
        at most LABEL_SCAN (ListRecords has no filter); (tiles, scanned, scanned all)."""
        tiles: list[GalleryTile] = []
        scanned = 0
        async for page in self.client.iter_pages(
            namespace=view.namespace, page_size=1000, include_metadata=True
        ):
            for record in page.records:
                label = record.metadata.get("label")
                if label == view.label or (isinstance(label, list) and view.label in label):
                    tiles.append(GalleryTile(record.id, record.metadata))
            scanned += len(page.records)
            if len(tiles) >= BROWSE_PAGE or scanned >= LABEL_SCAN:
                return tiles[:BROWSE_PAGE], scanned, False
        return tiles, scanned, True

    async def _labels_of(self, namespace: str) -> list[str]:
        """Labels present (from the first LABEL_SCAN records), cached a little while."""
        cached = self._labels.get(namespace)
        if cached is not None and time.monotonic() - cached[0] < LABEL_TTL_S:
            return cached[1]
        labels: set[str] = set()
        scanned = 0
        async for page in self.client.iter_pages(
            namespace=namespace, page_size=1000, include_metadata=True
        ):
            labels.update(str(r.metadata["label"]) for r in page.records if "label" in r.metadata)
            scanned += len(page.records)
            if scanned >= LABEL_SCAN:
                break
        found = sorted(labels)
        self._labels[namespace] = (time.monotonic(), found)
        self._labels.move_to_end(namespace)
        while len(self._labels) > LABEL_NAMESPACES:
            self._labels.popitem(last=False)
        return found

    # --- JSON api --------------------------------------------------------------------

    async def query_image(self, request: Request) -> Response:
        view = _view(request)
        limit = self.settings.max_upload_mb * 1024 * 1024
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _too_large(int(declared), self.settings.max_upload_mb)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _too_large(len(body), self.settings.max_upload_mb)
        if not body:
            return JSONResponse({"error": "the upload is empty: choose an image file"}, 400)
        try:
            tiles = await self._query(view, Example(image=bytes(body)))
        except (Unavailable, Unauthenticated) as exc:
            return JSONResponse({"error": _down(self.client.target, exc), "down": True}, 503)
        except ImageSearchError as exc:
            why = {
                "IMAGE_UNREADABLE": "this file is not an image the service can read",
                "IMAGE_TOO_LARGE": "this image is too large for the service",
            }.get(exc.reason, exc.message)
            return JSONResponse({"error": f"{why} ({exc.reason}: {exc.message})"}, 400)
        return JSONResponse({"matches": [tile_json(t, view) for t in tiles]})

    async def start_index(self, request: Request) -> Response:
        if not self.job.running:
            self.job.namespace = _view(request).namespace
            self._labels.clear()
            self.job.running = True  # at once, so a second press sees it
            self.job.started = time.monotonic()
            self._job_task = asyncio.create_task(self.job.run(self.client), name="index-job")
            self._job_task.add_done_callback(lambda _: self._labels.clear())
        return JSONResponse(self.job.status(), status_code=202)

    async def index_status(self, request: Request) -> Response:
        return JSONResponse(self.job.status())

    async def health(self, request: Request) -> Response:
        try:
            await asyncio.wait_for(self.client.stats(), HEALTH_TIMEOUT_S)
        except (ImageSearchError, TimeoutError) as exc:
            why = exc if isinstance(exc, ImageSearchError) else Unavailable("no answer", code="")
            return JSONResponse({"ok": False, "error": _down(self.client.target, why)}, 503)
        return JSONResponse({"ok": True})

    # --- images ----------------------------------------------------------------------

    async def thumb(self, request: Request) -> Response:
        data = await asyncio.to_thread(self.thumbs.get, request.path_params["path"])
        return _image(data, "no such image under --root")

    async def cifar_thumb(self, request: Request) -> Response:
        data = await asyncio.to_thread(self.cifar.get, request.path_params["id"])
        return _image(data, "no such CIFAR image in the --cifar archives")

    async def close(self) -> None:
        if self._job_task is not None:
            self._job_task.cancel()
            await asyncio.gather(self._job_task, return_exceptions=True)


def create_app(settings: WebSettings, client: AsyncImageSearchClient) -> tuple[Starlette, Gallery]:
    gallery = Gallery(settings, client)
    app = Starlette(
        routes=[
            Route("/", gallery.home),
            Route("/duplicates", gallery.duplicates),
            Route("/api/query-image", gallery.query_image, methods=["POST"]),
            Route("/api/index", gallery.start_index, methods=["POST"]),
            Route("/api/index", gallery.index_status, methods=["GET"]),
            Route("/api/health", gallery.health),
            Route("/favicon.ico", _favicon),
            Route("/thumb/{path:path}", gallery.thumb),
            Route("/cifar/{id}", gallery.cifar_thumb),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    # A redirect to the slashed or unslashed path is built from the Host header: none.
    app.router.redirect_slashes = False
    return app, gallery


async def _favicon(request: Request) -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def _view(request: Request) -> View:
    q = request.query_params
    try:
        k = min(max(int(q.get("k") or 12), 1), MAX_K)
    except ValueError:
        k = 12
    try:
        min_score: float | None = float(q["min_score"]) if q.get("min_score") else None
        if min_score is not None and not math.isfinite(min_score):
            min_score = None
    except ValueError:
        min_score = None
    return View(
        namespace=q.get("ns", ""),
        similar=q.get("similar", ""),
        text=q.get("text", "").strip(),
        k=k,
        label=q.get("label", "").strip(),
        min_score=min_score,
        page_token=q.get("page_token", ""),
        more=q.getlist("more")[:MAX_EXAMPLES],
        less=q.getlist("less")[:MAX_EXAMPLES],
        dedup=q.get("dedup") == "1",
        diverse=q.get("diverse") == "1",
    )


def _refined(view: View) -> str:
    parts = [f"{len(view.more)} more like", f"{len(view.less)} less like"]
    said = [part for part, n in zip(parts, (view.more, view.less), strict=True) if n]
    return f" ({', '.join(said)})" if said else ""


def _down(target: str, exc: ImageSearchError) -> str:
    log.warning("search_service at %s cannot be used: %s", target, exc.message)
    if exc.code == "UNAUTHENTICATED" or exc.message.startswith("TLS "):
        # The gallery's own settings: the operator has something to set, not to wait for.
        return f"{exc.message}. This page tries again by itself."
    return (
        f"search_service at {target} cannot be reached. This page tries again by itself "
        "and recovers once it is back."
    )


def _too_large(size: int, limit_mb: int) -> Response:
    return JSONResponse(
        {
            "error": f"the image is {size / 1e6:.1f} MB; at most {limit_mb} MB "
            "(WEB_MAX_UPLOAD_MB) may be uploaded"
        },
        413,
    )


def _image(data: bytes | None, missing: str) -> Response:
    if data is None:
        return Response(missing, status_code=404, media_type="text/plain")
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"}
    )


# --- the process -------------------------------------------------------------------------
