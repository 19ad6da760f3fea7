"""Several examples, diversity, collapse, autocut and FindDuplicates through the real
search_service, on both stores and both clients, against brute force written here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from imagesearch_client import (
    Example,
    InvalidArgument,
    NotFound,
    VectorRecord,
)

from search_service.refine import autocut
from tests.support.stack import AnyClient

Vectors = dict[str, np.ndarray]


def unit(v: np.ndarray) -> np.ndarray:
    scaled: np.ndarray = (v / np.linalg.norm(v)).astype(np.float32)
    return scaled


async def store_clusters(
    client: AnyClient, clusters: int, size: int, spread: float, seed: int = 0
) -> Vectors:
    """`clusters` groups of `size` vectors around random centres (`spread`: the noise)."""
    dimension = (await client.stats()).dimension
    rng = np.random.default_rng(seed)
    vectors: Vectors = {}
    for c in range(clusters):
        centre = rng.standard_normal(dimension)
        for k in range(size):
            noise = rng.standard_normal(dimension) * spread
            vectors[f"c{c:02d}-{k}"] = unit(centre + noise)
    records = [VectorRecord(i, v.tolist(), {"cluster": float(i[1:3])}) for i, v in vectors.items()]
    outcomes = await client.upsert_vectors(records)
    assert all(o.ok for o in outcomes)
    return vectors


def by_score(
    vectors: Vectors, query: np.ndarray, leave_out: frozenset[str] = frozenset()
) -> list[str]:
    scored = [(-float(v @ query), i) for i, v in vectors.items() if i not in leave_out]
    return [i for _, i in sorted(scored)]


async def test_examples_combine_weighted_unit_vectors_and_leave_out_their_ids(
    client: AnyClient,
) -> None:
    vectors = await store_clusters(client, clusters=6, size=5, spread=0.3)
    free = unit(np.arange(len(vectors["c00-0"]), dtype=np.float64) - 20)
    examples = [
        Example(id="c00-0"),
        Example(vector=(3 * free).tolist(), weight=0.5),  # any scale: it counts as a unit one
        Example(id="c03-1", weight=-0.4),
    ]
    query = unit(vectors["c00-0"] + 0.5 * free - 0.4 * vectors["c03-1"])
    found = await client.query(examples=examples, top_k=8)
    expected = by_score(vectors, query, leave_out=frozenset({"c00-0", "c03-1"}))[:8]
    assert [m.id for m in found] == expected
    for match in found:
        assert match.score == pytest.approx(float(vectors[match.id] @ query), abs=1e-4)


async def test_collapse_keeps_one_of_each_near_duplicate_set_and_names_the_others(
    client: AnyClient,
) -> None:
    vectors = await store_clusters(client, clusters=5, size=4, spread=0.02)
    query = vectors["c02-0"]
    found = await client.query(vector=query.tolist(), top_k=3, collapse_above=0.98)
    # Brute force: walk by score, keep unless within 0.98 of a kept one; stop at 3 kept.
    kept: list[str] = []
    collapsed: dict[str, list[str]] = {}
    for record in by_score(vectors, query):
        if len(kept) == 3:
            break
        close = [k for k in kept if float(vectors[k] @ vectors[record]) >= 0.98 - 1e-6]
        if close:
            collapsed[close[0]].append(record)
        else:
            kept.append(record)
            collapsed[record] = []
    assert [m.id for m in found] == kept
    assert {m.id: m.collapsed_ids for m in found} == collapsed
    assert len({m.id[:3] for m in found}) == 3  # one per cluster
    identical = await client.query(vector=query.tolist(), top_k=2, collapse_above=1.0)
    assert identical[0].collapsed_ids == []  # only identical vectors collapse at 1


def mmr(vectors: Vectors, query: np.ndarray, pool: list[str], lam: float, k: int) -> list[str]:
    """Maximal marginal relevance by brute force: the first the best, ties to the better."""
    chosen = [pool[0]]
    while len(chosen) < min(k, len(pool)):

        def marginal(r: str) -> float:
            near = max(float(vectors[r] @ vectors[s]) for s in chosen)
            return lam * float(vectors[r] @ query) - (1 - lam) * near

        rest = [r for r in pool if r not in chosen]
        chosen.append(max(rest, key=lambda r: (marginal(r), -pool.index(r))))
    return chosen


async def test_diversity_picks_by_maximal_marginal_relevance_over_the_pool(
    client: AnyClient,
) -> None:
    vectors = await store_clusters(client, clusters=4, size=6, spread=0.2, seed=3)
    query = vectors["c01-2"]
    found = await client.query(vector=query.tolist(), top_k=4, diversity=0.6, min_score=-1)
    assert [m.id for m in found] == mmr(vectors, query, by_score(vectors, query)[:40], 0.4, 4)
    plain = await client.query(vector=query.tolist(), top_k=4)
    assert len({m.id[:3] for m in found}) > len({m.id[:3] for m in plain})
    for match in found:  # scores stay cosines to the query
        assert match.score == pytest.approx(float(vectors[match.id] @ query), abs=1e-4)


async def test_diversity_one_half_by_a_stored_record_breaks_its_ties_to_the_higher_score(
    client: AnyClient,
) -> None:
    """By a stored record's own vector at diversity 0.5 the record is the first pick, and
    every candidate nearer to the query than to the later picks then scores exactly 0: each
    such tie goes to the higher score (the gallery's diversify toggle on a clicked image)."""
    vectors = await store_clusters(client, clusters=4, size=8, spread=0.3, seed=11)
    query = vectors["c01-3"]
    expected = mmr(vectors, query, by_score(vectors, query), 0.5, 8)
    by_id = await client.query(id="c01-3", top_k=8, diversity=0.5)
    by_vector = await client.query(vector=query.tolist(), top_k=8, diversity=0.5)
    assert [m.id for m in by_id] == expected
    assert [m.id for m in by_vector] == expected
    plain = await client.query(id="c01-3", top_k=2)
    assert expected[:2] == [m.id for m in plain]  # the second pick: a tie of all, the best


@pytest.mark.parametrize("diversity", [0.3, 0.7, 1.0])
async def test_diversity_pools_after_filter_min_score_and_id_examples(
    client: AnyClient, diversity: float
) -> None:
    """The pool holds only records that pass the filter and min_score and are not examples;
    metadata and values come with the picks."""
    vectors = await store_clusters(client, clusters=8, size=10, spread=0.6, seed=9)
    query = unit(vectors["c02-0"] + vectors["c05-3"])
    wanted = {i: v for i, v in vectors.items() if int(i[1:3]) % 2 == 0}  # the filter
    scores = {i: float(v @ query) for i, v in wanted.items()}
    ordered = sorted(scores.values())
    third = len(ordered) // 3  # a third of them under min_score, none of them at it
    floor = (ordered[third - 1] + ordered[third]) / 2
    examples = [Example(vector=query.tolist()), Example(id="c02-0", weight=1e-3)]
    query = unit(query + 1e-3 * vectors["c02-0"])
    found = await client.query(
        examples=examples, top_k=3, diversity=diversity, min_score=floor,
        filter={"cluster": {"$in": [0, 2, 4, 6]}}, include_metadata=True, include_values=True,
    )  # fmt: skip
    passing = {i: v for i, v in wanted.items() if float(v @ query) >= floor and i != "c02-0"}
    pool = by_score(passing, query)[:30]
    assert [m.id for m in found] == mmr(vectors, query, pool, 1 - diversity, 3)
    for match in found:
        assert match.metadata == {"cluster": float(match.id[1:3])}
        assert np.allclose(match.values, vectors[match.id], atol=1e-6)


async def test_autocut_answers_a_prefix_cut_where_weaviate_cuts(client: AnyClient) -> None:
    vectors = await store_clusters(client, clusters=3, size=4, spread=0.05, seed=5)
    query = vectors["c00-0"]
    uncut = await client.query(vector=query.tolist(), top_k=12)
    for cut in (1, 2, 3):
        found = await client.query(vector=query.tolist(), top_k=12, autocut=cut)
        assert [m.id for m in found] == [m.id for m in uncut][: len(found)]
        assert len(found) == autocut([m.score for m in uncut], cut) >= 1
    first = await client.query(vector=query.tolist(), top_k=12, autocut=1)
    assert {m.id[:3] for m in first} == {"c00"}  # the cut falls after the query's cluster


def test_autocut_is_weaviates() -> None:
    distances = [0.1899, 0.1901, 0.191, 0.21, 0.215, 0.23]
    assert [autocut(distances, n) for n in (1, 2, 3)] == [3, 5, 6]
    assert [autocut([1 - d for d in distances], n) for n in (1, 2, 3)] == [3, 5, 6]
    assert autocut([0.5] * 7, 1) == 7
    assert autocut([0.9], 1) == 1


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"examples": [Example(text="a cat", weight=0)]}, "examples[0].weight"),
        ({"examples": [Example(text="a cat", weight=float("nan"))]}, "examples[0].weight"),
        ({"examples": [Example(text="a cat"), Example()]}, "examples[1]"),
        ({"examples": [Example(text="x")] * 17}, "examples"),
        ({"examples": [Example(text="a cat"), Example(text="a cat", weight=-1)]}, "examples"),
        ({"examples": [Example(text="x" * 5000)]}, "examples[0].text"),
        ({"text": "a cat", "diversity": 1.5}, "diversity"),
        ({"text": "a cat", "diversity": float("inf")}, "diversity"),
        ({"text": "a cat", "collapse_above": -0.1}, "collapse_above"),
        ({"text": "a cat", "autocut": -1}, "autocut"),
        ({"text": "a cat", "diversity": 0.5, "top_k": 2000}, "top_k"),
    ],
)
async def test_bad_refinements_name_their_field(
    client: AnyClient, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await client.query(**options)
    assert field in refused.value.fields, (refused.value, refused.value.fields)


async def test_a_missing_id_example_is_not_found_and_named(client: AnyClient) -> None:
    await store_clusters(client, clusters=1, size=2, spread=0.1)
    with pytest.raises(NotFound, match=r"examples\[1\]\.id"):
        await client.query(examples=[Example(id="c00-0"), Example(id="nowhere")])


async def test_find_duplicates_gives_the_connected_components_with_progress(
    client: AnyClient,
) -> None:
    vectors = await store_clusters(client, clusters=4, size=3, spread=0.01, seed=7)
    dimension = len(vectors["c00-0"])
    rng = np.random.default_rng(11)
    loners = {f"loner{i}": unit(rng.standard_normal(dimension)) for i in range(6)}
    # A chain: a ~ b and b ~ c, but not a ~ c: one group all the same.
    base = unit(rng.standard_normal(dimension))
    side = unit(rng.standard_normal(dimension) - (rng.standard_normal(dimension) @ base) * base)
    chain = {f"chain{k}": unit(base + k * 0.22 * side) for k in range(3)}
    extra = {**loners, **chain}
    await client.upsert_vectors([VectorRecord(i, v.tolist(), {"cluster": -1.0})
                                 for i, v in extra.items()])  # fmt: skip
    everything = {**vectors, **extra}
    steps = [s async for s in client.find_duplicates(min_score=0.96)]
    assert all(s.total == len(everything) for s in steps)
    assert steps[-1].scanned == len(everything)
    groups = [g for s in steps for g in s.groups]
    assert sorted(sorted(m.id for m in g.members) for g in groups) == components(everything, 0.96)
    for group in groups:
        head = group.members[0]
        assert head.score == 1.0
        for member in group.members[1:]:
            cosine = float(everything[member.id] @ everything[head.id])
            assert member.score == pytest.approx(cosine, abs=1e-4)
    only = [s async for s in client.find_duplicates(min_score=0.96, filter={"cluster": 2})]
    assert [sorted(m.id for m in g.members) for s in only for g in s.groups] == [
        ["c02-0", "c02-1", "c02-2"]
    ]
    assert only[-1].total == 3


def components(vectors: Vectors, min_score: float) -> list[list[str]]:
    ids = sorted(vectors)
    matrix = np.stack([vectors[i] for i in ids])
    linked = matrix @ matrix.T >= min_score - 1e-6
    seen: set[int] = set()
    found = []
    for start in range(len(ids)):
        if start in seen:
            continue
        stack, part = [start], set()
        while stack:
            node = stack.pop()
            if node in part:
                continue
            part.add(node)
            stack.extend(int(j) for j in np.flatnonzero(linked[node]) if j not in part)
        seen |= part
        if len(part) > 1:
            found.append(sorted(ids[i] for i in part))
    return sorted(found)


async def test_find_duplicates_refuses_a_min_score_out_of_range(client: AnyClient) -> None:
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(InvalidArgument) as refused:
            [s async for s in client.find_duplicates(min_score=bad)]
        assert "min_score" in refused.value.fields
