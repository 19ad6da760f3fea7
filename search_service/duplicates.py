"""FindDuplicates, free of gRPC and the same over every store: the connected components of
"cosine >= min_score" among the records of a namespace that match a filter.

One pass over a listing: each record taking part asks the store for its neighbours at
min_score (more of them while they fill the answer). A group is complete, and sent, once
every member has been scanned. Memory holds only the records in unfinished groups, never
the store: pairs are found from either side, so a neighbour met before its own turn is
simply waited for. The representative, members[0], is the member with the most neighbours
in its group (ties: the smallest id); every other member's score is its cosine to it.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from search_service.domain import ScoredRecord
from search_service.errors import InvalidArgument
from search_service.filters import Condition, matches
from search_service.refine import COSINE_TOLERANCE
from search_service.stores.base import VectorStore

PAGE = 500
FIRST_NEIGHBOURS = 16
# A record's neighbours are asked for at most this many at a time; a larger group still
# forms through its members' own neighbours.
MOST_NEIGHBOURS = 4096


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    members: list[ScoredRecord]


@dataclass(frozen=True, slots=True)
class DuplicatesProgress:
    groups: list[DuplicateGroup]
    scanned: int
    total: int


@dataclass(slots=True)
class _Group:
    members: set[str] = field(default_factory=set)
    waiting: set[str] = field(default_factory=set)  # members not scanned yet
    degree: dict[str, int] = field(default_factory=dict)


def check_min_score(min_score: float) -> float:
    if not (math.isfinite(min_score) and 0 < min_score <= 1):
        raise InvalidArgument(
            f"min_score is {min_score}; it must be above 0 and at most 1 (0.95 finds "
            "near-duplicates, 0.9999 exact ones re-encoded or resized)",
            field="min_score",
        )
    return min_score


async def find_duplicates(
    store: VectorStore, namespace: str, min_score: float, condition: Condition | None
) -> AsyncIterator[DuplicatesProgress]:
    total = await _taking_part(store, namespace, condition)
    groups: dict[str, _Group] = {}  # by member id, while unfinished
    scanned = 0
    cursor = ""
    while True:
        page = await store.list_page(namespace, "", limit=PAGE, cursor=cursor,
                                     include_values=True,
                                     include_metadata=condition is not None)  # fmt: skip
        done: list[DuplicateGroup] = []
        for record in page.records:
            if condition is not None and not matches(condition, record.metadata or {}):
                continue
            assert record.values is not None
            scanned += 1
            near = await _neighbours(store, namespace, record.values, min_score, condition)
            near.discard(record.id)
            group = _join(groups, record.id, near)
            if group is not None and not group.waiting:
                done.extend(await _finished(store, namespace, group))
                for member in group.members:
                    del groups[member]
        yield DuplicatesProgress(done, scanned, total)
        cursor = page.cursor
        if not cursor:
            break
    # Groups whose waited-for members were scanned before they joined (a pair the store's
    # index found from one side only) end with the pass.
    rest = {id(group): group for group in groups.values()}
    if rest:
        finished = [g for group in rest.values() for g in await _finished(store, namespace, group)]
        yield DuplicatesProgress(finished, scanned, total)


async def _taking_part(store: VectorStore, namespace: str, condition: Condition | None) -> int:
    if condition is None:
        return (await store.stats()).namespaces.get(namespace, 0)
    count, cursor = 0, ""
    while True:
        page = await store.list_page(namespace, "", limit=PAGE, cursor=cursor,
                                     include_values=False, include_metadata=True)  # fmt: skip
        count += sum(1 for r in page.records if matches(condition, r.metadata or {}))
        cursor = page.cursor
        if not cursor:
            return count


async def _neighbours(
    store: VectorStore,
    namespace: str,
    vector: np.ndarray,
    min_score: float,
    condition: Condition | None,
) -> set[str]:
    wanted = FIRST_NEIGHBOURS
    while True:
        found = await store.query(namespace, vector, top_k=wanted, condition=condition,
                                  include_values=False, include_metadata=False)  # fmt: skip
        near = {m.id for m in found if m.score >= min_score - COSINE_TOLERANCE}
        if len(near) < wanted or wanted >= MOST_NEIGHBOURS:
            return near
        wanted *= 4


def _join(groups: dict[str, _Group], record_id: str, near: set[str]) -> _Group | None:
    """Records `record_id` as scanned, with its neighbours; returns its group, if any."""
    group = groups.get(record_id)
    if not near and group is None:
        return None
    if group is None:
        group = _Group(members={record_id})
        groups[record_id] = group
    for other in near:
        theirs = groups.get(other)
        if theirs is None:
            group.members.add(other)
            group.waiting.add(other)
            groups[other] = group
        elif theirs is not group:  # two groups meet: the smaller joins the larger
            small, group = sorted((theirs, group), key=lambda g: len(g.members))
            group.members |= small.members
            group.waiting |= small.waiting
            for member, degree in small.degree.items():
                group.degree[member] = group.degree.get(member, 0) + degree
            for member in small.members:
                groups[member] = group
    group.waiting.discard(record_id)
    group.degree[record_id] = group.degree.get(record_id, 0) + len(near)
    return group


async def _finished(store: VectorStore, namespace: str, group: _Group) -> list[DuplicateGroup]:
    """The group to send (none if fewer than two of its members are still stored)."""
    ranked = sorted(group.members, key=lambda m: (-group.degree.get(m, 0), m))
    records = {r.id: r for r in await store.fetch(namespace, ranked)}
    present = [m for m in ranked if m in records]  # deleted meanwhile: left out
    if len(present) < 2:
        return []
    head = records[present[0]].values
    members = [
        ScoredRecord(m, 1.0 if m == present[0] else float(records[m].values @ head), None, None)
        for m in present
    ]
    members[1:] = sorted(members[1:], key=lambda r: (-r.score, r.id))
    return [DuplicateGroup(members)]
