"""What only the Pinecone store does: the index's life cycle, limits, errors, retries.

The real SDK talks to the stand-in (tests/pinecone_standin.py) over HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from pinecone import PineconeAsyncio
from pinecone.errors import PayloadTooLargeError

from search_service.domain import ModelInfo, Record
from search_service.errors import (
    InvalidArgument,
    ModelMismatch,
    PermissionDenied,
    StoreMisconfigured,
    Unauthenticated,
    Unavailable,
)
from search_service.filters import parse_filter
from search_service.stores.pinecone.packing import TAG_FINGERPRINT, TAG_MODEL
from search_service.stores.pinecone.store import PineconeStore
from tests.support.pinecone_standin import MAX_UPSERT_BYTES, PineconeStandIn
from tests.support.stores import MODEL, unit

WIDE = ModelInfo(model_id="openai/clip-vit-base-patch32", dimension=512, fingerprint="c" * 32)


def make_store(server: PineconeStandIn, **overrides: object) -> PineconeStore:
    options: dict[str, object] = {
        "api_key": server.api_key,
        "index_name": "clip",
        "host": server.url,
    }
    options.update(overrides)
    return PineconeStore(**options)  # type: ignore[arg-type]


@pytest.fixture
async def opened(standin: PineconeStandIn) -> AsyncIterator[PineconeStore]:
    store = make_store(standin)
    await store.open()
    await store.bind(MODEL)
    yield store
    await store.close()


async def test_a_missing_index_is_created_serverless_cosine_tagged_and_awaited() -> None:
    with PineconeStandIn(describes_until_ready=3) as server:
        store = make_store(server, cloud="gcp", region="europe-west4")
        assert await store.open() is None
        await store.bind(WIDE)
        index = server.indexes["clip"]
        assert (index.dimension, index.metric) == (512, "cosine")
        assert (index.cloud, index.region) == ("gcp", "europe-west4")
        assert index.tags == {TAG_MODEL: WIDE.model_id, TAG_FINGERPRINT: WIDE.fingerprint}
        # Created, then described until ready (the stand-in says ready on the 3rd).
        assert server.count("GET", "/indexes/clip") == 1 + 3
        await store.close()

        again = make_store(server)
        assert await again.open() == WIDE
        await again.bind(WIDE)
        await again.close()


async def test_two_services_creating_the_same_index_share_it(standin: PineconeStandIn) -> None:
    first, second = make_store(standin), make_store(standin)
    assert await first.open() is None
    assert await second.open() is None
    await first.bind(MODEL)
    await second.bind(MODEL)  # its create answers 409: it uses the index the first made
    assert second.model == MODEL
    assert standin.count("POST", "/indexes") == 2
    await first.close()
    await second.close()


async def test_the_wait_for_a_new_index_is_bounded() -> None:
    with PineconeStandIn(describes_until_ready=1_000_000) as server:
        store = make_store(server, ready_timeout_s=0.5)
        await store.open()
        with pytest.raises(Unavailable, match=r"not ready after 0 s.*PINECONE_READY_TIMEOUT_S"):
            await store.bind(MODEL)
        await store.close()


async def test_an_index_with_another_metric_or_dimension_is_refused(
    standin: PineconeStandIn,
) -> None:
    standin.create("clip", dimension=MODEL.dimension, metric="euclidean")
    store = make_store(standin)
    with pytest.raises(StoreMisconfigured, match=r"metric euclidean.*PINECONE_INDEX"):
        await store.open()
    await store.close()

    standin.create("narrow", dimension=7)
    store = make_store(standin, index_name="narrow")
    await store.open()
    with pytest.raises(StoreMisconfigured, match=r"dimension 7, but tests/tiny makes 16-d"):
        await store.bind(MODEL)
    await store.close()


async def test_an_index_of_another_model_refuses_it_and_an_empty_foreign_one_is_adopted(
    standin: PineconeStandIn,
) -> None:
    other = ModelInfo(model_id="other", dimension=MODEL.dimension, fingerprint="0" * 32)
    store = make_store(standin)
    await store.open()
    await store.bind(other)
    await store.close()
    store = make_store(standin)
    assert await store.open() == other
    with pytest.raises(ModelMismatch, match="holds vectors of other"):
        await store.bind(MODEL)
    await store.close()

    # An index made elsewhere, untagged: adopted while empty, refused once it has vectors.
    standin.create("empty", dimension=MODEL.dimension)
    store = make_store(standin, index_name="empty")
    await store.open()
    await store.bind(MODEL)
    assert standin.indexes["empty"].tags == {
        TAG_MODEL: MODEL.model_id,
        TAG_FINGERPRINT: MODEL.fingerprint,
    }
    await store.close()
    full = standin.create("full", dimension=MODEL.dimension)
    full.data[""] = {"x": (unit(np.random.default_rng(0))[0], {})}
    store = make_store(standin, index_name="full")
    await store.open()
    with pytest.raises(ModelMismatch, match="holds 1 vectors with no record of the model"):
        await store.bind(MODEL)
    await store.close()


async def test_upserts_are_split_under_1000_records_and_2_mb_and_all_land(
    standin: PineconeStandIn,
) -> None:
    store = make_store(standin)
    await store.open()
    await store.bind(WIDE)
    rng = np.random.default_rng(1)
    # 2500 wide vectors and some 30 KB metadata: both limits decide somewhere.
    records = [
        Record(f"r{i}", v, {"note": "x" * 30_000} if i % 50 == 0 else {"n": float(i)})
        for i, v in enumerate(unit(rng, 2500, 512))
    ]
    assert await store.upsert("", records) == {}
    requests = standin.count("POST", "/vectors/upsert")
    assert requests >= 2500 * 512 * 10 // MAX_UPSERT_BYTES
    assert (await store.stats()).namespaces == {"": 2500}
    fetched = await store.fetch("", ["r0", "r2499", "r1234"])
    for record in fetched:
        stored = records[int(record.id[1:])]
        # float32 values survive the shortest-repr JSON exactly.
        assert np.array_equal(record.values, stored.values)
        assert record.metadata == stored.metadata
    await store.close()


async def test_a_failed_batch_is_reported_per_record_and_the_rest_is_stored(
    standin: PineconeStandIn, backoff: list[float]
) -> None:
    store = make_store(standin)
    await store.open()
    await store.bind(WIDE)
    records = [
        Record(f"r{i}", v, {}) for i, v in enumerate(unit(np.random.default_rng(2), 900, 512))
    ]
    standin.fail("/vectors/upsert", 400, times=1)
    failed = await store.upsert("", records)
    assert failed, "one batch was refused"
    assert all(isinstance(e, InvalidArgument) for e in failed.values())
    stored = {r.id for r in await store.fetch("", [r.id for r in records])}
    assert stored == {r.id for i, r in enumerate(records) if i not in failed}
    assert 0 < len(failed) < len(records)

    # When every batch fails, the call fails.
    standin.fail("/vectors/upsert", 400, times=1)
    with pytest.raises(InvalidArgument, match="injected fault"):
        await store.upsert("", records[:3])
    await store.close()


async def test_429_and_5xx_are_retried_with_backoff_then_unavailable(
    opened: PineconeStore, standin: PineconeStandIn, backoff: list[float]
) -> None:
    vector = unit(np.random.default_rng(3))[0]
    standin.fail("/query", 503, times=2)
    assert await opened.query("", vector, top_k=3, condition=None, include_values=False,
                              include_metadata=False) == []  # fmt: skip
    assert standin.count("POST", "/query") == 3
    assert len(backoff) == 2

    standin.fail("/vectors/upsert", 429, times=100, retry_after=0.5)
    with pytest.raises(Unavailable, match="Pinecone answered 429 after retries"):
        await opened.upsert("", [Record("a", vector, {})])
    assert standin.count("POST", "/vectors/upsert") == 4
    # Retry-After is honoured (the SDK adds up to half of it as jitter).
    assert len(backoff) == 2 + 3
    assert all(0.5 <= d <= 0.75 for d in backoff[2:])


async def test_credentials_errors_name_the_variable_and_never_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "pcsk_wrong_0123456789abcdef"
    with PineconeStandIn(read_only_keys=("pcsk_readonly_0123456789",)) as server:
        store = make_store(server, api_key=secret)
        with pytest.raises(Unauthenticated, match="PINECONE_API_KEY") as refused:
            await store.open()
        await store.close()
        assert secret not in str(refused.value)

        owner = make_store(server)
        await owner.open()
        await owner.bind(MODEL)
        await owner.close()
        reader = make_store(server, api_key="pcsk_readonly_0123456789")
        await reader.open()
        await reader.bind(MODEL)
        with pytest.raises(PermissionDenied, match="PINECONE_API_KEY may not") as denied:
            await reader.upsert("", [Record("a", unit(np.random.default_rng(4))[0], {})])
        assert "pcsk_readonly" not in str(denied.value)
        await reader.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert secret not in logged
    assert "pcsk_readonly_0123456789" not in logged


async def test_a_bad_request_is_invalid_argument_and_a_missing_namespace_is_empty(
    opened: PineconeStore, standin: PineconeStandIn
) -> None:
    vector = unit(np.random.default_rng(5))[0]
    with pytest.raises(InvalidArgument, match="Pinecone refused the request"):
        await opened.query("", vector[:5], top_k=3, condition=None, include_values=False,
                           include_metadata=False)  # fmt: skip
    await opened.delete_where("nowhere", parse_filter({"a": "b"}))  # type: ignore[arg-type]
    assert await opened.fetch("nowhere", ["a"]) == []


async def test_values_of_large_answers_are_fetched_apart_to_stay_under_4_mb(
    standin: PineconeStandIn,
) -> None:
    store = make_store(standin)
    await store.open()
    await store.bind(WIDE)
    records = [
        Record(f"r{i}", v, {}) for i, v in enumerate(unit(np.random.default_rng(6), 1500, 512))
    ]
    await store.upsert("", records)
    found = await store.query("", records[0].values, top_k=1500, condition=None,
                              include_values=True, include_metadata=False)  # fmt: skip
    assert len(found) == 1500
    assert found[0].id == "r0"
    by_id = {r.id: r for r in records}
    for match in found[::97]:
        assert match.values is not None
        assert np.array_equal(match.values, by_id[match.id].values)
    # Long ids: fetches are split so each URL stays short.
    long_ids = [f"{i:04d}" + "x" * 500 for i in range(120)]
    await store.upsert("long", [Record(i, records[0].values, {}) for i in long_ids])
    assert [r.id for r in await store.fetch("long", long_ids)] == long_ids
    await store.close()


async def test_the_stand_in_rejects_what_pinecone_rejects(
    opened: PineconeStore, standin: PineconeStandIn
) -> None:
    host = standin.indexes["clip"].host
    values = [0.5] * MODEL.dimension
    async with PineconeAsyncio(api_key=standin.api_key, host=standin.url) as pc:
        index = pc.IndexAsyncio(host=host)
        with pytest.raises(PayloadTooLargeError):
            await index.upsert(
                vectors=[
                    {"id": f"r{i}", "values": values, "metadata": {"pad": "x" * 30_000}}
                    for i in range(80)
                ]
            )
        await index.close()
    # The SDK checks some of these itself; raw requests show the stand-in does too.
    refused_upserts = [
        [{"id": f"r{i}", "values": values} for i in range(1001)],
        [{"id": "nested", "values": values, "metadata": {"a": {"b": 1}}}],
        [{"id": "numbers", "values": values, "metadata": {"a": [1, 2]}}],
        [{"id": "big", "values": values, "metadata": {"a": "x" * 41_000}}],
        [{"id": "short", "values": values[:3]}],
        [{"id": "zero", "values": [0.0] * MODEL.dimension}],
        [{"id": "", "values": values}],
    ]
    refused_filters = [
        {"a": {"$regex": "x"}},
        {"a": ["x"]},
        {"a": {"$gt": "1"}},
        {"$not": {"a": 1}},
        {"a": {"$in": []}},
        {"a": {"$eq": {"b": 1}}},
    ]
    headers = {"Api-Key": standin.api_key, "X-Pinecone-Api-Version": "2026-07"}
    async with httpx.AsyncClient(base_url=host, headers=headers) as http:
        for vectors in refused_upserts:
            answer = await http.post("/vectors/upsert", json={"vectors": vectors})
            assert answer.status_code == 400, vectors[0]["id"]  # type: ignore[index]
            assert answer.json()["code"] == 3
        for bad_filter in refused_filters:
            answer = await http.post(
                "/query", json={"topK": 1, "vector": values, "filter": bad_filter}
            )
            assert answer.status_code == 400, bad_filter
        answer = await http.post("/query", json={"topK": 10_001, "vector": values})
        assert answer.status_code == 400
    assert standin.indexes["clip"].data == {}
