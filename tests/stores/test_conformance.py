"""One suite every store passes: same records in, same answers out as the reference.

Runs on `local`, on `pinecone` against the stand-in, and on live Pinecone when
PINECONE_API_KEY is set (see conftest.py).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search_service.domain import Record
from search_service.filters import Metadata, matches, parse_filter, validate_metadata
from tests.support.pinecone_standin import evaluate
from tests.support.stores import StoreUnderTest, open_store, unit

# Every metadata type and the shapes filters must tell apart: a list (and an empty
# one), missing fields, whole and fractional numbers, a string that looks like one.
CATALOG: dict[str, dict[str, Any]] = {
    "a": {"color": "red", "size": 1, "tags": ["x", "y"], "flag": True},
    "b": {"color": "green", "size": 2.5, "tags": ["y"], "flag": False},
    "c": {"color": "blue", "size": 3, "tags": []},
    "d": {"color": "red", "tags": ["z"]},
    "e": {"size": 2},
    "f": {},
    "g": {"color": "Red", "size": -1, "flag": True, "tags": ["x"]},
    "h": {"color": "1", "size": 1.0},
}

FILTERS: list[dict[str, Any]] = [
    {"color": "red"},
    {"color": {"$eq": "red"}},
    {"color": {"$ne": "red"}},
    {"size": {"$gt": 1}},
    {"size": {"$gte": 1}},
    {"size": {"$lt": 2.5}},
    {"size": {"$lte": 2.5}},
    {"size": {"$gt": 0, "$lt": 3}},
    {"color": {"$in": ["red", "blue"]}},
    {"color": {"$nin": ["red", "blue"]}},
    {"color": {"$in": ["red", 1]}},
    {"tags": "y"},
    {"tags": {"$in": ["x", "z"]}},
    {"tags": {"$nin": ["x"]}},
    {"tags": {"$ne": "y"}},
    {"tags": {"$exists": True}},
    {"size": {"$exists": True}},
    {"size": {"$exists": False}},
    {"flag": True},
    {"flag": {"$ne": True}},
    {"flag": 1},
    {"size": 1},
    {"size": 1.0},
    {"size": {"$in": [1, 2]}},
    {"size": {"$nin": [1, 2]}},
    {"size": {"$ne": 1}},
    {"color": 1},
    {"color": "1"},
    {"color": "red", "size": {"$lte": 1}},
    {"$and": [{"color": "red"}, {"tags": "x"}]},
    {"$or": [{"color": "red"}, {"size": {"$gt": 2}}]},
    {"$or": [{"size": {"$exists": False}}, {"flag": False}]},
    {"$and": [{"$or": [{"tags": "x"}, {"tags": "z"}]}, {"size": {"$ne": -1}}]},
]


async def fill_catalog(sut: StoreUnderTest, namespace: str = "catalog", seed: int = 1) -> None:
    vectors = unit(np.random.default_rng(seed), len(CATALOG))
    await sut.upsert(
        namespace,
        [
            Record(record_id, vector, validate_metadata(metadata))
            for (record_id, metadata), vector in zip(CATALOG.items(), vectors, strict=True)
        ],
    )
    await sut.settle()


async def ids_matching(sut: StoreUnderTest, raw: dict[str, Any]) -> set[str]:
    found = await sut.query("catalog", unit(np.random.default_rng(0))[0], top_k=100,
                            raw_filter=raw)  # fmt: skip
    return {m.id for m in found}


async def test_upsert_overwrites_the_values_and_replaces_the_metadata(sut: StoreUnderTest) -> None:
    first, second = unit(np.random.default_rng(2), 2)
    await sut.upsert("", [Record("r", first, {"color": "red", "size": 1.0})])
    await sut.upsert("", [Record("r", second, {"shape": "round"})])
    await sut.settle()
    [record] = await sut.store.fetch("", ["r"])
    np.testing.assert_allclose(record.values, second, atol=1e-6)
    assert record.metadata == {"shape": "round"}
    assert (await sut.store.stats()).namespaces == {"": 1}
    [best] = await sut.query("", second, top_k=1, include_metadata=True)
    assert (best.id, best.metadata) == ("r", {"shape": "round"})
    assert best.score == pytest.approx(1.0, abs=1e-5)


async def test_fetch_answers_in_the_order_asked_and_leaves_out_missing_ids(
    sut: StoreUnderTest,
) -> None:
    await fill_catalog(sut)
    found = await sut.store.fetch("catalog", ["h", "missing", "a", "h", "c"])
    assert [r.id for r in found] == ["h", "a", "c"]
    for record in found:
        stored = sut.shadow["catalog"][record.id]
        np.testing.assert_allclose(record.values, stored.values, atol=1e-6)
        assert record.metadata == stored.metadata
    assert await sut.store.fetch("catalog", ["nothing", "here"]) == []
    assert await sut.store.fetch("no-such-namespace", ["a"]) == []


async def test_delete_by_ids_by_filter_and_all(sut: StoreUnderTest) -> None:
    await fill_catalog(sut)
    await fill_catalog(sut, "other")
    await sut.delete_ids("catalog", ["a", "not-stored"])
    await sut.delete_where("catalog", {"color": {"$in": ["red", "blue"]}})
    await sut.settle()
    assert sorted(sut.shadow["catalog"]) == ["b", "e", "f", "g", "h"]
    assert (await sut.store.stats()).namespaces == {"catalog": 5, "other": 8}
    assert {r.id for r in await sut.store.fetch("catalog", list(CATALOG))} == set(
        sut.shadow["catalog"]
    )
    await sut.delete_all("catalog")
    # Deleting in a namespace that does not exist (any more) is not an error.
    await sut.store.delete_all("catalog")
    await sut.store.delete_ids("never-used", ["a"])
    await sut.store.delete_where("never-used", parse_filter({"color": "red"}))  # type: ignore[arg-type]
    await sut.settle()
    assert (await sut.store.stats()).namespaces == {"other": 8}
    assert await sut.store.fetch("catalog", list(CATALOG)) == []


async def test_namespaces_hold_separate_records_under_the_same_ids(sut: StoreUnderTest) -> None:
    rng = np.random.default_rng(3)
    left, right = unit(rng, 2)
    await sut.upsert("", [Record("same", left, {"side": "default"})])
    await sut.upsert("right", [Record("same", right, {"side": "right"})])
    await sut.settle()
    assert (await sut.store.stats()).namespaces == {"": 1, "right": 1}
    [in_default] = await sut.query("", right, top_k=5, include_metadata=True)
    [in_right] = await sut.query("right", right, top_k=5, include_metadata=True)
    assert in_default.metadata == {"side": "default"}
    assert in_right.metadata == {"side": "right"}
    assert in_right.score == pytest.approx(1.0, abs=1e-5)
    assert await sut.query("empty", right, top_k=5) == []


async def test_top_k_bounds_the_answer_from_one_to_ten_thousand(sut: StoreUnderTest) -> None:
    rng = np.random.default_rng(4)
    vectors = unit(rng, 30)
    await sut.upsert("", [Record(f"r{i:02d}", v, {}) for i, v in enumerate(vectors)])
    await sut.settle()
    query = unit(rng)[0]
    for top_k in (1, 7, 30, 31, 10_000):
        await sut.assert_query_matches_reference("", query, top_k=top_k)
    assert len(await sut.query("", query, top_k=10_000)) == 30


async def test_every_filter_operator_matches_the_reference_evaluator(sut: StoreUnderTest) -> None:
    await fill_catalog(sut)
    query = unit(np.random.default_rng(5))[0]
    for raw in FILTERS:
        await sut.assert_query_matches_reference("catalog", query, top_k=100, raw_filter=raw)


async def test_pinecone_semantics_for_lists_missing_fields_and_numbers(
    sut: StoreUnderTest,
) -> None:
    await fill_catalog(sut)
    # $ne/$nin never match a record that lacks the field.
    assert await ids_matching(sut, {"size": {"$ne": 1}}) == {"b", "c", "e", "g"}
    assert await ids_matching(sut, {"size": {"$nin": [1, 2]}}) == {"b", "c", "g"}
    # A list matches $eq/$in when any element does, $ne/$nin when none does; [] is present.
    assert await ids_matching(sut, {"tags": "y"}) == {"a", "b"}
    assert await ids_matching(sut, {"tags": {"$ne": "y"}}) == {"c", "d", "g"}
    assert await ids_matching(sut, {"tags": {"$exists": True}}) == {"a", "b", "c", "d", "g"}
    # Numbers compare as floats; a string or a boolean never equals a number.
    assert await ids_matching(sut, {"size": 1}) == {"a", "h"}
    assert await ids_matching(sut, {"size": {"$in": [2.0]}}) == {"e"}
    assert await ids_matching(sut, {"color": 1}) == set()
    assert await ids_matching(sut, {"flag": 1}) == set()
    # Strings compare exactly.
    assert await ids_matching(sut, {"color": "red"}) == {"a", "d"}


async def test_values_and_metadata_come_back_as_stored_with_cosine_scores(
    sut: StoreUnderTest,
) -> None:
    await fill_catalog(sut)
    query = unit(np.random.default_rng(6))[0]
    found = await sut.query("catalog", query, top_k=3, include_values=True,
                            include_metadata=True)  # fmt: skip
    for match in found:
        stored = sut.shadow["catalog"][match.id]
        assert match.values is not None
        np.testing.assert_allclose(match.values, stored.values, atol=1e-6)
        assert match.metadata == stored.metadata
        assert match.score == pytest.approx(float(np.dot(stored.values, query)), abs=1e-5)
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    bare = await sut.query("catalog", query, top_k=3)
    assert all(m.values is None and m.metadata is None for m in bare)


async def test_metadata_is_sized_as_utf8_json_so_24_kb_of_non_ascii_text_is_stored(
    sut: StoreUnderTest,
) -> None:
    text = "é漢字🙂" * 2_000  # 24,000 UTF-8 bytes; 60,000 as ASCII-escaped JSON
    assert len(text.encode()) == 24_000
    record = Record("unicode", unit(np.random.default_rng(3))[0], {"text": text, ODD: "x"})
    await sut.upsert("unicode", [record])
    await sut.settle()
    (fetched,) = await sut.store.fetch("unicode", ["unicode"])
    assert fetched.metadata == {"text": text, ODD: "x"}
    await sut.assert_query_matches_reference(
        "unicode", record.values, top_k=5, raw_filter={ODD: {"$eq": "x"}}
    )


ODD = 'quote" back\\slash dot.ted [0] spaced ü'


# Doubles that qdrant-edge-py 0.9.0 reads back up to 2 ULP off, beside ones it keeps.
AWKWARD_NUMBERS = [2.6266540334837103e-23, 0.1 * 3, 1 / 3, -7.000000000000001, 1e300, 19.99, 3.0]


async def test_numbers_are_stored_and_compared_exactly_as_64_bit_floats(
    sut: StoreUnderTest,
) -> None:
    rng = np.random.default_rng(9)
    values = unit(rng, len(AWKWARD_NUMBERS))
    records = [
        Record(f"n{i}", values[i], {"x": number}) for i, number in enumerate(AWKWARD_NUMBERS)
    ]
    await sut.upsert("numbers", records)
    await sut.settle()
    fetched = await sut.store.fetch("numbers", [r.id for r in records])
    assert [r.metadata["x"] for r in fetched] == AWKWARD_NUMBERS  # bit for bit
    query = unit(rng)[0]
    for number in AWKWARD_NUMBERS:
        for bound in (math.nextafter(number, -math.inf), number, math.nextafter(number, math.inf)):
            for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
                await sut.assert_query_matches_reference(
                    "numbers", query, top_k=100, raw_filter={"x": {op: bound}}
                )
        await sut.assert_query_matches_reference(
            "numbers", query, top_k=100, raw_filter={"x": {"$in": [number, 5.0]}}
        )


# --- generated metadata and filters ----------------------------------------------------

# Keys with every character Pinecone accepts that a JSON path would misread.
COLOR, SIZE, TAGS, FLAG = "color", 'si"ze', "tags.list[0]", "fl\\ag ü"
KEYS = [COLOR, SIZE, TAGS, FLAG]
COLORS = ["red", "green", "blue", "1"]
NUMBERS = [-1, 0, 1, 1.0, 2, 2.5]


def metadata_values(key: str) -> st.SearchStrategy[Any]:
    return {
        COLOR: st.sampled_from(COLORS),
        SIZE: st.sampled_from(NUMBERS),
        TAGS: st.lists(st.sampled_from(COLORS), max_size=3, unique=True),
        FLAG: st.booleans(),
    }[key]


metadata_st = st.fixed_dictionaries({}, optional={key: metadata_values(key) for key in KEYS}).map(
    validate_metadata
)

scalar_st = st.one_of(st.sampled_from(COLORS), st.sampled_from(NUMBERS), st.booleans())
number_st = st.sampled_from(NUMBERS)
members_st = st.lists(st.one_of(st.sampled_from(COLORS), number_st), min_size=1, max_size=3)

leaf_st = st.builds(
    lambda key, op_operand: {key: dict([op_operand])},
    st.sampled_from([*KEYS, "absent"]),
    st.one_of(
        st.tuples(st.sampled_from(["$eq", "$ne"]), scalar_st),
        st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), number_st),
        st.tuples(st.sampled_from(["$in", "$nin"]), members_st),
        st.tuples(st.just("$exists"), st.booleans()),
    ),
)
filter_st = st.recursive(
    leaf_st,
    lambda children: st.one_of(
        st.builds(lambda parts: {"$and": parts}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda parts: {"$or": parts}, st.lists(children, min_size=1, max_size=3)),
    ),
    max_leaves=5,
)

_namespaces = itertools.count()


@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    metadata=st.lists(metadata_st, min_size=1, max_size=12),
    raw_filter=filter_st,
    seed=st.integers(0, 2**16),
)
async def test_generated_metadata_and_filters_match_the_reference(
    sut: StoreUnderTest, metadata: list[Metadata], raw_filter: dict[str, Any], seed: int
) -> None:
    namespace = f"gen-{next(_namespaces)}"
    rng = np.random.default_rng(seed)
    vectors = unit(rng, len(metadata))
    await sut.upsert(
        namespace,
        [Record(f"r{i}", v, m) for i, (v, m) in enumerate(zip(vectors, metadata, strict=True))],
    )
    await sut.settle()
    await sut.assert_query_matches_reference(namespace, unit(rng)[0], top_k=100,
                                             raw_filter=raw_filter)  # fmt: skip
    await sut.delete_where(namespace, raw_filter)
    await sut.settle()
    remaining = {r.id for r in await sut.store.fetch(namespace, [f"r{i}" for i in range(12)])}
    assert remaining == set(sut.shadow.get(namespace, {}))
    await sut.delete_all(namespace)


@settings(max_examples=300, deadline=None)
@given(metadata=metadata_st, raw_filter=filter_st)
def test_the_reference_evaluator_agrees_with_the_stand_ins_own(
    metadata: Metadata, raw_filter: dict[str, Any]
) -> None:
    # Two evaluators written apart from each other, both from Pinecone's documentation.
    assert matches(parse_filter(raw_filter), metadata) == evaluate(raw_filter, metadata)


# --- both stores, side by side -----------------------------------------------------------


async def test_both_stores_give_identical_ids_in_identical_order_on_the_same_data(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(7)
    labels = ["cat", "dog", "seal", "owl"]
    records = [
        Record(f"img-{i:03d}", v, {"label": labels[i % 4], "n": float(i % 10)})
        for i, v in enumerate(unit(rng, 200))
    ]
    queries = unit(rng, 12)
    filters: list[dict[str, Any] | None] = [
        None, {"label": "seal"}, {"n": {"$gte": 5}}, {"label": {"$nin": ["cat", "dog"]}},
    ]  # fmt: skip
    answers: dict[str, list[list[tuple[str, float]]]] = {}
    for kind in ("local", "pinecone-standin"):
        async for store in open_store(kind, tmp_path / kind):
            for start in range(0, len(records), 64):
                assert await store.upsert("", records[start : start + 64]) == {}
            answers[kind] = [
                [
                    (m.id, m.score)
                    for m in await store.query(
                        "",
                        q,
                        top_k=25,
                        condition=parse_filter(f),
                        include_values=False,
                        include_metadata=False,
                    )
                ]
                for q in queries
                for f in filters
            ]
    local, pinecone = answers["local"], answers["pinecone-standin"]
    assert [[i for i, _ in a] for a in local] == [[i for i, _ in a] for a in pinecone]
    for a, b in zip(local, pinecone, strict=True):
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
