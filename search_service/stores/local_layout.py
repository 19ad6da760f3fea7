"""How the local store lays records out as Qdrant Edge points, and filters over them.

Pure functions, no I/O. Layout version 2 (store.json "format": 2):

    point id   uuid5(ID_NAMESPACE, json.dumps([namespace, id])): JSON's string escaping
               makes the encoding of the pair unambiguous, so distinct pairs never share
               a point (version 1 joined them with NUL, which an id could contain).
    payload    {"ns": namespace, "id": id, "keys": [metadata keys],
                "md": {"k<hex of key>": value}, "bools": {"k<hex of key>": "true"|"false"},
                "nums": {"k<hex of key>": "<shortest repr of the float>"}}

Metadata keys are hex-encoded because Qdrant's JSON paths cannot address a key with a
double quote or backslash, and dots or brackets would read as a path; `k` keeps an
all-digit key from reading as an array index. `keys` lets `$exists`/`$ne`/`$nin` tell a
missing field from an empty list the way Pinecone does. Booleans are also kept as
"true"/"false" under `bools`: qdrant-edge-py 0.9.0 turns `MatchValue(True)` into the
integer 1, which matches no stored boolean.

Numbers are kept twice because qdrant-edge-py 0.9.0 reads stored floats back up to 2 ULP
off (measured: 8,132 of 45,987 random doubles; values such as 19.99 or 3.0 are exact).
`nums` holds each one's exact repr as a keyword: reads and `$eq`/`$in` use it. Ranges
use the float in `md` away from the bound, and the exact keywords of the floats within
NUMBER_SLACK_ULPS of it, so `$gt`/`$lt` are exact while the store's error stays under
that slack.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import qdrant_edge as qe

from search_service.filters import And, Condition, FieldCondition, Metadata, Or

LAYOUT = 2
# Point ids are uuid5 under this project-specific namespace.
ID_NAMESPACE = uuid.UUID("5f0c7a52-3b8e-4a55-9d43-8f1e2f8a6c11")

# Four times the largest error measured; see the module doc.
NUMBER_SLACK_ULPS = 8


def point_id(namespace: str, record_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, json.dumps([namespace, record_id])))


def point_id_v1(namespace: str, record_id: str) -> str:
    """Layout 1's id, ambiguous when an id or namespace holds NUL; read only to migrate."""
    return str(uuid.uuid5(ID_NAMESPACE, f"{namespace}\x00{record_id}"))


def _encoded(key: str) -> str:
    return "k" + key.encode().hex()


def _decoded(encoded: str) -> str:
    return bytes.fromhex(encoded[1:]).decode()


def metadata_path(field: str) -> str:
    return f"md.{_encoded(field)}"


def bool_path(field: str) -> str:
    return f"bools.{_encoded(field)}"


def number_path(field: str) -> str:
    return f"nums.{_encoded(field)}"


def _exact(number: float) -> str:
    return repr(number + 0.0)  # + 0.0: -0.0 and 0.0 are one number, as Pinecone compares


def payload(namespace: str, record_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ns": namespace,
        "id": record_id,
        "keys": sorted(metadata),
        "md": {_encoded(k): v for k, v in metadata.items()},
        "bools": {_encoded(k): _bool_word(v) for k, v in metadata.items() if isinstance(v, bool)},
        "nums": {_encoded(k): _exact(v) for k, v in metadata.items() if _is_number(v)},
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool)


def metadata_of(stored: Mapping[str, Any] | None) -> Metadata:
    if not stored:
        return {}
    exact = stored.get("nums", {})
    return {
        _decoded(k): float(exact[k]) if k in exact else v for k, v in stored.get("md", {}).items()
    }


def metadata_of_v1(stored: Mapping[str, Any] | None) -> Metadata:
    """Layout 1 kept metadata under its own keys; read only to migrate."""
    return dict(stored.get("md", {})) if stored else {}


def _bool_word(value: bool) -> str:
    return "true" if value else "false"


# --- filters: the validated Pinecone tree -> Qdrant conditions -----------------------


def namespace_filter(namespace: str, condition: Condition | None) -> qe.Filter:
    must: list[Any] = [qe.FieldCondition("ns", match=qe.MatchValue(namespace))]
    if condition is not None:
        must.append(translate(condition))
    return qe.Filter(must=must)


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
        parts.append(qe.FieldCondition(metadata_path(field), match=qe.MatchAny(strings)))
    numbers = [_exact(float(o)) for o in options if _is_number(o)]
    if numbers:
        parts.append(qe.FieldCondition(number_path(field), match=qe.MatchAny(numbers)))
    for option in options:
        if isinstance(option, bool):
            parts.append(
                qe.FieldCondition(bool_path(field), match=qe.MatchValue(_bool_word(option)))
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
    for _ in range(2 * NUMBER_SLACK_ULPS):
        near.append(math.nextafter(near[-1], toward))
    far = near[NUMBER_SLACK_ULPS + 1]
    certain = qe.RangeFloat(gte=far) if upward else qe.RangeFloat(lte=far)
    close = [_exact(x) for x in near[1:] if math.isfinite(x)]
    return qe.Filter(
        should=[
            qe.FieldCondition(metadata_path(field), range=certain),
            qe.FieldCondition(number_path(field), match=qe.MatchAny(close)),
        ]
    )


def filtered_fields(condition: Condition | None) -> Iterator[tuple[str, qe.PayloadSchemaType]]:
    """(payload path, index type) of each metadata key a filter compares with a value."""
    if condition is None:
        return
    if isinstance(condition, And | Or):
        for part in condition.conditions:
            yield from filtered_fields(part)
        return
    if not isinstance(condition, FieldCondition) or condition.op == "$exists":
        return
    value = condition.value
    sample = value[0] if isinstance(value, tuple) and value else value
    if isinstance(sample, bool):
        yield bool_path(condition.field), qe.PayloadSchemaType.Keyword
    elif isinstance(sample, str):
        yield metadata_path(condition.field), qe.PayloadSchemaType.Keyword
    else:
        yield number_path(condition.field), qe.PayloadSchemaType.Keyword
        if condition.op in ("$gt", "$gte", "$lt", "$lte"):
            yield metadata_path(condition.field), qe.PayloadSchemaType.Float
