"""The embedded store: Qdrant Edge (`qdrant-edge-py`) on disk under DATA_DIR.

The only module that imports qdrant_edge; it is beta, so everything it needs
stays here.

Layout under `<DATA_DIR>/local/`:
    store.json        which model filled the store and which shard directory is current
    shard-NNNNNN/     the Qdrant Edge shard (segments + write-ahead log)

Records are points with id `uuid5(namespace, id)` and payload
`{"ns": namespace, "id": id, "keys": [metadata keys], "md": metadata}`: user
metadata sits under its own key so it never collides with ours, and `keys` lets
`$exists`/`$ne`/`$nin` tell a missing field from an empty list the way Pinecone does.
Booleans are also kept as "true"/"false" under `bools`: qdrant-edge-py 0.9.0 turns
`MatchValue(True)` into the integer 1, which matches no stored boolean.

Index building. Qdrant Edge searches new points exactly until `optimize()` builds
HNSW, and `optimize()` holds the GIL for its whole run (minutes at 100k vectors),
which would freeze the event loop. So it never runs in this process: when enough
unindexed points pile up, the shard is flushed and copied (writes wait for the
copy, queries do not), a child process (`build_index.py`) optimizes the copy, and
meanwhile every write is applied to the live shard and kept in a replay log. When
the child is done, the copy is loaded, the log replayed into it, `store.json`
switched to it atomically and the old shard closed once its last reader is gone.
A crash at any point leaves `store.json` naming a complete shard; leftovers are
removed at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

from search_service.errors import SearchError
from search_service.filters import And, Condition, FieldCondition, Metadata, Or
from search_service.stores.base import (
    ModelInfo,
    Record,
    ScoredRecord,
    StoreStats,
    Vector,
    check_same_model,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT = 1
# Point ids are uuid5 of (namespace, id) under this project-specific namespace.
ID_NAMESPACE = uuid.UUID("5f0c7a52-3b8e-4a55-9d43-8f1e2f8a6c11")
HNSW_EF = 128
# Qdrant Edge counts facets up to a limit; namespaces past it would go unreported.
MAX_NAMESPACES = 1_000_000

_ORDER_BOUNDS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


def point_id(namespace: str, record_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{namespace}\x00{record_id}"))


def metadata_key(field: str) -> str:
    # Quoted, so a metadata key with dots or brackets stays one key, not a path.
    return f'md."{field}"'


def bool_key(field: str) -> str:
    return f'bools."{field}"'


def _payload(namespace: str, record: Record) -> dict[str, Any]:
    bools = {k: _bool_word(v) for k, v in record.metadata.items() if isinstance(v, bool)}
    return {
        "ns": namespace,
        "id": record.id,
        "keys": sorted(record.metadata),
        "md": record.metadata,
        "bools": bools,
    }


def _bool_word(value: bool) -> str:
    return "true" if value else "false"


class LocalStore:
    """A VectorStore on one Qdrant Edge shard, with HNSW built in a child process."""

    name = "local"

    def __init__(self, data_dir: Path, *, index_threshold: int = 10_000) -> None:
        self._root = Path(data_dir) / "local"
        self._index_threshold = index_threshold
        self._model: ModelInfo | None = None
        self._shard: qe.EdgeShard | None = None
        self._shard_name = ""
        self._readers: dict[int, int] = {}
        self._reader_left = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._replay: list[qe.UpdateOperation] | None = None
        self._build: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._build_floor = 0
        self._indexed_fields: set[str] = set()
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def model(self) -> ModelInfo | None:
        return self._model

    async def open(self) -> ModelInfo | None:
        meta = self._read_meta()
        if meta is None:
            return None
        self._model = ModelInfo(**meta["model"])
        self._shard_name = meta["shard"]
        self._shard = await asyncio.to_thread(qe.EdgeShard.load, str(self._root / meta["shard"]))
        await asyncio.to_thread(self._remove_leftovers)
        self._indexed_fields = set(self._shard.info().payload_schema)
        log.info(
            "local store at %s: %d vectors of %s", self._root, self._points(), self._model.model_id
        )
        self._maybe_build()
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

    def _create(self, model: ModelInfo) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        name = "shard-000001"
        shutil.rmtree(self._root / name, ignore_errors=True)
        shard = qe.EdgeShard.create(str(self._root / name), _shard_config(model.dimension))
        shard.update(qe.UpdateOperation.create_field_index("ns", qe.PayloadSchemaType.Keyword))
        shard.update(qe.UpdateOperation.create_field_index("keys", qe.PayloadSchemaType.Keyword))
        shard.flush()
        self._write_meta(model, name)
        self._shard, self._shard_name, self._model = shard, name, model
        self._indexed_fields = {"ns", "keys"}
        log.info("created a local store in %s for %s", self._root, model.model_id)

    async def close(self) -> None:
        self._closing = True
        if self._build is not None:
            if self._child is not None and self._child.returncode is None:
                self._child.kill()
            self._build.cancel()
            with suppress(asyncio.CancelledError):
                await self._build
        async with self._write_lock:
            shard, self._shard = self._shard, None
            if shard is not None:
                await self._release(shard)

    # --- writes --------------------------------------------------------------------

    async def upsert(self, namespace: str, records: Sequence[Record]) -> dict[int, SearchError]:
        points = [
            qe.Point(
                point_id(namespace, r.id),
                r.values.astype(np.float32).tolist(),
                _payload(namespace, r),
            )
            for r in records
        ]
        if points:
            await self._write(qe.UpdateOperation.upsert_points(points))
        return {}  # one write: all stored, or it raised

    async def delete_ids(self, namespace: str, ids: Sequence[str]) -> None:
        if ids and self._shard is not None:
            await self._write(
                qe.UpdateOperation.delete_points([point_id(namespace, i) for i in ids])
            )

    async def delete_where(self, namespace: str, condition: Condition) -> None:
        if self._shard is not None:
            await self._ensure_indexes(condition)
            await self._write(
                qe.UpdateOperation.delete_points_by_filter(_namespace_filter(namespace, condition))
            )

    async def delete_all(self, namespace: str) -> None:
        if self._shard is not None:
            await self._write(
                qe.UpdateOperation.delete_points_by_filter(_namespace_filter(namespace, None))
            )

    async def _write(self, op: qe.UpdateOperation) -> None:
        async with self._write_lock:
            shard = self._require_shard()
            # The WAL entry is written before update() returns: an answered write
            # survives the process being killed.
            await asyncio.to_thread(shard.update, op)
            if self._replay is not None:
                self._replay.append(op)
        self._maybe_build()

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
    ) -> list[ScoredRecord]:
        if self._shard is None:
            return []
        await self._ensure_indexes(condition)
        request = qe.QueryRequest(
            limit=top_k,
            query=qe.Query.Nearest(vector.astype(np.float32).tolist()),
            filter=_namespace_filter(namespace, condition),
            with_payload=True,
            with_vector=include_values,
            params=qe.SearchParams(hnsw_ef=max(HNSW_EF, top_k)),
        )
        points = await self._read(lambda shard: shard.query(request))
        return [
            ScoredRecord(
                id=p.payload["id"],
                score=float(p.score),
                values=_vector(p.vector) if include_values else None,
                metadata=_metadata(p.payload) if include_metadata else None,
            )
            for p in points
            if p.payload is not None
        ]

    async def fetch(self, namespace: str, ids: Sequence[str]) -> list[Record]:
        if self._shard is None or not ids:
            return []
        wanted: list[qe.PointId] = [point_id(namespace, i) for i in ids]
        found = await self._read(
            lambda shard: shard.retrieve(wanted, with_payload=True, with_vector=True)
        )
        by_id = {r.payload["id"]: r for r in found if r.payload is not None}
        return [
            Record(id=i, values=_vector(by_id[i].vector), metadata=_metadata(by_id[i].payload))
            for i in dict.fromkeys(ids)
            if i in by_id
        ]

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
            return await asyncio.to_thread(call, shard)

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

    async def _ensure_indexes(self, condition: Condition | None) -> None:
        """Indexes each filtered metadata key once, so the planner can pick exact search."""
        missing = {
            key: schema
            for key, schema in _filtered_fields(condition)
            if key not in self._indexed_fields
        }
        for key, schema in missing.items():
            self._indexed_fields.add(key)
            await self._write(qe.UpdateOperation.create_field_index(key, schema))

    # --- background index building -------------------------------------------------

    def index_status(self) -> tuple[int, int]:
        """(vectors in the HNSW index, vectors stored); the rest are searched exactly."""
        if self._shard is None:
            return 0, 0
        info = self._shard.info()
        return info.indexed_vectors_count, info.points_count

    async def wait_for_index_build(self) -> None:
        """Returns when no background build is running (at once if none is)."""
        while self._build is not None:
            await asyncio.shield(self._build)

    def _points(self) -> int:
        return self._shard.info().points_count if self._shard is not None else 0

    def _maybe_build(self) -> None:
        if self._shard is None or self._closing or self._build is not None:
            return
        info = self._shard.info()
        unindexed = info.points_count - info.indexed_vectors_count
        if unindexed >= max(self._index_threshold, self._build_floor):
            self._build = asyncio.create_task(self._build_index(), name="local-index-build")

    async def _build_index(self) -> None:
        source = self._require_shard()
        target = self._next_shard_name()
        started = asyncio.get_running_loop().time()
        try:
            async with self._write_lock:
                await asyncio.to_thread(source.flush)
                await asyncio.to_thread(
                    shutil.copytree, self._root / self._shard_name, self._root / target
                )
                self._replay = []
            log.info("building the HNSW index of %d vectors in the background", self._points())
            self._child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "search_service.stores.build_index",
                str(self._root / target),
                str(os.getpid()),
            )
            if await self._child.wait() != 0:
                raise RuntimeError(f"the index builder exited with {self._child.returncode}")
            indexed_before = source.info().indexed_vectors_count
            async with self._write_lock:
                await self._switch_to(target)
            info = self._require_shard().info()
            # A build that indexed nothing new must not restart at once, forever.
            progressed = info.indexed_vectors_count > indexed_before
            unindexed = info.points_count - info.indexed_vectors_count
            self._build_floor = 0 if progressed else unindexed + self._index_threshold
            log.info(
                "HNSW index ready: %d of %d vectors indexed in %.0f s",
                info.indexed_vectors_count,
                info.points_count,
                asyncio.get_running_loop().time() - started,
            )
        except asyncio.CancelledError:
            await asyncio.to_thread(shutil.rmtree, self._root / target, True)
            raise
        except Exception:
            log.exception("building the index failed; queries stay exact, will retry later")
            self._build_floor = self._points() + self._index_threshold
            await asyncio.to_thread(shutil.rmtree, self._root / target, True)
        finally:
            self._replay = None
            self._child = None
            self._build = None
        # Writes made during the build may already call for the next one.
        self._maybe_build()

    async def _switch_to(self, target: str) -> None:
        """Loads the built copy, replays the writes made meanwhile, and makes it current."""
        replay = self._replay or []
        assert self._model is not None

        def load_and_replay() -> qe.EdgeShard:
            shard = qe.EdgeShard.load(str(self._root / target))
            for op in replay:
                shard.update(op)
            shard.flush()
            return shard

        fresh = await asyncio.to_thread(load_and_replay)
        await asyncio.to_thread(self._write_meta, self._model, target)
        old, old_name = self._shard, self._shard_name
        self._shard, self._shard_name = fresh, target
        if old is not None:
            await self._release(old)
        await asyncio.to_thread(shutil.rmtree, self._root / old_name, True)

    def _next_shard_name(self) -> str:
        number = int(self._shard_name.rsplit("-", 1)[1]) + 1
        return f"shard-{number:06d}"

    def _remove_leftovers(self) -> None:
        for path in self._root.glob("shard-*"):
            if path.name != self._shard_name:
                log.info("removing %s, left over from an interrupted index build", path)
                shutil.rmtree(path, ignore_errors=True)

    # --- store.json --------------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any] | None:
        path = self._root / "store.json"
        if not path.exists():
            return None
        meta: dict[str, Any] = json.loads(path.read_text())
        if meta.get("format") != FORMAT:
            raise RuntimeError(f"{path} has format {meta.get('format')}; expected {FORMAT}")
        return meta

    def _write_meta(self, model: ModelInfo, shard: str) -> None:
        path = self._root / "store.json"
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump({"format": FORMAT, "model": asdict(model), "shard": shard}, f, indent=2)
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


def _shard_config(dimension: int) -> qe.EdgeConfig:
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dimension, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=128, full_scan_threshold=10_000),
        # The builder indexes whatever it is given; the threshold that matters is ours.
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )


def _flush_and_close(shard: qe.EdgeShard) -> None:
    shard.flush()
    shard.close()


def _metadata(payload: dict[str, Any] | None) -> Metadata:
    return dict(payload.get("md", {})) if payload else {}


def _vector(raw: Any) -> Vector:
    if isinstance(raw, dict):  # named vectors; ours is the unnamed default ""
        raw = raw[""]
    return np.asarray(raw, dtype=np.float32)


# --- filters: the validated Pinecone tree -> Qdrant conditions -----------------------


def _namespace_filter(namespace: str, condition: Condition | None) -> qe.Filter:
    must: list[Any] = [qe.FieldCondition("ns", match=qe.MatchValue(namespace))]
    if condition is not None:
        must.append(translate(condition))
    return qe.Filter(must=must)


def translate(condition: Condition) -> Any:
    """One Pinecone condition as a Qdrant condition with the same meaning."""
    if isinstance(condition, And):
        return qe.Filter(must=[translate(c) for c in condition.conditions])
    if isinstance(condition, Or):
        return qe.Filter(should=[translate(c) for c in condition.conditions])
    field, op, value = condition.field, condition.op, condition.value
    key = metadata_key(field)
    # Pinecone's $ne/$nin never match a record without the field; Qdrant's must_not would.
    exists = qe.FieldCondition("keys", match=qe.MatchValue(field))
    if op == "$exists":
        return exists if value else qe.Filter(must_not=[exists])
    if op in _ORDER_BOUNDS:
        assert isinstance(value, float)
        return qe.FieldCondition(key, range=qe.RangeFloat(**{_ORDER_BOUNDS[op]: value}))
    options = value if isinstance(value, tuple) else (value,)
    any_of = _any_of(field, options)
    if op in ("$eq", "$in"):
        return any_of
    # $ne/$nin: "no element is in the set", never Qdrant's MatchExcept ("some element is not").
    return qe.Filter(must=[exists], must_not=[any_of])


def _any_of(field: str, options: Sequence[str | float | bool]) -> Any:
    """Matches when the field (or any element of a list field) equals one of `options`."""
    key = metadata_key(field)
    parts: list[Any] = []
    strings = [o for o in options if isinstance(o, str)]
    if strings:
        parts.append(qe.FieldCondition(key, match=qe.MatchAny(strings)))
    for option in options:
        if isinstance(option, bool):
            parts.append(
                qe.FieldCondition(bool_key(field), match=qe.MatchValue(_bool_word(option)))
            )
        elif isinstance(option, float):
            # MatchValue takes no floats; numbers are stored as floats and compared as such.
            parts.append(qe.FieldCondition(key, range=qe.RangeFloat(gte=option, lte=option)))
    if len(parts) == 1:
        return parts[0]
    return qe.Filter(should=parts)


def _filtered_fields(condition: Condition | None) -> Iterator[tuple[str, qe.PayloadSchemaType]]:
    """(payload key, index type) of each metadata key a filter compares with a value."""
    if condition is None:
        return
    if isinstance(condition, And | Or):
        for part in condition.conditions:
            yield from _filtered_fields(part)
        return
    if not isinstance(condition, FieldCondition) or condition.op == "$exists":
        return
    value = condition.value
    sample = value[0] if isinstance(value, tuple) and value else value
    if isinstance(sample, bool):
        yield bool_key(condition.field), qe.PayloadSchemaType.Keyword
        return
    schema = qe.PayloadSchemaType.Keyword if isinstance(sample, str) else qe.PayloadSchemaType.Float
    yield metadata_key(condition.field), schema


__all__ = ["LocalStore", "Metadata", "point_id", "translate"]
