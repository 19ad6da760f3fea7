"""SearchService over gRPC on each store (local, and Pinecone through the stand-in):
real servers, tiny CLIP, temp DATA_DIR."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from imagesearch_client import (
    AsyncImageSearchClient,
    FailedPrecondition,
    ImageRecord,
    ImageSearchClient,
    InvalidArgument,
    NotFound,
    VectorRecord,
)

from search_service.app import SearchApp
from search_service.domain import ModelInfo
from search_service.filters import matches, parse_filter
from search_service.stores.local.store import LocalStore
from tests.support.fixtures import StartSearch
from tests.support.imagegen import CLASSES, encode, picture
from tests.support.stack import AnyClient, InThread


def labelled_images(per_class: int = 4) -> list[ImageRecord]:
    return [
        ImageRecord(
            image=encode(picture(colour, shape=shape), "PNG"),
            metadata={"label": colour, "shape": float(shape)},
        )
        for colour in CLASSES
        for shape in range(per_class)
    ]


@pytest.fixture
async def stored(client: AnyClient) -> list[ImageRecord]:
    records = labelled_images()
    outcomes = await client.upsert_images(records)
    assert all(o.ok for o in outcomes)
    return records


async def test_a_stored_image_comes_back_first_by_its_bytes_and_by_its_id(
    client: AnyClient, stored: list[ImageRecord]
) -> None:
    target = stored[5]
    by_bytes = await client.query(image=target.image, top_k=3)
    target_id = (await client.upsert_images([target]))[0].id
    by_id = await client.query(id=target_id, top_k=3)
    for found in (by_bytes, by_id):
        assert found[0].id == target_id
        assert found[0].score >= 0.999
        assert found[0].metadata == dict(target.metadata)


async def test_a_label_filter_returns_exactly_what_brute_force_search_returns(
    client: AnyClient, stored: list[ImageRecord]
) -> None:
    ids = [o.id for o in await client.upsert_images(stored)]
    records = await client.fetch(ids)
    vectors = np.asarray([r.values for r in records], dtype=np.float32)
    blend = vectors[0] + vectors[7]
    query_vector = blend / np.linalg.norm(blend)
    for raw in ({"label": "blue"}, {"shape": {"$gte": 2}}, {"label": {"$nin": ["red", "blue"]}}):
        condition = parse_filter(raw)
        found = await client.query(vector=query_vector.tolist(), top_k=100, filter=raw)
        keep = [i for i, r in enumerate(records) if matches(condition, r.metadata)]
        assert keep, raw
        assert all(matches(condition, m.metadata) for m in found)
        assert {m.id for m in found} == {records[i].id for i in keep}
        scores = {m.id: m.score for m in found}
        for i in keep:
            # Stored vectors are unit length: a score is the dot product with the query.
            assert scores[records[i].id] == pytest.approx(
                float(vectors[i] @ query_vector), abs=1e-5
            )
        ranked = sorted(keep, key=lambda i: -float(vectors[i] @ query_vector))
        assert [m.id for m in found] == [records[i].id for i in ranked]


async def test_top_k_min_score_and_namespaces_bound_the_answer(
    client: AnyClient, stored: list[ImageRecord], search_app: SearchApp
) -> None:
    query = stored[0].image
    assert len(await client.query(image=query, top_k=5)) == 5
    everything = await client.query(image=query, top_k=100)
    assert len(everything) == len(stored)
    assert [m.score for m in everything] == sorted((m.score for m in everything), reverse=True)
    cutoff = everything[3].score
    above = await client.query(image=query, top_k=100, min_score=cutoff)
    assert [m.id for m in above] == [m.id for m in everything if m.score >= cutoff]
    await client.upsert_images(stored[:2], namespace="other")
    assert {m.id for m in await client.query(image=query, top_k=100, namespace="other")} == {
        o.id for o in await client.upsert_images(stored[:2], namespace="other")
    }
    stats = await client.stats()
    assert stats.namespaces == {"__default__": len(stored), "other": 2}
    assert stats.total == len(stored) + 2
    assert stats.store == search_app.store.name
    assert stats.dimension == len((await client.fetch([everything[0].id]))[0].values)


async def test_storing_the_same_images_again_adds_nothing(
    client: AnyClient, stored: list[ImageRecord]
) -> None:
    before = (await client.stats()).total
    again = await client.upsert_images(stored)
    assert all(o.ok for o in again)
    assert (await client.stats()).total == before == len({o.id for o in again})


async def test_an_unreadable_image_is_reported_and_the_rest_of_the_batch_is_stored(
    client: AnyClient,
) -> None:
    good = labelled_images(per_class=1)
    batch = [good[0], ImageRecord(image=b"not an image at all", id="broken"), good[1]]
    outcomes = await client.upsert_images(batch)
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].id == "broken"
    assert outcomes[1].reason == "IMAGE_UNREADABLE"
    assert {r.id for r in await client.fetch([o.id for o in outcomes])} == {
        outcomes[0].id,
        outcomes[2].id,
    }


async def test_bad_metadata_or_ids_fail_only_their_own_item(client: AnyClient) -> None:
    image = encode(picture("cyan"), "PNG")
    outcomes = await client.upsert_images(
        [
            ImageRecord(image=image, id="ok", metadata={"tags": ["a", "b"], "n": 3}),
            ImageRecord(image=image, id="nested", metadata={"deep": {"x": 1}}),
            ImageRecord(image=image, id="é"),
        ]
    )
    assert [(o.ok, o.reason) for o in outcomes] == [
        (True, ""),
        (False, "INVALID_METADATA"),
        (False, "INVALID_ID"),
    ]
    assert (await client.fetch(["ok"]))[0].metadata == {"tags": ["a", "b"], "n": 3.0}


async def test_a_bad_filter_is_refused_with_the_field_that_is_wrong(
    client: AnyClient, stored: list[ImageRecord]
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.query(text="red", filter={"label": {"$regex": "r.*"}})
    assert caught.value.reason == "INVALID_FILTER"
    assert "filter.label.$regex" in caught.value.fields


async def test_querying_an_unknown_id_is_not_found(client: AnyClient) -> None:
    with pytest.raises(NotFound, match="nobody"):
        await client.query(id="nobody")


async def test_vectors_are_checked_stored_normalized_fetched_and_deleted(
    client: AnyClient, stored: list[ImageRecord]
) -> None:
    dimension = (await client.stats()).dimension
    vector = np.arange(1, dimension + 1, dtype=np.float32)
    outcomes = await client.upsert_vectors(
        [
            VectorRecord("v1", vector.tolist(), {"kind": "mine"}),
            VectorRecord("short", [1.0, 2.0]),
            VectorRecord("zero", [0.0] * dimension),
        ]
    )
    assert [(o.ok, o.reason) for o in outcomes] == [
        (True, ""),
        (False, "INVALID_VECTOR"),
        (False, "INVALID_VECTOR"),
    ]
    fetched = await client.fetch(["missing", "v1"])
    assert [r.id for r in fetched] == ["v1"]
    np.testing.assert_allclose(fetched[0].values, vector / np.linalg.norm(vector), rtol=1e-5)
    top = await client.query(vector=(vector * 3).tolist(), top_k=1)
    assert top[0].id == "v1"
    assert top[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InvalidArgument, match=f"have {dimension}"):
        await client.query(vector=[1.0, 2.0])

    total = (await client.stats()).total
    await client.delete(ids=["v1", "never-stored"])
    assert await client.fetch(["v1"]) == []
    await client.delete(filter={"label": "red"})
    assert (await client.stats()).total == total - 1 - 4
    assert all(m.metadata["label"] != "red" for m in await client.query(text="x", top_k=100))
    await client.delete(delete_all=True)
    assert (await client.stats()).namespaces == {}


async def test_equal_scores_come_back_in_id_order(client: AnyClient) -> None:
    dimension = (await client.stats()).dimension
    same = [1.0] * dimension
    near = [1.0] * (dimension - 1) + [0.5]
    records = [VectorRecord(i, same) for i in ("c", "a", "d", "b")] + [VectorRecord("n", near)]
    await client.upsert_vectors(records)
    assert [m.id for m in await client.query(vector=same, top_k=5)] == ["a", "b", "c", "d", "n"]


async def test_the_default_namespace_answers_to_its_pinecone_name(client: AnyClient) -> None:
    dimension = (await client.stats()).dimension
    vector = [1.0] * dimension
    await client.upsert_vectors([VectorRecord("d", vector)], namespace="__default__")
    assert [r.id for r in await client.fetch(["d"])] == ["d"]
    assert [m.id for m in await client.query(vector=vector, namespace="__default__")] == ["d"]
    assert (await client.stats()).namespaces == {"__default__": 1}


async def test_the_ingest_stream_answers_each_batch_once_stored(client: AnyClient) -> None:
    records = labelled_images(per_class=3)
    batches = [records[:4], records[4:8], records[8:]]
    answers = [a async for a in client.ingest(iter(batches), namespace="bulk", window=2)]
    assert [len(a) for a in answers] == [4, 4, 1]
    assert all(o.ok for a in answers for o in a)
    assert (await client.stats()).namespaces["bulk"] == len(records)


async def test_a_store_filled_by_another_model_refuses_writes_and_queries(
    start_search_app: StartSearch, tmp_path: Path
) -> None:
    data_dir = tmp_path / "other-model"

    async def fill_with_another_model() -> None:
        store = LocalStore(data_dir)
        await store.open()
        await store.bind(ModelInfo("someone/else", 64, "0123456789abcdef"))
        await store.close()

    await fill_with_another_model()
    app = await start_search_app(data_dir)
    with ImageSearchClient(app.address) as sync_client:
        c = InThread(sync_client)
        with pytest.raises(FailedPrecondition, match="someone/else") as caught:
            await c.upsert_images(labelled_images(per_class=1))
        assert caught.value.reason == "MODEL_MISMATCH"
        with pytest.raises(FailedPrecondition):
            await c.query(text="a red square")
        with pytest.raises(FailedPrecondition):
            await c.query(vector=[1.0] * 64)
        assert (await c.stats()).model_id == "someone/else"


class Endless:
    """Batches without end, counting those taken, and telling when it is closed."""

    def __init__(self, batch: list[ImageRecord]) -> None:
        self.batch, self.taken, self.closed = batch, 0, threading.Event()

    def __iter__(self) -> Iterator[list[ImageRecord]]:
        try:
            while True:
                self.taken += 1
                yield self.batch
        finally:
            self.closed.set()


async def test_ingest_takes_no_batch_once_the_caller_stops_reading_on_both_clients(
    search_app: SearchApp,
) -> None:
    batch = labelled_images(per_class=1)[:2]
    for kind in ("sync", "async"):
        source = Endless(batch)
        if kind == "sync":
            with ImageSearchClient(search_app.address) as sync_client:
                stream = sync_client.ingest(iter(source), namespace=kind, window=2)
                first = await asyncio.to_thread(next, stream)
                await asyncio.to_thread(stream.close)
        else:
            async with AsyncImageSearchClient(search_app.address) as async_client:
                astream = async_client.ingest(iter(source), namespace=kind, window=2)
                first = await anext(astream)
                await astream.aclose()
        assert [o.ok for o in first] == [True, True]
        # Closed, so it can give no more: the answered batch and a window's worth at most.
        assert await asyncio.to_thread(source.closed.wait, 10), kind
        assert source.taken <= 1 + 2 + 1, (kind, source.taken)
