"""Listing (ListRecords' store half) on every store: every record exactly once, in an
order that holds across pages, while writes go on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from search_service.domain import Listed, Record
from search_service.errors import InvalidArgument
from search_service.stores.local.store import LocalStore
from tests.support.stores import MODEL, StoreUnderTest, unit

PAGED = 2500


async def walk(
    sut: StoreUnderTest,
    namespace: str,
    *,
    limit: int,
    prefix: str = "",
    include_values: bool = False,
    include_metadata: bool = False,
    between_pages: Callable[[], Awaitable[None]] | None = None,
) -> list[list[Listed]]:
    """Every page of one listing, following the cursors to the end."""
    pages: list[list[Listed]] = []
    cursor = ""
    while True:
        if between_pages is not None and pages:
            await between_pages()
        page = await sut.store.list_page(
            namespace,
            prefix,
            limit=limit,
            cursor=cursor,
            include_values=include_values,
            include_metadata=include_metadata,
        )
        assert len(page.records) <= limit
        assert len(page.resume) == len(page.records)
        if not page.records:
            assert page.cursor == ""
            break
        pages.append(page.records)
        cursor = page.cursor
        if not cursor:
            break
    return pages


async def fill(sut: StoreUnderTest, namespace: str, count: int, *, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    ids = [f"img-{i % 10}/{i:05d}" for i in range(count)]
    vectors = unit(rng, count)
    for start in range(0, count, 500):
        await sut.upsert(
            namespace,
            [
                Record(ids[i], vectors[i], {"n": i, "even": i % 2 == 0})
                for i in range(start, min(start + 500, count))
            ],
        )
    await sut.settle()
    return ids


@pytest.mark.slow
async def test_paging_through_2500_records_lists_each_once_in_the_same_order(
    sut: StoreUnderTest,
) -> None:
    ids = await fill(sut, "paged", PAGED)
    orders = []
    for limit in (1, 7, 1000):
        pages = await walk(sut, "paged", limit=limit)
        listed = [r.id for page in pages for r in page]
        assert sorted(listed) == sorted(ids), limit
        assert len(set(listed)) == len(listed)
        assert all(len(page) == limit for page in pages[:-1])
        assert len(pages) == -(-PAGED // limit)
        orders.append(listed)
    # One order, whatever the page size.
    assert orders[0] == orders[1] == orders[2]


async def test_prefix_lists_only_the_ids_that_start_with_it(sut: StoreUnderTest) -> None:
    ids = await fill(sut, "pre", 300)
    for prefix in ("img-3/", "img-3/0013", "img-", "nothing-"):
        pages = await walk(sut, "pre", limit=7, prefix=prefix)
        listed = [r.id for page in pages for r in page]
        assert sorted(listed) == sorted(i for i in ids if i.startswith(prefix)), prefix


async def test_an_empty_or_unknown_namespace_lists_nothing_and_namespaces_stay_apart(
    sut: StoreUnderTest,
) -> None:
    assert await walk(sut, "", limit=10) == []
    await fill(sut, "", 12)
    await fill(sut, "other", 5, seed=1)
    assert len([r for page in await walk(sut, "", limit=5) for r in page]) == 12
    assert len([r for page in await walk(sut, "other", limit=5) for r in page]) == 5
    assert await walk(sut, "never-written", limit=10) == []


async def test_values_and_metadata_come_with_the_listing_when_asked(sut: StoreUnderTest) -> None:
    await fill(sut, "full", 40)
    shadow = sut.shadow["full"]
    bare = [r for page in await walk(sut, "full", limit=16) for r in page]
    assert all(r.values is None and r.metadata is None for r in bare)
    full = [
        r
        for page in await walk(sut, "full", limit=16, include_values=True, include_metadata=True)
        for r in page
    ]
    assert [r.id for r in full] == [r.id for r in bare]
    for record in full:
        assert record.values is not None
        assert record.metadata is not None
        np.testing.assert_array_equal(record.values, shadow[record.id].values)
        assert record.metadata == shadow[record.id].metadata


async def test_a_cursor_resumes_after_any_record_of_a_page(sut: StoreUnderTest) -> None:
    """A caller may hand out part of a page (ListRecords cuts pages to fit a reply)."""
    await fill(sut, "cut", 250)
    whole = [r.id for page in await walk(sut, "cut", limit=1000) for r in page]
    page = await sut.store.list_page(
        "cut", "", limit=150, cursor="", include_values=False, include_metadata=False
    )
    for i in (0, 48, 99, 100, 148):
        rest = await sut.store.list_page(
            "cut", "", limit=1000, cursor=page.resume[i], include_values=False,
            include_metadata=False,
        )  # fmt: skip
        assert [r.id for r in rest.records] == whole[i + 1 :], i


async def test_a_cursor_the_store_did_not_make_is_invalid_argument(sut: StoreUnderTest) -> None:
    await fill(sut, "bad", 3)
    for cursor in ("not-a-cursor", "[1, 2]", "{}"):
        with pytest.raises(InvalidArgument) as caught:
            await sut.store.list_page(
                "bad", "", limit=10, cursor=cursor, include_values=False, include_metadata=False
            )
        assert caught.value.field == "page_token"


@pytest.mark.slow
async def test_records_present_throughout_are_listed_once_while_writes_go_on(
    sut: StoreUnderTest,
) -> None:
    stable = await fill(sut, "busy", 600)
    rng = np.random.default_rng(7)
    doomed = [f"{h:08x}" for h in rng.integers(0, 2**32, 300)]
    await sut.upsert("busy", [Record(i, v) for i, v in zip(doomed, unit(rng, 300), strict=True)])
    await sut.settle()
    written: set[str] = set()
    rounds = 0

    async def churn() -> None:
        # Between every two pages: new ids spread over the whole order (some land
        # behind the cursor, some ahead), deletions, and overwrites of stable records.
        nonlocal rounds
        fresh = [f"{h:08x}" for h in rng.integers(0, 2**32, 5)]
        vectors = unit(rng, 5)
        await sut.store.upsert("busy", [Record(i, v) for i, v in zip(fresh, vectors, strict=True)])
        written.update(fresh)
        await sut.store.delete_ids("busy", doomed[rounds * 2 : rounds * 2 + 2])
        await sut.store.upsert("busy", [Record(stable[(rounds * 37) % 600], unit(rng, 1)[0])])
        rounds += 1

    pages = await walk(sut, "busy", limit=7, between_pages=churn)
    listed = [r.id for page in pages for r in page]
    assert len(listed) == len(set(listed)), "a record was listed twice"
    assert set(stable) <= set(listed), "a record present throughout was missed"
    assert set(listed) <= set(stable) | set(doomed) | written
    assert rounds > 100
    assert 0 < len(written & set(listed)) < len(written), "new ids fell on both sides"


async def test_a_local_listing_continues_across_an_index_build_and_swap(tmp_path: Path) -> None:
    """The cursor is a point id, which the built shard keeps: the swap moves nothing."""
    store = LocalStore(tmp_path / "data", index_threshold=200)
    await store.open()
    await store.bind(MODEL)
    sut = StoreUnderTest("local", store)
    try:
        ids = await fill(sut, "", 150)
        first = await store.list_page(
            "", "", limit=50, cursor="", include_values=False, include_metadata=False
        )
        await fill(sut, "", 300, seed=1)  # overwrites the 150, adds 150: a build starts
        await store.wait_for_index_build()
        assert store.index_status()[0] > 0, "no index was built"
        rest = await walk_from(sut, first.cursor, limit=50)
        listed = [r.id for r in first.records] + rest
        assert len(listed) == len(set(listed))
        assert set(ids) <= set(listed)
    finally:
        await store.close()


async def walk_from(sut: StoreUnderTest, cursor: str, *, limit: int) -> list[str]:
    listed: list[str] = []
    while cursor:
        page = await sut.store.list_page(
            "", "", limit=limit, cursor=cursor, include_values=False, include_metadata=False
        )
        listed += [r.id for r in page.records]
        cursor = page.cursor
    return listed
