"""`store.json`: which model filled the local store, which shard directory is current,
the layout version, and the upserts no build has indexed yet."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from search_service.domain import ModelInfo
from search_service.errors import StoreMisconfigured
from search_service.stores.local.layout import LAYOUT

FILE = "store.json"
RECOVER = "restore DATA_DIR from a backup, or point DATA_DIR at a new directory"


@dataclass(frozen=True, slots=True)
class Manifest:
    model: ModelInfo
    shard: str
    layout: int


def read(root: Path) -> Manifest | None:
    """What `root/store.json` says; None for a new store, StoreMisconfigured if unreadable."""
    path = root / FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
        version, shard = meta["format"], meta["shard"]
        model = ModelInfo(**meta["model"])
        if not isinstance(version, int) or not isinstance(shard, str) or not shard:
            raise ValueError("format must be a number and shard a directory name")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreMisconfigured(
            f"cannot open the local store: {path} is unreadable or corrupt ({exc}); {RECOVER}"
        ) from exc
    if not 1 <= version <= LAYOUT:
        raise StoreMisconfigured(
            f"cannot open the local store: {path} has layout {version}, and this version "
            f"of search_service reads layouts 1-{LAYOUT}; upgrade search_service"
        )
    return Manifest(model, shard, version)


def read_pending(root: Path) -> int:
    """Upserts not yet in any build when the store was last closed (0 if unknown)."""
    try:
        pending = json.loads((root / FILE).read_text()).get("pending", 0)
    except (OSError, ValueError):
        return 0
    return pending if isinstance(pending, int) and pending > 0 else 0


def write(root: Path, model: ModelInfo, shard: str, pending: int = 0) -> None:
    """Replaces store.json atomically and durably (the file, then its directory)."""
    path = root / FILE
    tmp = path.with_suffix(".tmp")
    meta = {"format": LAYOUT, "model": asdict(model), "shard": shard}
    if pending:
        meta["pending"] = pending
    with tmp.open("w") as f:
        json.dump(meta, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(root, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
