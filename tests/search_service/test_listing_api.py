"""ListRecords over gRPC, on each store and through each client: page tokens, limits,
replies cut to the message size, and the model check of imported vectors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from imagesearch_client import (
    FailedPrecondition,
    ImageSearchClient,
    InvalidArgument,
    RecordPage,
    VectorRecord,
)

from search_service.app import SearchApp
from tests.support.fixtures import StartSearch
from tests.support.stack import AnyClient, InThread


async def every_page(client: AnyClient, **options: Any) -> list[RecordPage]:
    return [page async for page in client.iter_pages(**options)]


@pytest.fixture
async def dimension(search_app: SearchApp) -> int:
    model = await search_app.embed.model_info()
    return model.dimension


async def fill(client: AnyClient, dimension: int, count: int, namespace: str = "") -> list[str]:
    rng = np.random.default_rng(count)
    records = [
        VectorRecord(
            f"rec-{i:04d}", rng.normal(size=dimension).tolist(), {"i": i, "odd": i % 2 == 1}
        )
        for i in range(count)
    ]
    for start in range(0, count, 500):
        outcomes = await client.upsert_vectors(records[start : start + 500], namespace=namespace)
        assert all(o.ok for o in outcomes)
    return [r.id for r in records]


async def test_pages_list_every_record_once_with_metadata_and_values_when_asked(
    client: AnyClient, dimension: int
) -> None:
    ids = await fill(client, dimension, 230, namespace="ns")
    pages = await every_page(client, namespace="ns", page_size=100)
    assert [len(p.ids) for p in pages] == [100, 100, 30]
    assert all(p.records == [] for p in pages)
    assert pages[-1].next_page_token == ""
    listed = [i for p in pages for i in p.ids]
    assert sorted(listed) == ids
    detailed = await every_page(
        client, namespace="ns", page_size=64, include_metadata=True, include_values=True
    )
    records = [r for p in detailed for r in p.records]
    assert [r.id for r in records] == listed  # the same order, whatever the page size
    fetched = {r.id: r for r in await client.fetch(listed[:50], namespace="ns")}
    for record in records[:50]:
        assert record.values == fetched[record.id].values
        assert (
            record.metadata
            == fetched[record.id].metadata
            == {
                "i": float(int(record.id[4:])),
                "odd": int(record.id[4:]) % 2 == 1,
            }
        )
    prefixed = await every_page(client, namespace="ns", prefix="rec-01", page_size=7)
    assert sorted(i for p in prefixed for i in p.ids) == [i for i in ids if i.startswith("rec-01")]
    assert await every_page(client, namespace="empty") == [RecordPage([], [], "")]


async def test_bad_tokens_sizes_and_prefixes_are_invalid_argument_naming_the_field(
    client: AnyClient, dimension: int
) -> None:
    await fill(client, dimension, 30, namespace="a")
    first = await client.list_records(namespace="a", page_size=10)
    assert first.next_page_token
    cases = [
        ({"namespace": "a", "page_token": "garbage!"}, "page_token"),
        ({"namespace": "a", "page_token": first.next_page_token[:-3]}, "page_token"),
        ({"namespace": "b", "page_token": first.next_page_token}, "page_token"),
        ({"namespace": "a", "prefix": "r", "page_token": first.next_page_token}, "page_token"),
        ({"namespace": "a", "page_size": 1001}, "page_size"),
        ({"namespace": "a", "page_size": -1}, "page_size"),
        ({"namespace": "a", "prefix": "bad\nprefix"}, "prefix"),
        ({"namespace": "a", "prefix": "x" * 513}, "prefix"),
    ]
    for options, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            await client.list_records(**options)  # type: ignore[arg-type]
        assert field in caught.value.fields, (options, caught.value)
    # The service kept serving, and page_size 0 means 100.
    assert len((await client.list_records(namespace="a", page_size=0)).ids) == 30


async def test_vectors_of_another_model_fingerprint_are_refused_and_nothing_is_stored(
    client: AnyClient, dimension: int
) -> None:
    record = VectorRecord("x", [1.0] * dimension)
    with pytest.raises(FailedPrecondition) as caught:
        await client.upsert_vectors([record], model_fingerprint="0" * 32)
    assert caught.value.reason == "MODEL_MISMATCH"
    assert (await client.stats()).total == 0
    running = (await client.stats()).model_fingerprint
    outcomes = await client.upsert_vectors([record], model_fingerprint=running)
    assert [o.ok for o in outcomes] == [True]


async def test_a_page_that_would_overflow_the_reply_is_cut_and_the_rest_follows(
    start_search_app: StartSearch,
) -> None:
    app = await start_search_app(max_message_mb=1)
    model = await app.embed.model_info()
    rng = np.random.default_rng(3)
    # 40 records of ~30 KB metadata: 1.2 MB in all, over the 1 MiB reply limit.
    records = [
        VectorRecord(f"big-{i:02d}", rng.normal(size=model.dimension).tolist(),
                     {"text": chr(65 + i % 26) * 30_000})
        for i in range(40)
    ]  # fmt: skip
    with ImageSearchClient(app.address, timeout_s=30) as sync:
        client = InThread(sync)
        for start in range(0, 40, 10):
            assert all(o.ok for o in await client.upsert_vectors(records[start : start + 10]))
        pages = await every_page(client, page_size=1000, include_metadata=True)
    assert len(pages) >= 2
    listed = [r for p in pages for r in p.records]
    assert sorted(r.id for r in listed) == [r.id for r in records]
    assert all(r.metadata["text"] == chr(65 + int(r.id[4:]) % 26) * 30_000 for r in listed)
