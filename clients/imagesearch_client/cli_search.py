"""`imagesearch query` (one query, or several examples with weights, and the refinements)
and `imagesearch duplicates` (groups of near-duplicates, with a progress bar)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from imagesearch_client.cli_common import file_of, json_filter, print_table, short
from imagesearch_client.client import ImageSearchClient
from imagesearch_client.contact_sheet import SheetTile, contact_sheet
from imagesearch_client.messages import DuplicateGroup, Example, Match

# "2:dog" weighs the example 2 (rclip's notation); anything else is the example itself.
WEIGHTED = re.compile(r"^(?P<weight>\d+(?:\.\d*)?|\.\d+):(?P<value>.+)$", re.S)
KINDS = ("image", "text", "id")
# A group's contact sheet shows its representative and the members closest to it.
SHEET_MOST = 48

Command = Callable[..., argparse.ArgumentParser]


def add_search_commands(command: Command) -> None:
    query = command("query", _query, "find the stored images most similar to a query")
    query.add_argument("image", nargs="?", metavar="IMAGE", help="an image file")
    for kind, what in (("image", "an image file"), ("text", "a text"), ("id", "a stored id")):
        query.add_argument(
            f"--{kind}",
            action="append",
            default=[],
            dest=kind + "s",
            metavar="[W:]" + kind.upper(),
            help=f"{what} the results should be like (weight W, default 1)",
        )
        query.add_argument(f"--not-{kind}", action="append", default=[], dest="not_" + kind,
                           metavar="[W:]" + kind.upper(),
                           help=f"{what} the results should be unlike (weight -W)")  # fmt: skip
    query.add_argument("--top-k", type=int, default=10)
    query.add_argument("--filter", help='a Pinecone filter, e.g. \'{"label": "cat"}\'')
    query.add_argument("--min-score", type=float)
    query.add_argument(
        "--diversity",
        type=float,
        default=0.0,
        help="0 (by score) to 1 (most diverse): maximal marginal relevance",
    )
    query.add_argument(
        "--collapse-above",
        type=float,
        default=0.0,
        metavar="COSINE",
        help="hide results this similar to a better one (e.g. 0.95)",
    )
    query.add_argument("--autocut", type=int, default=0, metavar="N",
                       help="cut the results at the N-th jump in score")  # fmt: skip
    query.add_argument("--grid", metavar="PNG", help="write a contact sheet of the matches")
    query.add_argument("--root", default=".", help="folder that stored paths are relative to")

    found = command("duplicates", _duplicates, "groups of near-duplicate stored images")
    found.add_argument(
        "--min-score",
        type=float,
        default=0.95,
        help="how similar two records must be (0.9999: the same picture)",
    )
    found.add_argument("--filter", help="only records matching this Pinecone filter")
    found.add_argument("--grid", metavar="DIR", help="write one contact sheet per group there")
    found.add_argument("--root", default=".", help="folder that stored paths are relative to")
    found.add_argument("--quiet", action="store_true", help="no progress bar")  # fmt: skip


# --- query -------------------------------------------------------------------------------


def _query(client: ImageSearchClient, args: argparse.Namespace) -> int:
    examples = _examples(args)
    if not examples:
        raise ValueError("give IMAGE, --image, --text or --id (any of them several times)")
    plain = len(examples) == 1 and examples[0].weight == 1.0
    query: dict[str, Any] = asdict(examples[0]) if plain else {"examples": examples}
    query.pop("weight", None)
    matches = client.query(
        **query,
        top_k=args.top_k,
        filter=json_filter(args.filter) if args.filter else None,
        namespace=args.namespace,
        min_score=args.min_score,
        diversity=args.diversity,
        collapse_above=args.collapse_above,
        autocut=args.autocut,
    )
    if args.json:
        print(json.dumps({"matches": [asdict(m) for m in matches]}, indent=2))
    else:
        _print_matches(matches, collapsed=bool(args.collapse_above))
    if args.grid:
        _write_grid(client, args, examples[0], matches)
    return 0


def _examples(args: argparse.Namespace) -> list[Example]:
    examples = [Example(image=Path(args.image).read_bytes())] if args.image else []
    for kind in KINDS:
        for sign, given in ((1.0, getattr(args, kind + "s")), (-1.0, getattr(args, "not_" + kind))):
            for flag in given:
                weight, value = _weighted(flag)
                if kind == "image":
                    example = Example(image=Path(value).read_bytes(), weight=sign * weight)
                elif kind == "text":
                    example = Example(text=value, weight=sign * weight)
                else:
                    example = Example(id=value, weight=sign * weight)
                examples.append(example)
    return examples


def _weighted(flag: str) -> tuple[float, str]:
    found = WEIGHTED.match(flag)
    return (float(found["weight"]), found["value"]) if found else (1.0, flag)


def _print_matches(matches: Sequence[Match], *, collapsed: bool) -> None:
    header = ("#", "id", "score", "path", "label") + (("similar",) if collapsed else ())
    rows = [
        (str(rank), short(m.id), f"{m.score:.4f}", str(m.metadata.get("path", "")),
         str(m.metadata.get("label", "")))
        + ((f"+{len(m.collapsed_ids)}" if m.collapsed_ids else "",) if collapsed else ())
        for rank, m in enumerate(matches, 1)
    ]  # fmt: skip
    print_table(header, rows)
    if not matches:
        print("no matches")


def _write_grid(
    client: ImageSearchClient, args: argparse.Namespace, first: Example, matches: list[Match]
) -> None:
    root = Path(args.root)
    image = first.image
    what = first.text or first.id or (Path(args.image).name if args.image else "image")
    if image is None and first.id:
        found = client.fetch([first.id], namespace=args.namespace)
        image = file_of(root, found[0].metadata) if found else None
    tiles = [SheetTile(image, ("query", what))]
    for m in matches:
        label = str(m.metadata.get("label") or m.metadata.get("path") or short(m.id))
        tiles.append(SheetTile(file_of(root, m.metadata), (f"{m.score:.3f}", label)))
    out = contact_sheet(tiles, Path(args.grid))
    print(f"wrote {out}", file=sys.stderr)


# --- duplicates --------------------------------------------------------------------------


def _duplicates(client: ImageSearchClient, args: argparse.Namespace) -> int:
    groups: list[DuplicateGroup] = []
    bar = tqdm(desc="scanning", unit=" records", disable=args.quiet, file=sys.stderr)
    with bar:
        for step in client.find_duplicates(
            min_score=args.min_score,
            namespace=args.namespace,
            filter=json_filter(args.filter) if args.filter else None,
        ):
            bar.total = step.total
            bar.update(step.scanned - bar.n)
            groups.extend(step.groups)
    if args.json:
        print(json.dumps({"groups": [_group_json(g) for g in groups]}, indent=2))
    else:
        _print_groups(groups)
    if args.grid:
        _write_group_sheets(client, args, groups)
    return 0


def _group_json(group: DuplicateGroup) -> dict[str, Any]:
    return {
        "exact": group.exact,
        "members": [{"id": m.id, "score": m.score} for m in group.members],
    }


def _print_groups(groups: Sequence[DuplicateGroup]) -> None:
    for number, group in enumerate(groups, 1):
        kind = "exact duplicates" if group.exact else "look-alikes"
        print(f"group {number}: {len(group.members)} {kind}")
        rows = [("*" if rank == 0 else "", m.id, f"{m.score:.4f}")
                for rank, m in enumerate(group.members)]  # fmt: skip
        print_table(("", "id", "score"), rows)
    if not groups:
        print("no duplicates")


def _write_group_sheets(
    client: ImageSearchClient, args: argparse.Namespace, groups: Sequence[DuplicateGroup]
) -> None:
    folder = Path(args.grid)
    folder.mkdir(parents=True, exist_ok=True)
    root = Path(args.root)
    for number, group in enumerate(groups, 1):
        shown = group.members[:SHEET_MOST]
        stored = {r.id: r for r in client.fetch([m.id for m in shown], namespace=args.namespace)}
        tiles = [
            SheetTile(file_of(root, stored[m.id].metadata) if m.id in stored else None,
                      (f"{m.score:.3f}", short(m.id)))
            for m in shown
        ]  # fmt: skip
        contact_sheet(tiles, folder / f"group-{number:04d}.png")
    print(f"wrote {len(groups)} contact sheets to {folder}", file=sys.stderr)
