"""LocalStore: the VectorStore on one Qdrant Edge shard under `DATA_DIR/local/`.

Its lifecycle (open, bind, close), writes and reads; the rest of the package holds the
parts (see `__init__.py`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
import qdrant_edge as qe

from search_service.domain import (
    Listed,
    ListedPage,
    ModelInfo,
    Record,
    ScoredRecord,
    StoreStats,
    Vector,
    check_same_model,
)
from search_service.errors import SearchError, StoreMisconfigured
from search_service.filters import MAX_ID_LENGTH, MAX_METADATA_BYTES, Condition
from search_service.stores.base import reply_bytes
from search_service.stores.local import filters, layout, manifest
from search_service.stores.local.builder import IndexBuilder
from search_service.stores.local.migrate import migrate
from search_service.stores.local.pin import PinnedVectors
from search_service.stores.local.points import (
    point_cursor,
    read_records,
    upsert_parts,
    vector_of,
)
from search_service.stores.local.root_lock import RootLock
from search_service.stores.local.shard_config import (
    BASE_INDEXES,
    OVERSAMPLING,
    POOL_OVERSAMPLING,
    index_base_fields,
    memory_of,
    search_ef,
    shard_config,
)
from search_service.stores.local.tasks import uncancellable

log = logging.getLogger(__name__)

T = TypeVar("T")

# Qdrant Edge counts facets up to a limit; namespaces past it would go unreported.
MAX_NAMESPACES = 1_000_000
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
        self._vectors_memory = memory_of(vectors_memory)
        self._pinned = PinnedVectors() if vectors_memory == "pinned" else None
        self._on_wait = on_wait
        self._lock = RootLock(self._root)
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
        found = manifest.read(self._root)
        return found.shard if found is not None else None

    def _builder_args(self) -> list[str]:
        """The build child's DIMENSION and VECTORS_MEMORY (see build_child.py)."""
        if self._model is None:
            return []
        memory = "cached" if self._vectors_memory == qe.Memory.Cached else "cold"
        return [str(self._model.dimension), memory]

    def _serving_config(self) -> qe.EdgeConfig | None:
        """What a built copy is loaded with: the builder left its payload on disk."""
        if self._model is None:
            return None
        return shard_config(self._model.dimension, self._vectors_memory)

    async def install(self, name: str, shard: qe.EdgeShard) -> qe.EdgeShard | None:
        assert self._model is not None
        await asyncio.to_thread(manifest.write, self._root, self._model, name)
        old = self._shard
        self._shard, self._shard_name = shard, name
        self.changes += 1
        # The old shard's pins go before the new one's are taken: one copy locked at most.
        await asyncio.to_thread(self._pin_live)
        return old

    async def retire(self, name: str, shard: qe.EdgeShard | None) -> None:
        # Closing a shard and removing its files take a while: writers go on meanwhile,
        # into the shard that replaced it.
        if shard is not None:
            await self._release(shard)
        await asyncio.to_thread(shutil.rmtree, self._root / name, True)

    async def open(self) -> ModelInfo | None:
        """Opens the store; StoreMisconfigured (naming the path) if it cannot be read, or
        if another process has it open."""
        self._lock.acquire()
        found = manifest.read(self._root)
        if found is None:
            return None
        model, name, version = found.model, found.shard, found.layout
        shard = await asyncio.to_thread(self._load_shard, name, model.dimension)
        self._model, self._shard_name, self._shard = model, name, shard
        await asyncio.to_thread(self._remove_leftovers)
        if version < layout.LAYOUT:
            await asyncio.to_thread(self._migrate, shard, version)
        await asyncio.to_thread(index_base_fields, shard)
        self._indexed_fields = set(shard.info().payload_schema)
        self._builder.pending = manifest.read_pending(self._root)
        await asyncio.to_thread(self._pin_live)
        log.info(
            "local store at %s: %d vectors of %s", self._root, self._points(), self._model.model_id
        )
        self._builder.maybe_start()
        return self._model

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
                f"{path}, which does not exist; {manifest.RECOVER}"
            )
        try:
            # With today's config, which Qdrant checks against the segments and writes back:
            # a store made by an older version builds its new segments the current way.
            return qe.EdgeShard.load(str(path), shard_config(dimension, self._vectors_memory))
        except Exception as exc:
            raise StoreMisconfigured(
                f"cannot open the local store: the shard {path} could not be loaded "
                f"({exc}); {manifest.RECOVER}"
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
        assert self._model is not None
        log.info(
            "migrating the local store in %s from layout %d to %d",
            self._root,
            version,
            layout.LAYOUT,
        )
        moved = migrate(shard, version)
        manifest.write(self._root, self._model, self._shard_name)
        log.info("migrated %d records to layout %d", moved, layout.LAYOUT)

    def _create(self, model: ModelInfo) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        name = "shard-000001"
        shutil.rmtree(self._root / name, ignore_errors=True)
        shard = qe.EdgeShard.create(
            str(self._root / name), shard_config(model.dimension, self._vectors_memory)
        )
        index_base_fields(shard)
        manifest.write(self._root, model, name)
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
                        manifest.write,
                        self._root,
                        self._model,
                        self._shard_name,
                        self._builder.pending,
                    )
            self._lock.release()

    # --- writes --------------------------------------------------------------------

    async def upsert(self, namespace: str, records: Sequence[Record]) -> dict[int, SearchError]:
        if not records:
            return {}
        # Off the event loop: building the points is pure Python, and a worker thread
        # yields the GIL to queries every switch interval where the loop would not.
        op, fields = await asyncio.to_thread(upsert_parts, namespace, records)
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
        return await self._search(
            qe.Query.Nearest(vector.astype(np.float32).tolist()),
            filters.namespace_filter(namespace, condition),
            top_k=top_k, candidates=top_k, include_values=include_values,
            include_metadata=include_metadata, max_bytes=max_bytes,
        )  # fmt: skip

    async def query_diverse(
        self,
        namespace: str,
        vector: Vector,
        *,
        top_k: int,
        pool: int,
        lam: float,
        condition: Condition | None,
        min_score: float | None,
        leave_out: Sequence[str],
        include_values: bool,
        include_metadata: bool,
        max_bytes: int | None = None,
    ) -> list[ScoredRecord]:
        # Qdrant's MMR is refine.diversify's (its first pick the best by score, each match
        # scored by its cosine) but for exact ties, which query.py keeps from it; it runs
        # where the pool's vectors are: reading them into Python costs more than the search.
        return await self._search(
            qe.Mmr(vector.astype(np.float32).tolist(), lam, pool),
            filters.namespace_filter(namespace, condition, leave_out),
            top_k=top_k, candidates=pool, include_values=include_values,
            include_metadata=include_metadata, max_bytes=max_bytes,
            min_score=min_score,  # on the candidates: under it, none enters the pool
            oversampling=POOL_OVERSAMPLING,
        )  # fmt: skip

    async def _search(
        self,
        query: qe.Query | qe.Mmr,
        where: qe.Filter,
        *,
        top_k: int,
        candidates: int,
        include_values: bool,
        include_metadata: bool,
        max_bytes: int | None,
        min_score: float | None = None,
        oversampling: float = OVERSAMPLING,
    ) -> list[ScoredRecord]:
        """The `top_k` records `query` finds among `candidates` searched for. Everything
        comes with the query while all they can take fits the reply; past that, ids first,
        then the records a chunk at a time until it is full, never the whole of 10,000
        payloads to find out that they do not fit."""
        if self._shard is None:
            return []
        whole = top_k * self._worst_record_bytes() <= (max_bytes or sys.maxsize)
        request = qe.QueryRequest(
            limit=top_k,
            query=query,
            filter=where,
            score_threshold=min_score,
            # Only the id unless metadata is wanted: each payload crosses from Rust whole.
            with_payload=True if include_metadata and whole else ["id"],
            with_vector=include_values and whole,
            params=qe.SearchParams(
                hnsw_ef=max(self._ef(), candidates),
                quantization=qe.QuantizationSearchParams(rescore=True, oversampling=oversampling),
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
                        values=vector_of(point.vector) if include_values else None,
                        metadata=layout.metadata_of(payload) if include_metadata else None,
                    )
                )
            return found
        wanted = [str(point.id) for point in points]
        details = await self._read(
            lambda shard: read_records(
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
        return search_ef(self._points())  # shard.info() is cheap: microseconds

    async def fetch(
        self, namespace: str, ids: Sequence[str], *, max_bytes: int | None = None
    ) -> list[Record]:
        if self._shard is None or not ids:
            return []
        wanted = [layout.point_id(namespace, i) for i in dict.fromkeys(ids)]
        found = await self._read(
            lambda shard: read_records(
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
        offset = point_cursor(cursor) if cursor else None
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
                    values=vector_of(point.vector) if include_values else None,
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
            # On the event loop itself: qdrant-edge-py holds the GIL for the whole call, so
            # a worker thread would block the loop all the same and only add two hand-offs.
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

    def _require_shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise RuntimeError("the local store is not open")
        return self._shard


def _flush_and_close(shard: qe.EdgeShard) -> None:
    shard.flush()
    shard.close()
