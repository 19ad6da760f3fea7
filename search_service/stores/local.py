"""The embedded store: Qdrant Edge (`qdrant-edge-py`) on disk under DATA_DIR.

Qdrant Edge is beta, so only the local store's own modules import qdrant_edge: this one,
local_filters.py (conditions), local_build.py (the background build) and build_index.py
(its child).

Layout under `<DATA_DIR>/local/`:
    store.json        which model filled the store and which shard directory is current
    shard-NNNNNN/     the Qdrant Edge shard (segments + write-ahead log)
    lock              held (flock, with its pid) by the one process that has the store open

How records become points is `local_layout.py`; how filters become Qdrant conditions,
`local_filters.py`.
A store of an older layout is migrated in place when it is opened (see `_migrate`).

Index building: new points are searched exactly until a background build
(`local_build.py`: copy, HNSW in a child process, replay, swap) has indexed them.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import qdrant_edge as qe

from search_service.errors import SearchError, StoreMisconfigured
from search_service.filters import MAX_ID_LENGTH, MAX_METADATA_BYTES, Condition, Metadata
from search_service.paging import refused
from search_service.stores import local_filters as filters
from search_service.stores import local_layout as layout
from search_service.stores.base import (
    Listed,
    ListedPage,
    ModelInfo,
    Record,
    ScoredRecord,
    StoreStats,
    Vector,
    check_reply,
    check_same_model,
    reply_bytes,
)
from search_service.stores.local_build import IndexBuilder, uncancellable
from search_service.stores.local_pin import PinnedVectors

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT = layout.LAYOUT
# Search: HNSW over int8 scalar-quantized vectors (a quarter of the memory traffic), then
# the best OVERSAMPLING x top_k rescored with the float32 originals, so scores are exact.
# Measured at 100k 512-d: ef 64 + rescore gives recall@10 0.999 in ~0.3 ms, where float32
# at ef 128 took ~1 ms. Stores created before quantization keep float32 (ef 64: 0.996).
# Past LARGE_STORE points ef 64 loses recall (1M: 0.986); 128 keeps it (0.998, 0.8 ms).
HNSW_EF = 64
HNSW_EF_LARGE = 128
LARGE_STORE = 250_000
OVERSAMPLING = 2.0
# Qdrant Edge counts facets up to a limit; namespaces past it would go unreported.
MAX_NAMESPACES = 1_000_000
MIGRATE_PAGE = 1000
# Records read from the shard at a time where the reply size must be watched.
RECORD_CHUNK = 128
RECOVER = "restore DATA_DIR from a backup, or point DATA_DIR at a new directory"
# Held (flock) by the one process that has the store open.
LOCK_FILE = "lock"
# Payload fields every store has indexed: namespace and key filters, and id prefixes
# for listings.
BASE_INDEXES = ("ns", "keys", "id")
# Metadata keys indexed as upserts first bring them; past this many, filters on further
# keys read the payload of each candidate instead (exact, slower). A query never indexes:
# a read must not write, and a hostile filter must not grow the store.
MAX_INDEXED_KEYS = 64


class LocalStore:
    """A VectorStore on one Qdrant Edge shard, with HNSW built in a child process."""

    name = "local"

    def __init__(
        self,
        data_dir: Path,
        *,
        index_threshold: int = 10_000,
        max_unindexed: int = 0,
        vectors_memory: Literal["pinned", "cold", "cached"] = "pinned",
        on_build: Callable[[bool, float], None] | None = None,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        """`on_build(ok, seconds)` is told of every background build that ends; upserts
        wait while a build runs and `max_unindexed` points are unindexed (0: never), and
        `on_wait(seconds)` is told of each wait."""
        self._root = Path(data_dir) / "local"
        self._model: ModelInfo | None = None
        self._shard: qe.EdgeShard | None = None
        self._shard_name = ""
        self._readers: dict[int, int] = {}
        self._reader_left = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._indexed_fields: set[str] = set()
        self._builder = IndexBuilder(
            self,
            threshold=index_threshold,
            on_build=on_build,
            child_args=self._builder_args,
            serving_config=self._serving_config,
        )
        self._max_unindexed = max_unindexed
        self._vectors_memory = qe.Memory.Cached if vectors_memory == "cached" else qe.Memory.Cold
        self._pinned = PinnedVectors() if vectors_memory == "pinned" else None
        self._on_wait = on_wait
        self._lock_fd: int | None = None
        # Bumped by every write and index swap: what is counted need not be counted again.
        self.changes = 0

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def model(self) -> ModelInfo | None:
        return self._model

    # What the IndexBuilder works with (ShardOwner).

    @property
    def root(self) -> Path:
        return self._root

    @property
    def write_lock(self) -> asyncio.Lock:
        return self._write_lock

    @property
    def shard(self) -> qe.EdgeShard | None:
        return self._shard

    @property
    def shard_name(self) -> str:
        return self._shard_name

    def named_in_meta(self) -> str | None:
        meta = self._read_meta()
        return meta[1] if meta is not None else None

    def _builder_args(self) -> list[str]:
        """The builder child's DIMENSION and VECTORS_MEMORY (see build_index.py)."""
        if self._model is None:
            return []
        memory = "cached" if self._vectors_memory == qe.Memory.Cached else "cold"
        return [str(self._model.dimension), memory]

    def _serving_config(self) -> qe.EdgeConfig | None:
        """What a built copy is loaded with: the builder left its payload on disk."""
        if self._model is None:
            return None
        return _shard_config(self._model.dimension, self._vectors_memory)

    async def install(self, name: str, shard: qe.EdgeShard) -> qe.EdgeShard | None:
        assert self._model is not None
        await asyncio.to_thread(self._write_meta, self._model, name)
        old = self._shard
        self._shard, self._shard_name = shard, name
        self.changes += 1
        # The old shard's pins go before the new one's are taken: one copy locked at most.
        await asyncio.to_thread(self._pin_live)
        return old

    async def retire(self, name: str, shard: qe.EdgeShard | None) -> None:
        # Closing a shard and removing its files take 0.5-0.6 s at 300k vectors (a script
        # on the AMX Xeon): writers go on meanwhile, into the shard that replaced it.
        if shard is not None:
            await self._release(shard)
        await asyncio.to_thread(shutil.rmtree, self._root / name, True)

    async def open(self) -> ModelInfo | None:
        """Opens the store; StoreMisconfigured (naming the path) if it cannot be read, or
        if another process has it open."""
        self._lock_root()
        meta = self._read_meta()
        if meta is None:
            return None
        model, name, version = meta
        shard = await asyncio.to_thread(self._load_shard, name, model.dimension)
        self._model, self._shard_name, self._shard = model, name, shard
        await asyncio.to_thread(self._remove_leftovers)
        if version < FORMAT:
            await asyncio.to_thread(self._migrate, shard, version)
        await asyncio.to_thread(_index_base_fields, shard)
        self._indexed_fields = set(shard.info().payload_schema)
        self._builder.pending = self._read_pending()
        await asyncio.to_thread(self._pin_live)
        log.info(
            "local store at %s: %d vectors of %s", self._root, self._points(), self._model.model_id
        )
        self._builder.maybe_start()
        return self._model

    def _lock_root(self) -> None:
        """Holds LOCK_FILE (an exclusive flock, with this pid in it) while the store is open:
        a second service on the same DATA_DIR is told who has it, where Qdrant would only
        fail to open its write-ahead log."""
        self._root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise StoreMisconfigured(
                f"the local store in {self._root} is in use by another process"
                f"{f' (pid {holder})' if holder.isdigit() else ''}: stop it first, or point "
                "DATA_DIR at another directory. Nothing is wrong with the store itself"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock_root(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor lets the flock go
            self._lock_fd = None

    async def bind(self, model: ModelInfo) -> None:
        if self._model is not None:
            check_same_model(
                self._model,
                model,
                store=f"the local store in {self._root}",
                start_over="point DATA_DIR at a new directory",
            )
            return
        async with self._write_lock:
            if self._model is None:
                await asyncio.to_thread(self._create, model)

    def _load_shard(self, name: str, dimension: int) -> qe.EdgeShard:
        path = self._root / name
        if not path.is_dir():
            raise StoreMisconfigured(
                f"cannot open the local store: {self._root / 'store.json'} names the shard "
                f"{path}, which does not exist; {RECOVER}"
            )
        try:
            # With today's config, which Qdrant checks against the segments and writes back:
            # a store made by an older version builds its new segments the current way.
            return qe.EdgeShard.load(str(path), _shard_config(dimension, self._vectors_memory))
        except Exception as exc:
            raise StoreMisconfigured(
                f"cannot open the local store: the shard {path} could not be loaded "
                f"({exc}); {RECOVER}"
            ) from exc

    def _pin_live(self) -> None:
        """Locks the live shard's vectors in memory (SEARCH_VECTORS_MEMORY=pinned)."""
        if self._pinned is None:
            return
        self._pinned.release()
        started = time.monotonic()
        locked = self._pinned.pin(self._root / self._shard_name)
        if locked:
            log.info(
                "locked %.2f GiB of vectors in memory in %.1f s",
                locked / 2**30,
                time.monotonic() - started,
            )

    def _migrate(self, shard: qe.EdgeShard, version: int) -> None:
        """Rewrites every point of layout `version` into the current layout, in place.

        Runs before the store serves. Idempotent: points already in the current layout
        are left alone, so a migration cut short by a crash resumes at the next open.
        """
        assert self._model is not None
        assert version == 1
        log.info(
            "migrating the local store in %s from layout %d to %d", self._root, version, FORMAT
        )
        offset: qe.PointId | None = None
        moved = 0
        while True:
            page, offset = shard.scroll(
                qe.ScrollRequest(
                    offset=offset, limit=MIGRATE_PAGE, with_payload=True, with_vector=True
                )
            )
            fresh, stale = [], []
            for point in page:
                stored = point.payload or {}
                namespace, record_id = stored["ns"], stored["id"]
                current = layout.point_id(namespace, record_id)
                if str(point.id) == current:
                    continue
                metadata = layout.metadata_of_v1(stored)
                fresh.append(
                    qe.Point(
                        current,
                        _vector(point.vector).tolist(),
                        layout.payload(namespace, record_id, metadata),
                    )
                )
                stale.append(point.id)
            if fresh:
                shard.update(qe.UpdateOperation.upsert_points(fresh))
                shard.update(qe.UpdateOperation.delete_points(stale))
                moved += len(fresh)
            if offset is None:
                break
        for key in shard.info().payload_schema:
            if key not in BASE_INDEXES:  # layout 1's metadata paths address nothing now
                shard.update(qe.UpdateOperation.delete_field_index(key))
        shard.flush()
        self._write_meta(self._model, self._shard_name)
        log.info("migrated %d records to layout %d", moved, FORMAT)

    def _create(self, model: ModelInfo) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        name = "shard-000001"
        shutil.rmtree(self._root / name, ignore_errors=True)
        shard = qe.EdgeShard.create(
            str(self._root / name), _shard_config(model.dimension, self._vectors_memory)
        )
        _index_base_fields(shard)
        self._write_meta(model, name)
        self._shard, self._shard_name, self._model = shard, name, model
        self._indexed_fields = set(BASE_INDEXES)
        log.info("created a local store in %s for %s", self._root, model.model_id)

    async def close(self) -> None:
        await self._builder.stop()
        async with self._write_lock:
            shard, self._shard = self._shard, None
            if shard is not None:
                # Unlocked while its mappings are still there: some of them are Qdrant's.
                if self._pinned is not None:
                    self._pinned.release()
                await self._release(shard)
                if self._model is not None and self._builder.pending:
                    # Kept across a restart; a crash loses it (the next writes count anew).
                    await asyncio.to_thread(
                        self._write_meta, self._model, self._shard_name, self._builder.pending
                    )
            self._unlock_root()

    # --- writes --------------------------------------------------------------------

    async def upsert(self, namespace: str, records: Sequence[Record]) -> dict[int, SearchError]:
        if not records:
            return {}
        # Off the event loop: building 1,000 points takes ~60 ms of Python, and a worker
        # thread yields the GIL to queries every switch interval (5 ms) where the loop
        # would make them wait for all of it.
        op, fields = await asyncio.to_thread(_upsert_parts, namespace, records)
        waited = await self._builder.room(self._max_unindexed)
        if waited and self._on_wait is not None:
            self._on_wait(waited)
        await self._index(fields)
        await self._write(op, upserted=len(records))
        return {}  # one write: all stored, or it raised

    async def delete_ids(self, namespace: str, ids: Sequence[str]) -> None:
        if ids and self._shard is not None:
            await self._write(
                qe.UpdateOperation.delete_points([layout.point_id(namespace, i) for i in ids])
            )

    async def delete_where(self, namespace: str, condition: Condition) -> None:
        if self._shard is not None:
            await self._write(
                qe.UpdateOperation.delete_points_by_filter(
                    filters.namespace_filter(namespace, condition)
                )
            )

    async def delete_all(self, namespace: str) -> None:
        if self._shard is not None:
            await self._write(
                qe.UpdateOperation.delete_points_by_filter(
                    filters.namespace_filter(namespace, None)
                )
            )

    async def _write(self, op: qe.UpdateOperation, *, upserted: int = 0) -> None:
        try:
            async with self._write_lock:
                shard = self._require_shard()
                # Once begun, applied and recorded as one: a caller cancelled meanwhile
                # (deadline, client gone) must not leave the write applied to the live shard
                # but missing from the replay, whence the next index swap would drop it.
                await uncancellable(self._apply(shard, op, upserted))
        finally:
            self._builder.maybe_start()

    async def _apply(self, shard: qe.EdgeShard, op: qe.UpdateOperation, upserted: int) -> None:
        # The WAL entry is written before update() returns: an answered write survives
        # the process being killed.
        await asyncio.to_thread(shard.update, op)
        self._builder.record(op, upserted=upserted)
        self.changes += 1

    # --- reads ---------------------------------------------------------------------

    async def query(
        self,
        namespace: str,
        vector: Vector,
        *,
        top_k: int,
        condition: Condition | None,
        include_values: bool,
        include_metadata: bool,
        max_bytes: int | None = None,
    ) -> list[ScoredRecord]:
        if self._shard is None:
            return []
        # Everything in the query itself while the most top_k records can take fits the
        # reply; past that, ids first, then the records a chunk at a time until it is full,
        # never the whole of 10,000 payloads to find out that they do not fit.
        whole = top_k * self._worst_record_bytes() <= (max_bytes or sys.maxsize)
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(vector.astype(np.float32).tolist()),
            filter=filters.namespace_filter(namespace, condition),
            # Only the id unless metadata is wanted: each payload crosses from Rust whole.
            with_payload=True if include_metadata and whole else ["id"],
            with_vector=include_values and whole,
            params=qe.SearchParams(
                hnsw_ef=max(self._ef(), top_k),
                quantization=qe.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING),
            ),
        )
        points = await self._read(lambda shard: shard.query(request))
        if whole or not (include_values or include_metadata):
            found = []
            for point in points:
                # Every read of `.payload` converts it from Rust again: read it once.
                payload = point.payload or {}
                found.append(
                    ScoredRecord(
                        id=payload["id"],
                        score=float(point.score),
                        values=_vector(point.vector) if include_values else None,
                        metadata=layout.metadata_of(payload) if include_metadata else None,
                    )
                )
            return found
        wanted = [str(point.id) for point in points]
        details = await self._read(
            lambda shard: _records(
                shard, wanted, values=include_values, metadata=include_metadata,
                max_bytes=max_bytes, what="matches",
            )
        )  # fmt: skip
        return [
            ScoredRecord(record.id, float(point.score), record.values, record.metadata)
            for point, key in zip(points, wanted, strict=True)
            if (record := details.get(key)) is not None  # deleted in between
        ]

    def _worst_record_bytes(self) -> int:
        dimension = self._model.dimension if self._model else 0
        return (
            reply_bytes("x" * MAX_ID_LENGTH, np.zeros(dimension, np.float32), None)
            + MAX_METADATA_BYTES
        )

    def _ef(self) -> int:
        shard = self._shard
        large = shard is not None and shard.info().points_count > LARGE_STORE  # ~10 us
        return HNSW_EF_LARGE if large else HNSW_EF

    async def fetch(
        self, namespace: str, ids: Sequence[str], *, max_bytes: int | None = None
    ) -> list[Record]:
        if self._shard is None or not ids:
            return []
        wanted = [layout.point_id(namespace, i) for i in dict.fromkeys(ids)]
        found = await self._read(
            lambda shard: _records(
                shard, wanted, values=True, metadata=True, max_bytes=max_bytes, what="records"
            )
        )
        by_id = {record.id: record for record in found.values()}
        return [by_id[i] for i in dict.fromkeys(ids) if i in by_id]

    async def list_page(
        self,
        namespace: str,
        prefix: str,
        *,
        limit: int,
        cursor: str,
        include_values: bool,
        include_metadata: bool,
    ) -> ListedPage:
        # Scroll walks points in point-id order; a point id is fixed per (namespace, id),
        # so a cursor (the next point id) stays meaningful across writes and index swaps.
        if self._shard is None:
            return ListedPage([], [])
        offset = _point_cursor(cursor) if cursor else None
        request = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=filters.listing_filter(namespace, prefix),
            with_payload=True,
            with_vector=include_values,
        )
        points, after = await self._read(lambda shard: shard.scroll(request))
        records = []
        for point in points:
            payload = point.payload or {}
            records.append(
                Listed(
                    id=payload["id"],
                    values=_vector(point.vector) if include_values else None,
                    metadata=layout.metadata_of(payload) if include_metadata else None,
                )
            )
        resume = [str(p.id) for p in points[1:]] + [str(after) if after is not None else ""]
        return ListedPage(records, resume if records else [])

    async def stats(self) -> StoreStats:
        if self._shard is None:
            return StoreStats(namespaces={}, model=self._model)
        facet = await self._read(
            lambda shard: shard.facet(qe.FacetRequest("ns", limit=MAX_NAMESPACES, exact=True))
        )
        return StoreStats(
            namespaces={str(hit.value): int(hit.count) for hit in facet.hits if hit.count},
            model=self._model,
        )

    async def _read(self, call: Callable[[qe.EdgeShard], T]) -> T:
        shard = self._require_shard()
        with self._reading(shard):
            # On the event loop itself: qdrant-edge-py holds the GIL for the whole call
            # (two threads querying get 0.94x the throughput of one), so a worker thread
            # would block the loop all the same and only add two hand-offs (~0.3 ms of a
            # 1.5 ms query by id).
            return call(shard)

    @contextmanager
    def _reading(self, shard: qe.EdgeShard) -> Iterator[None]:
        key = id(shard)
        self._readers[key] = self._readers.get(key, 0) + 1
        try:
            yield
        finally:
            self._readers[key] -= 1
            if not self._readers[key]:
                del self._readers[key]
                self._reader_left.set()

    async def _release(self, shard: qe.EdgeShard) -> None:
        """Closes a shard once no read is using it."""
        while id(shard) in self._readers:
            self._reader_left.clear()
            await self._reader_left.wait()
        await asyncio.to_thread(_flush_and_close, shard)

    # --- payload indexes -----------------------------------------------------------

    async def _index(self, fields: set[tuple[str, qe.PayloadSchemaType]]) -> None:
        """Indexes the metadata paths an upsert brings that have none, up to
        MAX_INDEXED_KEYS keys, so the planner can estimate and pick exact search."""
        keys = {layout.key_of_path(path) for path in self._indexed_fields} - {None}
        for path, schema in sorted(fields, key=lambda field: field[0]):
            if path in self._indexed_fields:
                continue
            key = layout.key_of_path(path)
            if key not in keys and len(keys) >= MAX_INDEXED_KEYS:
                continue
            await self._write(qe.UpdateOperation.create_field_index(path, schema))
            # Only once the index exists: a failed write leaves the path to index next time.
            self._indexed_fields.add(path)
            keys.add(key)

    # --- background index building -------------------------------------------------

    def index_status(self) -> tuple[int, int]:
        """(vectors in the HNSW index, vectors stored); the rest are searched exactly."""
        if self._shard is None:
            return 0, 0
        info = self._shard.info()
        return info.indexed_vectors_count, info.points_count

    async def wait_for_index_build(self) -> None:
        """Returns when no background build is running (at once if none is)."""
        await self._builder.wait()

    @property
    def building(self) -> bool:
        """Whether a background build is running."""
        return self._builder.running

    def _points(self) -> int:
        return self._shard.info().points_count if self._shard is not None else 0

    def _remove_leftovers(self) -> None:
        for path in self._root.glob("shard-*"):
            if path.name != self._shard_name:
                log.info("removing %s, left over from an interrupted index build", path)
                shutil.rmtree(path, ignore_errors=True)

    # --- store.json --------------------------------------------------------------------

    def _read_meta(self) -> tuple[ModelInfo, str, int] | None:
        """(model, current shard, layout version) from store.json; None for a new store."""
        path = self._root / "store.json"
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
        if not 1 <= version <= FORMAT:
            raise StoreMisconfigured(
                f"cannot open the local store: {path} has layout {version}, and this version "
                f"of search_service reads layouts 1-{FORMAT}; upgrade search_service"
            )
        return model, shard, version

    def _read_pending(self) -> int:
        """Upserts not yet in any build when the store was last closed (0 if unknown)."""
        try:
            pending = json.loads((self._root / "store.json").read_text()).get("pending", 0)
        except (OSError, ValueError):
            return 0
        return pending if isinstance(pending, int) and pending > 0 else 0

    def _write_meta(self, model: ModelInfo, shard: str, pending: int = 0) -> None:
        path = self._root / "store.json"
        tmp = path.with_suffix(".tmp")
        meta = {"format": FORMAT, "model": asdict(model), "shard": shard}
        if pending:
            meta["pending"] = pending
        with tmp.open("w") as f:
            json.dump(meta, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        directory = os.open(self._root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def _require_shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError("the local store is not open")
        return self._shard


def build_config(dimension: int, vectors_memory: str) -> qe.EdgeConfig:
    """What the index builder opens its copy with: the serving config with the payload
    left on disk. A build reads a payload only to carry it into a merged segment, where
    Cached reads all of them in at load: 0.19 GiB of the builder's 2.35 GiB peak RSS at
    300k vectors (bench-search), 0.006 GiB with Cold."""
    memory = qe.Memory.Cached if vectors_memory == "cached" else qe.Memory.Cold
    return _shard_config(dimension, memory, payload_memory=qe.Memory.Cold)


def _shard_config(
    dimension: int, vectors_memory: qe.Memory, *, payload_memory: qe.Memory = qe.Memory.Cached
) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        # The float32 originals are only read to rescore a query's candidates and to
        # return values; the search itself runs on the int8 copy, held in RAM. Cached
        # reads the whole file in at every load: 1.9 GiB at 1M vectors, in the service,
        # again in the index builder's copy, and twice in the service while a swap holds
        # two shards. Cold maps it, and pinned (the default) then locks the live shard's
        # pages in the service alone (local_pin).
        vectors=qe.EdgeVectorParams(
            size=dimension, distance=qe.Distance.Cosine, memory=vectors_memory
        ),
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10_000),
        # The builder indexes whatever it is given; the threshold that matters is ours.
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
        quantization_config=qe.ScalarQuantizationConfig(
            type=qe.ScalarType.Int8, quantile=0.99, always_ram=True
        ),
        # Every query reads the payload of its matches (at least their ids). Cold, the
        # default, reads each from disk on first touch: at 100k on a 2-core EPYC, query
        # p50 0.89-1.13 ms and a fetch 117-131 us, against 0.44-0.45 ms and 38-41 us
        # mapped and cached.
        payload_memory=payload_memory,
    )


