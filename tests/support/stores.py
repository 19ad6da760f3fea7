"""Every store under one harness: `local`, `pinecone` on the stand-in, and `pinecone`
live when PINECONE_API_KEY is set (a throwaway index, deleted afterwards).

`StoreUnderTest` writes through the store and into a shadow copy of what should be
stored; the shadow is the reference the answers are compared with (brute-force
cosine ranking, `filters.matches`). Pinecone is eventually consistent, so after
writes `settle()` waits, on the live store only, until its stats agree with the shadow.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from search_service.domain import ModelInfo, Record, ScoredRecord, Vector
from search_service.filters import Condition, matches, parse_filter
from search_service.stores.base import VectorStore
from search_service.stores.local.store import LocalStore
from search_service.stores.pinecone.store import PineconeStore
from tests.support.pinecone_standin import PineconeStandIn

DIMENSION = 16
MODEL = ModelInfo(model_id="tests/tiny", dimension=DIMENSION, fingerprint="f" * 32)
LIVE_SETTLE_S = 120.0

STORE_KINDS = ["local", "pinecone-standin"]
if os.environ.get("PINECONE_API_KEY"):
    STORE_KINDS.append("pinecone-live")


def unit(rng: np.random.Generator, n: int = 1, dimension: int = DIMENSION) -> Vector:
    """`n` random unit vectors, as rows."""
    vectors = rng.normal(size=(n, dimension)).astype(np.float32)
    normalized: Vector = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return normalized


class StoreUnderTest:
    def __init__(self, kind: str, store: VectorStore) -> None:
        self.kind = kind
        self.store = store
        self.shadow: dict[str, dict[str, Record]] = {}

    async def upsert(self, namespace: str, records: Sequence[Record]) -> None:
        failed = await self.store.upsert(namespace, records)
        assert failed == {}
        for record in records:
            self.shadow.setdefault(namespace, {})[record.id] = record

    async def delete_ids(self, namespace: str, ids: Sequence[str]) -> None:
        await self.store.delete_ids(namespace, ids)
        for record_id in ids:
            self.shadow.get(namespace, {}).pop(record_id, None)

    async def delete_where(self, namespace: str, raw: Mapping[str, Any]) -> None:
        condition = parse_filter(raw)
        assert condition is not None
        await self.store.delete_where(namespace, condition)
        records = self.shadow.get(namespace, {})
        for record_id in [r.id for r in records.values() if matches(condition, r.metadata)]:
            del records[record_id]

    async def delete_all(self, namespace: str) -> None:
        await self.store.delete_all(namespace)
        self.shadow.pop(namespace, None)

    def counts(self) -> dict[str, int]:
        return {ns: len(records) for ns, records in self.shadow.items() if records}

    async def settle(self) -> None:
        """Returns once the store's stats agree with the shadow (waits on live Pinecone)."""
        if self.kind != "pinecone-live":
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LIVE_SETTLE_S
        while (await self.store.stats()).namespaces != self.counts():
            assert loop.time() < deadline, "live Pinecone did not settle"
            await asyncio.sleep(1.0)

    async def query(
        self,
        namespace: str,
        vector: np.ndarray,
        *,
        top_k: int = 10,
        raw_filter: Mapping[str, Any] | None = None,
        include_values: bool = False,
        include_metadata: bool = False,
    ) -> list[ScoredRecord]:
        return await self.store.query(
            namespace,
            vector,
            top_k=top_k,
            condition=parse_filter(raw_filter),
            include_values=include_values,
            include_metadata=include_metadata,
        )

    def reference(
        self, namespace: str, vector: np.ndarray, *, top_k: int = 10, condition: Condition | None
    ) -> list[tuple[str, float]]:
        """Brute force: cosine of every matching record, best first, ties by id."""
        scored = [
            (r.id, float(np.dot(r.values, vector)))
            for r in self.shadow.get(namespace, {}).values()
            if matches(condition, r.metadata)
        ]
        return sorted(scored, key=lambda s: (-s[1], s[0]))[:top_k]

    async def assert_query_matches_reference(
        self,
        namespace: str,
        vector: np.ndarray,
        *,
        top_k: int = 10,
        raw_filter: Mapping[str, Any] | None = None,
    ) -> None:
        found = await self.query(namespace, vector, top_k=top_k, raw_filter=raw_filter)
        expected = self.reference(namespace, vector, top_k=top_k,
                                  condition=parse_filter(raw_filter))  # fmt: skip
        assert [m.id for m in found] == [i for i, _ in expected], raw_filter
        np.testing.assert_allclose([m.score for m in found], [s for _, s in expected], atol=1e-5)


async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[VectorStore]:
    store: VectorStore
    if kind == "local":
        # Above the data size: every query is exact, as the reference is.
        store = LocalStore(tmp_path / "data", index_threshold=1_000_000)
        await store.open()
        await store.bind(MODEL)
        yield store
        await store.close()
    elif kind == "pinecone-standin":
        with PineconeStandIn() as server:
            store = PineconeStore(api_key=server.api_key, index_name="conformance", host=server.url)
            await store.open()
            await store.bind(MODEL)
            yield store
            await store.close()
    else:
        name = f"imagesearch-test-{uuid.uuid4().hex[:12]}"
        store = PineconeStore(
            api_key=os.environ["PINECONE_API_KEY"],
            index_name=name,
            host=os.environ.get("PINECONE_HOST") or None,
            cloud=os.environ.get("PINECONE_CLOUD", "aws"),
            region=os.environ.get("PINECONE_REGION", "us-east-1"),
        )
        await store.open()
        try:
            await store.bind(MODEL)
            yield store
        finally:
            await store.close()
            from pinecone import PineconeAsyncio

            async with PineconeAsyncio(host=os.environ.get("PINECONE_HOST") or None) as pc:
                await pc.delete_index(name, timeout=-1)


@pytest.fixture(params=STORE_KINDS)
async def sut(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreUnderTest]:
    async for store in open_store(request.param, tmp_path):
        yield StoreUnderTest(request.param, store)
