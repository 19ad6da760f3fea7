"""What the command line's commands share: tables, short ids, --filter, stored image files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imagesearch_client.sources import inside


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def short(record_id: str) -> str:
    """An id as a table shows it: content ids (64 hex digits) cut to 12; --json has it whole."""
    return record_id if len(record_id) <= 20 else record_id[:12] + "…"


def json_filter(text: str) -> Any:
    """--filter's JSON; ValueError naming the flag when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(
            f"--filter is not JSON ({exc}); give an object such as "
            '\'{"label": "cat"}\' or \'{"score": {"$gte": 0.5}}\''
        ) from None


def file_of(root: Path, metadata: dict[str, Any]) -> bytes | None:
    """The image file a record's `path` names under `root`, as the gallery reads it."""
    path = metadata.get("path")
    found = inside(root, path) if isinstance(path, str) else None
    if found is None:
        return None
    try:
        return found.read_bytes()
    except OSError:
        return None