def _upsert_parts(
    namespace: str, records: Sequence[Record]
) -> tuple[qe.UpdateOperation, set[tuple[str, qe.PayloadSchemaType]]]:
    """The write of `records`, and the payload paths (with index types) their metadata has."""
    fields = {field for record in records for field in filters.stored_fields(record.metadata)}
    return _upsert_op(namespace, records), fields


def _upsert_op(namespace: str, records: Sequence[Record]) -> qe.UpdateOperation:
    return qe.UpdateOperation.upsert_points(
        [
            qe.Point(
                layout.point_id(namespace, r.id),
                r.values.astype(np.float32).tolist(),
                layout.payload(namespace, r.id, r.metadata),
            )
            for r in records
        ]
    )


def _index_base_fields(shard: qe.EdgeShard) -> None:
    """Creates the payload indexes every store has, where missing (older stores)."""
    present = shard.info().payload_schema
    for key in BASE_INDEXES:
        if key not in present:
            shard.update(qe.UpdateOperation.create_field_index(key, qe.PayloadSchemaType.Keyword))
    shard.flush()


def _records(
    shard: qe.EdgeShard,
    point_ids: Sequence[str],
    *,
    values: bool,
    metadata: bool,
    max_bytes: int | None,
    what: str,
) -> dict[str, Record]:
    """The records of `point_ids` that exist, by point id, read RECORD_CHUNK at a time;
    ReplyTooLarge at the first that takes them past `max_bytes`."""
    found: dict[str, Record] = {}
    size = 0
    for start in range(0, len(point_ids), RECORD_CHUNK):
        chunk: list[qe.PointId] = list(point_ids[start : start + RECORD_CHUNK])
        for point in shard.retrieve(
            chunk, with_payload=True if metadata else ["id"], with_vector=values
        ):
            payload = point.payload or {}
            record = Record(
                id=payload["id"],
                values=_vector(point.vector) if values else np.zeros(0, np.float32),
                metadata=layout.metadata_of(payload) if metadata else {},
            )
            size += reply_bytes(
                record.id, record.values if values else None, record.metadata if metadata else None
            )
            check_reply(size, max_bytes, sent=len(found), asked=len(point_ids), what=what)
            found[str(point.id)] = record
    return found


def _point_cursor(cursor: str) -> str:
    """A listing cursor of this store is a point id (a UUID); anything else is refused."""
    try:
        return str(uuid.UUID(cursor))
    except ValueError:
        raise refused("does not continue a listing of this store") from None


def _flush_and_close(shard: qe.EdgeShard) -> None:
    shard.flush()
    shard.close()


def _vector(raw: Any) -> Vector:
    if isinstance(raw, dict):  # named vectors; ours is the unnamed default ""
        raw = raw[""]
    return np.asarray(raw, dtype=np.float32)


__all__ = ["LocalStore", "Metadata"]
