"""The local store runs maximal marginal relevance in Qdrant: over an indexed shard, with
a filter, min_score, ids left out and a reply too small for the whole answer at once, it
answers what `refine.diversify` answers over the pool the store's plain query gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search_service.domain import Record
from search_service.errors import ReplyTooLarge
from search_service.filters import parse_filter
from search_service.query import _ranked
from search_service.refine import Pick, diversify
from search_service.stores.base import Diversifies
from search_service.stores.local.store import LocalStore
from tests.support.stores import DIMENSION, MODEL


async def test_native_mmr_answers_what_diversify_answers_over_the_pool(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "data", index_threshold=200)
    await store.open()
    await store.bind(MODEL)
    assert isinstance(store, Diversifies)
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(12, DIMENSION))
    raw = centres[rng.integers(0, 12, 1200)] + rng.normal(size=(1200, DIMENSION)) * 0.7
    vectors = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    records = [Record(f"r{i}", v, {"half": float(i % 2)}) for i, v in enumerate(vectors)]
    try:
        for start in range(0, len(records), 300):
            assert await store.upsert("", records[start : start + 300]) == {}
        await store.wait_for_index_build()
        assert store.index_status()[0] > 0, "no index was built"
        condition = parse_filter({"half": 0})
        for trial in range(40):
            query = vectors[trial * 7] + rng.normal(size=DIMENSION).astype(np.float32) * 0.2
            query = (query / np.linalg.norm(query)).astype(np.float32)
            lam = [0.0, 0.25, 0.5, 0.9][trial % 4]
            leave_out = [f"r{trial * 7}", f"r{trial * 7 + 2}"]
            min_score = 0.1 if trial % 3 == 0 else None
            top_k, pool = 6, 60
            candidates = await store.query(
                "", query, top_k=pool + 2, condition=condition, include_values=True,
                include_metadata=False,
            )  # fmt: skip
            ranked = _ranked(candidates, min_score, set(leave_out))[:pool]
            expected = diversify(query, [Pick(r) for r in ranked], lam, top_k)
            found = await store.query_diverse(
                "", query, top_k=top_k, pool=pool, lam=lam, condition=condition,
                min_score=min_score, leave_out=leave_out, include_values=True,
                include_metadata=True, max_bytes=None if trial % 2 else 2_000,
            )  # fmt: skip
            assert [m.id for m in found] == [p.record.id for p in expected], (trial, lam)
            for match, pick in zip(found, expected, strict=True):
                assert match.score == pytest.approx(pick.record.score, abs=1e-6)
                assert match.metadata == {"half": 0.0}
                assert match.values is not None
                assert np.array_equal(match.values, vectors[int(match.id[1:])])
        with pytest.raises(ReplyTooLarge):
            await store.query_diverse(
                "", vectors[0], top_k=6, pool=60, lam=0.5, condition=None, min_score=None,
                leave_out=[], include_values=True, include_metadata=True, max_bytes=200,
            )  # fmt: skip
    finally:
        await store.close()
