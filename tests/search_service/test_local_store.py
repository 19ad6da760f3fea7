"""The local store itself: background HNSW builds, writes during them, reopening."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from search_service.filters import matches, parse_filter
from search_service.stores.base import ModelInfo, Record, Vector
from search_service.stores.local import LocalStore

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
    assert store._build is not None, "300 unindexed vectors should start a build"

    # While the child process builds, writes land in the live shard and the replay log.
    i = 600
    while store._build is not None and i < 900:
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
