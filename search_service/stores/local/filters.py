"""Pinecone filters over the local store's points: the validated filter tree of
`search_service.filters` as Qdrant Edge conditions with the same meaning, and the payload
indexes a record's metadata wants. Pure functions over `layout.py`'s payload; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import qdrant_edge as qe

from search_service.filters import And, Condition, Metadata, Or
from search_service.stores.local import layout


def namespace_filter(
    namespace: str, condition: Condition | None, leave_out: Sequence[str] = ()
) -> qe.Filter:
    """The records of `namespace` that match `condition`, but not those of the ids in
    `leave_out`."""
    must: list[Any] = [qe.FieldCondition("ns", match=qe.MatchValue(namespace))]
    if condition is not None:
        must.append(translate(condition))
    if not leave_out:
        return qe.Filter(must=must)
    points: set[qe.PointId] = {layout.point_id(namespace, i) for i in leave_out}
    return qe.Filter(must=must, must_not=[qe.HasIdCondition(points)])


def listing_filter(namespace: str, prefix: str) -> qe.Filter:
    """The records of `namespace` whose id starts with `prefix` ("" for all)."""
    must: list[Any] = [qe.FieldCondition("ns", match=qe.MatchValue(namespace))]
    if prefix:
        must.append(qe.FieldCondition("id", match=qe.MatchPrefix(prefix)))
    return qe.Filter(must=must)


def translate(condition: Condition) -> Any:
    """One Pinecone condition as a Qdrant condition with the same meaning."""
    if isinstance(condition, And):
        return qe.Filter(must=[translate(c) for c in condition.conditions])
    if isinstance(condition, Or):
        return qe.Filter(should=[translate(c) for c in condition.conditions])
    field, op, value = condition.field, condition.op, condition.value
    # Pinecone's $ne/$nin never match a record without the field; Qdrant's must_not would.
    exists = qe.FieldCondition("keys", match=qe.MatchValue(field))
    if op == "$exists":
        return exists if value else qe.Filter(must_not=[exists])
    if op in ("$gt", "$gte", "$lt", "$lte"):
        assert isinstance(value, float)
        return _beyond(field, value, op)
    options = value if isinstance(value, tuple) else (value,)
    any_of = _any_of(field, options)
    if op in ("$eq", "$in"):
        return any_of
    # $ne/$nin: "no element is in the set", never Qdrant's MatchExcept ("some element is not").
    return qe.Filter(must=[exists], must_not=[any_of])


def _any_of(field: str, options: Sequence[str | float | bool]) -> Any:
    """Matches when the field (or any element of a list field) equals one of `options`."""
    parts: list[Any] = []
    strings = [o for o in options if isinstance(o, str)]
    if strings:
        parts.append(qe.FieldCondition(layout.metadata_path(field), match=qe.MatchAny(strings)))
    numbers = [layout.exact_word(float(o)) for o in options if layout.is_number(o)]
    if numbers:
        parts.append(qe.FieldCondition(layout.number_path(field), match=qe.MatchAny(numbers)))
    for option in options:
        if isinstance(option, bool):
            parts.append(
                qe.FieldCondition(
                    layout.bool_path(field), match=qe.MatchValue(layout.bool_word(option))
                )
            )
    if len(parts) == 1:
        return parts[0]
    return qe.Filter(should=parts)


def _beyond(field: str, bound: float, op: str) -> Any:
    """`field op bound`, exact although stored floats read back a few ULP off.

    Strict comparisons only: x >= b is x > the float below b (floats are discrete).
    Far from the bound the stored float decides; near it, the exact keyword does.
    """
    upward = op in ("$gt", "$gte")
    if op == "$gte":
        bound = math.nextafter(bound, -math.inf)
    elif op == "$lte":
        bound = math.nextafter(bound, math.inf)
    toward = math.inf if upward else -math.inf
    near = [bound]
    for _ in range(2 * layout.NUMBER_SLACK_ULPS):
        near.append(math.nextafter(near[-1], toward))
    far = near[layout.NUMBER_SLACK_ULPS + 1]
    certain = qe.RangeFloat(gte=far) if upward else qe.RangeFloat(lte=far)
    close = [layout.exact_word(x) for x in near[1:] if math.isfinite(x)]
    return qe.Filter(
        should=[
            qe.FieldCondition(layout.metadata_path(field), range=certain),
            qe.FieldCondition(layout.number_path(field), match=qe.MatchAny(close)),
        ]
    )


def stored_fields(metadata: Metadata) -> Iterator[tuple[str, qe.PayloadSchemaType]]:
    """(payload path, index type) of each metadata value a filter can compare with."""
    for key, value in metadata.items():
        sample = value[0] if isinstance(value, list) and value else value
        if isinstance(sample, bool):
            yield layout.bool_path(key), qe.PayloadSchemaType.Keyword
        elif isinstance(sample, str):
            yield layout.metadata_path(key), qe.PayloadSchemaType.Keyword
        elif layout.is_number(sample):
            yield layout.number_path(key), qe.PayloadSchemaType.Keyword
            yield layout.metadata_path(key), qe.PayloadSchemaType.Float
