"""The local store itself: background HNSW builds, writes during them, reopening."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import qdrant_edge as qe
from hypothesis import given, settings
from hypothesis import strategies as st

from search_service.domain import ModelInfo, Record, Vector
from search_service.errors import ReplyTooLarge
from search_service.filters import matches, parse_filter
from search_service.stores.base import BuildsIndexes
from search_service.stores.local import layout, migrate, points
from search_service.stores.local import store as store_module
from search_service.stores.local.root_lock import LOCK_FILE
from search_service.stores.local.shard_config import shard_config
from search_service.stores.local.store import LocalStore
from tests.support.stack import files_of

MODEL = ModelInfo("test/model", 32, "f1ngerpr1nt")


def unit_vectors(n: int, seed: int) -> Vector:
    vectors = np.random.default_rng(seed).standard_normal((n, MODEL.dimension)).astype(np.float32)
    unit: Vector = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


async def brute_force_check(
    store: LocalStore,
    stored: dict[str, tuple[np.ndarray, dict[str, object]]],
    raw: Mapping[str, Any] | None,
) -> None:
    condition = parse_filter(raw)
    query = unit_vectors(1, 99)[0]
    found = await store.query(
        "", query, top_k=10, condition=condition, include_values=False, include_metadata=True
    )
    expected = sorted(
        (i for i, (_, md) in stored.items() if matches(condition, md)),
        key=lambda i: -float(stored[i][0] @ query),
    )[:10]
    assert [m.id for m in found] == expected


async def test_queries_and_writes_stay_correct_while_the_index_builds_in_the_background(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path, index_threshold=300)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(900, 1)
    stored: dict[str, tuple[np.ndarray, dict[str, object]]] = {}
    for start in range(0, 600, 100):
        batch = [
            Record(str(i), vectors[i], {"label": f"l{i % 5}", "n": float(i % 7)})
            for i in range(start, start + 100)
        ]
        await store.upsert("", batch)
        stored.update({r.id: (r.values, dict(r.metadata)) for r in batch})
    assert store.building, "300 unindexed vectors should start a build"

    # While the child process builds, writes land in the live shard and the replay log.
    i = 600
    while store.building and i < 900:
        record = Record(str(i), vectors[i], {"label": "late", "n": 1.0})
        await store.upsert("", [record])
        stored[record.id] = (record.values, dict(record.metadata))
        await store.delete_ids("", [str(i - 600)])
        stored.pop(str(i - 600), None)
        await brute_force_check(store, stored, {"label": {"$in": ["l1", "late"]}})
        i += 1
    assert i > 600, "the build finished before any write could overlap it"
    await store.wait_for_index_build()

    indexed, total = store.index_status()
    assert total == len(stored)
    assert indexed >= 300
    # The builder opened its copy with payloads on disk; the swap serves them from RAM.
    config = tmp_path / "local" / store._shard_name / "edge_config.json"
    assert json.loads(config.read_text())["payload_memory"] == "cached"
    for raw in (None, {"label": "late"}, {"n": {"$lt": 3}}, {"label": {"$ne": "l2"}}):
        await brute_force_check(store, stored, raw)
    fetched = await store.fetch("", sorted(stored))
    assert {r.id for r in fetched} == set(stored)
    await store.close()

    reopened = LocalStore(tmp_path, index_threshold=10_000)
    assert await reopened.open() == MODEL
    assert (await reopened.stats()).namespaces == {"": len(stored)}
    await brute_force_check(reopened, stored, {"label": "late"})
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == [
        LOCK_FILE,
        reopened._shard_name,
        "store.json",
    ]
    await reopened.close()


async def test_metadata_keys_with_dots_and_empty_lists_keep_their_meaning(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(3, 2)
    records = [
        Record("dotted", vectors[0], {"a.b": 1.0, "tags": []}),
        Record("nested-looking", vectors[1], {"a": "b", "tags": ["x"]}),
        Record("bare", vectors[2], {}),
    ]
    await store.upsert("ns", records)
    metadata = {r.id: r.metadata for r in records}
    for raw in (
        {"a.b": 1},
        {"tags": {"$exists": True}},
        {"tags": {"$ne": "x"}},
        {"tags": {"$nin": ["y"]}},
        {"a": {"$exists": False}},
    ):
        condition = parse_filter(raw)
        found = await store.query(
            "ns", vectors[0], top_k=10, condition=condition, include_values=False,
            include_metadata=False,
        )  # fmt: skip
        assert {m.id for m in found} == {i for i, md in metadata.items() if matches(condition, md)}
    assert (
        await store.query(
            "", vectors[0], top_k=10, condition=None, include_values=False, include_metadata=False
        )
        == []
    )
    await store.close()


# --- point ids: distinct (namespace, id) pairs are distinct records --------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(), st.text()), min_size=2, max_size=20, unique=True))
def test_distinct_namespace_id_pairs_map_to_distinct_points(pairs: list[tuple[str, str]]) -> None:
    assert len({layout.point_id(ns, i) for ns, i in pairs}) == len(pairs)


async def test_pairs_that_layout_1_merged_are_two_records(tmp_path: Path) -> None:
    # Layout 1 joined namespace and id with NUL: both pairs below were one point.
    assert layout.point_id_v1("a\x00b", "c") == layout.point_id_v1("a", "b\x00c")
    store = LocalStore(tmp_path)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(2, 3)
    await store.upsert("a\x00b", [Record("c", vectors[0], {"which": "first"})])
    await store.upsert("a", [Record("b\x00c", vectors[1], {"which": "second"})])
    (first,) = await store.fetch("a\x00b", ["c"])
    (second,) = await store.fetch("a", ["b\x00c"])
    assert (first.metadata, second.metadata) == ({"which": "first"}, {"which": "second"})
    assert np.allclose(first.values, vectors[0], atol=1e-6)
    await store.close()


# --- stores written by layout 1 ----------------------------------------------------------

LAYOUT_1_RECORDS = [
    (ns, f"r{i}", {"label": f"l{i % 3}", "a.b": float(i), "flag": i % 2 == 0, "tags": ["x"]})
    for ns in ("", "other")
    for i in range(40)
]


def write_layout_1_store(data_dir: Path) -> dict[tuple[str, str], np.ndarray]:
    """A store exactly as layout 1 wrote it: NUL-joined ids, metadata under its own keys,
    no `bools`, and a payload index on a quoted metadata path."""
    root = data_dir / "local"
    root.mkdir(parents=True)
    shard = qe.EdgeShard.create(
        str(root / "shard-000001"), shard_config(MODEL.dimension, qe.Memory.Cold)
    )
    shard.update(qe.UpdateOperation.create_field_index("ns", qe.PayloadSchemaType.Keyword))
    shard.update(qe.UpdateOperation.create_field_index("keys", qe.PayloadSchemaType.Keyword))
    shard.update(qe.UpdateOperation.create_field_index('md."label"', qe.PayloadSchemaType.Keyword))
    vectors = unit_vectors(len(LAYOUT_1_RECORDS), 4)
    points = [
        qe.Point(
            layout.point_id_v1(ns, rid),
            vectors[n].tolist(),
            {"ns": ns, "id": rid, "keys": sorted(md), "md": md},
        )
        for n, (ns, rid, md) in enumerate(LAYOUT_1_RECORDS)
    ]
    shard.update(qe.UpdateOperation.upsert_points(points))
    shard.flush()
    shard.close()
    meta = {"format": 1, "model": asdict(MODEL), "shard": "shard-000001"}
    (root / "store.json").write_text(json.dumps(meta))
    return {(ns, rid): vectors[n] for n, (ns, rid, _) in enumerate(LAYOUT_1_RECORDS)}


async def check_every_layout_1_record(
    store: LocalStore, vectors: dict[tuple[str, str], np.ndarray]
) -> None:
    for ns in ("", "other"):
        expected = {rid: md for n, rid, md in LAYOUT_1_RECORDS if n == ns}
        fetched = await store.fetch(ns, sorted(expected))
        assert {r.id: r.metadata for r in fetched} == expected
        for record in fetched:
            assert np.allclose(record.values, vectors[(ns, record.id)], atol=1e-6)
        for raw in ({"label": "l1"}, {"flag": True}, {"a.b": {"$gte": 30}}, {"tags": "x"}):
            condition = parse_filter(raw)
            found = await store.query(
                ns, unit_vectors(1, 5)[0], top_k=100, condition=condition,
                include_values=False, include_metadata=False,
            )  # fmt: skip
            assert {m.id for m in found} == {
                i for i, md in expected.items() if matches(condition, md)
            }
    assert (await store.stats()).namespaces == {"": 40, "other": 40}


async def test_a_layout_1_store_is_migrated_on_open_and_keeps_every_record(
    tmp_path: Path,
) -> None:
    vectors = write_layout_1_store(tmp_path)
    store = LocalStore(tmp_path)
    assert await store.open() == MODEL
    await check_every_layout_1_record(store, vectors)
    await store.close()
    meta = json.loads((tmp_path / "local" / "store.json").read_text())
    assert meta["format"] == layout.LAYOUT
    reopened = LocalStore(tmp_path)
    await reopened.open()
    assert reopened._shard is not None
    assert 'md."label"' not in reopened._shard.info().payload_schema
    await check_every_layout_1_record(reopened, vectors)
    await reopened.close()


async def test_a_migration_cut_short_resumes_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors = write_layout_1_store(tmp_path)
    monkeypatch.setattr(migrate, "PAGE", 7)
    real_payload = layout.payload
    calls = 0

    def crash_midway(*args: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 30:
            raise OSError("the disk went away")
        return real_payload(*args)

    monkeypatch.setattr(layout, "payload", crash_midway)
    store = LocalStore(tmp_path)
    with pytest.raises(OSError, match="disk went away"):
        await store.open()
    await store.close()
    assert json.loads((tmp_path / "local" / "store.json").read_text())["format"] == 1
    monkeypatch.setattr(layout, "payload", real_payload)
    resumed = LocalStore(tmp_path)
    await resumed.open()
    await check_every_layout_1_record(resumed, vectors)
    await resumed.close()


# --- the index-build swap ----------------------------------------------------------------


@pytest.mark.parametrize("trouble", ["stop", "error"])
async def test_a_stop_or_error_while_the_old_shard_closes_keeps_every_acknowledged_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trouble: str
) -> None:
    store = LocalStore(tmp_path, index_threshold=60)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(100, 6)
    records = [Record(str(i), vectors[i], {"n": float(i)}) for i in range(100)]
    await store.upsert("", records)
    assert store.building
    loop = asyncio.get_running_loop()
    releasing = asyncio.Event()
    real_close = store_module._flush_and_close
    first = True

    def slow_close(shard: qe.EdgeShard) -> None:
        nonlocal first
        if first:  # the switch releasing the old shard, after store.json names the new one
            first = False
            loop.call_soon_threadsafe(releasing.set)
            time.sleep(0.5)
            if trouble == "error":
                real_close(shard)
                raise OSError("closing the old shard failed")
        real_close(shard)

    monkeypatch.setattr(store_module, "_flush_and_close", slow_close)
    await releasing.wait()
    if trouble == "stop":
        await store.close()
    else:
        await store.wait_for_index_build()
        await store.close()
    reopened = LocalStore(tmp_path)
    assert await reopened.open() == MODEL
    fetched = await reopened.fetch("", [r.id for r in records])
    assert [r.id for r in fetched] == [r.id for r in records]
    assert reopened.index_status()[0] >= 60  # the built shard is the one in use
    await reopened.close()


# --- a store that cannot be opened stops the service -------------------------------------


def corrupt_json(root: Path) -> None:
    (root / "store.json").write_text('{"format": 2, "model": ')


def missing_shard(root: Path) -> None:
    meta = {"format": 2, "model": asdict(MODEL), "shard": "shard-000007"}
    (root / "store.json").write_text(json.dumps(meta))


def future_layout(root: Path) -> None:
    meta = {"format": 99, "model": asdict(MODEL), "shard": "shard-000001"}
    (root / "store.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("spoil", "words"),
    [
        (corrupt_json, "store.json is unreadable or corrupt"),
        (missing_shard, "shard-000007, which does not exist"),
        (future_layout, "has layout 99"),
    ],
)
def test_a_store_that_cannot_be_opened_stops_the_service_with_exit_2_naming_the_path(
    tmp_path: Path, spoil: Callable[[Path], None], words: str
) -> None:
    root = tmp_path / "data" / "local"
    root.mkdir(parents=True)
    spoil(root)
    done = subprocess.run(
        [sys.executable, "-m", "search_service"],
        env={
            **os.environ,
            "SEARCH_ADDR": "127.0.0.1:0",
            "EMBED_TARGET": "127.0.0.1:1",
            "DATA_DIR": str(tmp_path / "data"),
            "VECTOR_STORE": "local",
        },
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert str(root) in done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


# --- the shard's own configuration --------------------------------------------------------


def payload_storage_kinds(shard_dir: Path) -> set[str]:
    return {
        json.loads(f.read_text())["config"]["payload_storage_type"]["type"]
        for f in shard_dir.glob("segments/*/segment.json")
    }


def vector_storage_kinds(shard_dir: Path) -> set[str]:
    return {
        json.loads(f.read_text())["config"]["vector_data"][""]["storage_type"]
        for f in shard_dir.glob("segments/*/segment.json")
    }


async def test_a_store_made_with_an_older_config_takes_todays_config_when_opened(
    tmp_path: Path,
) -> None:
    """Payloads are read by every query: a store keeps them mapped and cached in RAM
    (Qdrant reads Cold payloads from disk on first touch, 2-3x slower queries). The
    float32 originals are only read to rescore and to return values: they stay on disk
    (Cold), so a load does not read them all into memory."""
    root = tmp_path / "local"
    root.mkdir()
    older = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=MODEL.dimension, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=1),
    )
    shard = qe.EdgeShard.create(str(root / "shard-000001"), older)
    vectors = unit_vectors(3, 8)
    shard.update(points.upsert_op("", [Record(f"r{i}", vectors[i], {}) for i in range(3)]))
    shard.flush()
    shard.close()
    assert payload_storage_kinds(root / "shard-000001") == {"mmap"}
    meta = {"format": layout.LAYOUT, "model": asdict(MODEL), "shard": "shard-000001"}
    (root / "store.json").write_text(json.dumps(meta))

    store = LocalStore(tmp_path)
    assert await store.open() == MODEL
    config = json.loads((root / "shard-000001" / "edge_config.json").read_text())
    assert config["payload_memory"] == "cached"
    assert config["vectors"][""]["memory"] == "cold"
    assert config["quantization_config"]["scalar"]["type"] == "int8"
    assert [r.id for r in await store.fetch("", ["r0", "r1", "r2"])] == ["r0", "r1", "r2"]
    await store.close()

    # Appendable segments hold their originals in chunks, built ones in one file.
    kinds_of: dict[Literal["cold", "cached"], set[str]] = {
        "cold": {"ChunkedMmap", "Mmap"},  # on disk
        "cached": {"InRamChunkedMmap", "InRamMmap"},  # SEARCH_VECTORS_MEMORY=cached
    }
    for memory, kinds_wanted in kinds_of.items():
        fresh = LocalStore(tmp_path / memory, vectors_memory=memory)
        await fresh.open()
        await fresh.bind(MODEL)
        await fresh.upsert("", [Record("a", vectors[0], {})])
        shard_dir = tmp_path / memory / "local" / "shard-000001"
        assert payload_storage_kinds(shard_dir) == {"in_ram_mmap"}
        kinds = vector_storage_kinds(shard_dir)
        assert kinds
        assert kinds <= kinds_wanted, (memory, kinds)
        config = json.loads((shard_dir / "edge_config.json").read_text())
        assert config["vectors"][""]["memory"] == memory
        (found,) = await fresh.fetch("", ["a"])
        assert np.allclose(found.values, vectors[0], atol=1e-6)
        await fresh.close()


async def test_queries_never_write_whatever_they_filter_on(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, index_threshold=100_000)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(300, 5)
    stored: dict[str, tuple[np.ndarray, dict[str, Any]]] = {
        str(i): (vectors[i], {"label": f"l{i % 5}", "n": float(i % 7), "ok": i % 2 == 0})
        for i in range(300)
    }
    await store.upsert("", [Record(i, v, md) for i, (v, md) in stored.items()])
    before = files_of(tmp_path)
    # A writer holds the lock throughout: a query that wanted it (to index a key, as queries
    # once did) would wait here instead of answering.
    async with store.write_lock:
        for q in range(20):
            keys = [f"new{q}_{j}" for j in range(50)]
            raw: dict[str, Any] = {
                "$or": [
                    *({key: {"$eq": "x"}} for key in keys[:20]),
                    *({key: {"$gt": 1.5}} for key in keys[20:35]),
                    *({key: {"$eq": True}} for key in keys[35:]),
                    {"label": "l1"},
                ]
            }
            await asyncio.wait_for(brute_force_check(store, stored, raw), 10)
    await brute_force_check(store, stored, {"$and": [{"n": {"$gte": 3}}, {"ok": True}]})
    assert files_of(tmp_path) == before
    await store.close()


async def test_upserts_index_the_metadata_keys_they_bring_up_to_the_cap(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, index_threshold=100_000)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(store_module.MAX_INDEXED_KEYS + 10, 6)
    metadata: dict[str, Any] = {
        f"key{j}": f"v{j}" for j in range(store_module.MAX_INDEXED_KEYS + 10)
    }
    await store.upsert("", [Record("a", vectors[0], {"n": 1.5, "flag": True, "tags": ["x"]})])
    await store.upsert("", [Record("b", vectors[1], metadata)])
    assert store.shard is not None
    schema = store.shard.info().payload_schema
    indexed = {layout.key_of_path(path) for path in schema} - {None}
    assert len(indexed) == store_module.MAX_INDEXED_KEYS
    for key in ("n", "flag", "tags"):
        assert layout.key_of_path(layout.metadata_path(key)) in indexed
    assert {layout.number_path("n"), layout.bool_path("flag")} <= set(schema)
    # Keys past the cap are filtered all the same, reading each candidate's payload.
    last = f"key{store_module.MAX_INDEXED_KEYS + 9}"
    assert layout.metadata_path(last) not in schema
    found = await store.query(
        "", vectors[1], top_k=5, condition=parse_filter({last: metadata[last]}),
        include_values=False, include_metadata=False,
    )  # fmt: skip
    assert [m.id for m in found] == ["b"]
    await store.close()


class PausedUpdates:
    """Stands in for the live shard: passes every call through, but holds `update` in its
    worker thread until released, so a test can cancel the caller mid-write."""

    def __init__(self, shard: qe.EdgeShard) -> None:
        self.shard = shard
        self.entered = asyncio.Event()
        self.release = threading.Event()
        self._loop = asyncio.get_running_loop()

    def update(self, op: qe.UpdateOperation) -> None:
        self._loop.call_soon_threadsafe(self.entered.set)
        assert self.release.wait(30)
        self.shard.update(op)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shard, name)


@pytest.mark.parametrize("write", ["upsert", "delete"])
async def test_a_write_cancelled_mid_update_is_applied_and_survives_the_next_swap(
    tmp_path: Path, write: str
) -> None:
    store = LocalStore(tmp_path, index_threshold=50)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(80, 7)
    await store.upsert("", [Record(str(i), vectors[i], {}) for i in range(60)])
    assert store.building, "60 unindexed vectors should start a build"
    live = store.shard
    assert live is not None
    paused = PausedUpdates(live)
    store._shard = paused  # type: ignore[assignment]
    # Made while the build works on its copy: only the replay brings it into the new shard.
    call: Coroutine[Any, Any, object]
    if write == "upsert":
        call = store.upsert("", [Record(str(i), vectors[i], {}) for i in range(60, 80)])
    else:
        call = store.delete_ids("", [str(i) for i in range(10)])
    task = asyncio.ensure_future(call)
    await asyncio.wait_for(paused.entered.wait(), 30)
    task.cancel()  # the caller's deadline passes while the shard applies the write
    await asyncio.sleep(0.05)
    paused.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    store._shard = live
    await store.wait_for_index_build()
    assert store.shard is not live, "the index swap should have replaced the shard"
    found = {r.id for r in await store.fetch("", [str(i) for i in range(80)])}
    kept = range(10, 60) if write == "delete" else range(80)
    assert found == {str(i) for i in kept}
    await store.close()


class CountedReads:
    """Stands in for the live shard, counting the points each `retrieve` reads."""

    def __init__(self, shard: qe.EdgeShard) -> None:
        self.shard = shard
        self.retrieved: list[int] = []

    def retrieve(self, ids: list[qe.PointId], **options: Any) -> Any:
        self.retrieved.append(len(ids))
        return self.shard.retrieve(ids, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shard, name)


async def test_a_reply_that_cannot_fit_is_refused_before_every_record_is_read(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path, index_threshold=100_000)
    await store.open()
    await store.bind(MODEL)
    vectors = unit_vectors(2000, 8)
    big: dict[str, Any] = {"text": "x" * 20_000}
    for start in range(0, 2000, 500):
        await store.upsert("", [Record(str(i), vectors[i], big) for i in range(start, start + 500)])
    counted = CountedReads(store.shard)  # type: ignore[arg-type]
    store._shard = counted  # type: ignore[assignment]
    budget = 1_000_000
    with pytest.raises(ReplyTooLarge) as caught:
        await store.query(
            "", vectors[0], top_k=2000, condition=None, include_values=True,
            include_metadata=True, max_bytes=budget,
        )  # fmt: skip
    assert "only 49 of the 2000 matches fit" in str(caught.value)
    assert counted.retrieved == [points.RECORD_CHUNK]
    with pytest.raises(ReplyTooLarge):
        await store.fetch("", [str(i) for i in range(1000)], max_bytes=budget)
    assert counted.retrieved[1:] == [points.RECORD_CHUNK]
    # What fits is answered whole, by the one query or in chunks.
    for top_k in (10, 40):
        found = await store.query(
            "", vectors[0], top_k=top_k, condition=None, include_values=True,
            include_metadata=True, max_bytes=budget,
        )  # fmt: skip
        assert len(found) == top_k
        assert found[0].id == "0"
        assert found[0].metadata == big
        assert found[0].values is not None
        assert np.allclose(found[0].values, vectors[0], atol=1e-6)
    assert len(await store.fetch("", [str(i) for i in range(40)], max_bytes=budget)) == 40
    store._shard = counted.shard
    await store.close()


async def test_a_store_held_by_another_process_is_named_as_such_not_as_damaged(
    tmp_path: Path,
) -> None:
    held = LocalStore(tmp_path / "data")
    await held.open()
    await held.bind(MODEL)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "search_service"],
        env={**os.environ, "SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": "127.0.0.1:1",
             "DATA_DIR": str(tmp_path / "data"), "VECTOR_STORE": "local"},
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"is in use by another process (pid {os.getpid()})" in done.stderr
    assert "backup" not in done.stderr
    assert "Traceback" not in done.stderr
    await held.close()
    # Once it is let go, the store opens as ever.
    again = LocalStore(tmp_path / "data")
    assert await again.open() == MODEL
    await again.close()


def test_the_local_store_offers_what_the_index_metrics_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert isinstance(store, BuildsIndexes)
    assert (store.changes, store.index_status(), store.building) == (0, (0, 0), False)
