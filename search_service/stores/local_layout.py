"""How the local store lays records out as Qdrant Edge points, and filters over them.

Pure functions, no I/O. Layout version 2 (store.json "format": 2):

    point id   uuid5(ID_NAMESPACE, json.dumps([namespace, id])): JSON's string escaping
               makes the encoding of the pair unambiguous, so distinct pairs never share
               a point (version 1 joined them with NUL, which an id could contain).
    payload    {"ns": namespace, "id": id, "keys": [metadata keys],
                "md": {"k<hex of key>": value}, "bools": {"k<hex of key>": "true"|"false"}}

Metadata keys are hex-encoded because Qdrant's JSON paths cannot address a key with a
double quote or backslash, and dots or brackets would read as a path; `k` keeps an
all-digit key from reading as an array index. `keys` lets `$exists`/`$ne`/`$nin` tell a
missing field from an empty list the way Pinecone does. Booleans are also kept as
"true"/"false" under `bools`: qdrant-edge-py 0.9.0 turns `MatchValue(True)` into the
integer 1, which matches no stored boolean.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import qdrant_edge as qe

from search_service.filters import And, Condition, FieldCondition, Metadata, Or

LAYOUT = 2
# Point ids are uuid5 under this project-specific namespace.
ID_NAMESPACE = uuid.UUID("5f0c7a52-3b8e-4a55-9d43-8f1e2f8a6c11")

_ORDER_BOUNDS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


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


def payload(namespace: str, record_id: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ns": namespace,
        "id": record_id,
        "keys": sorted(metadata),
        "md": {_encoded(k): v for k, v in metadata.items()},
        "bools": {_encoded(k): _bool_word(v) for k, v in metadata.items() if isinstance(v, bool)},
    }


def metadata_of(stored: Mapping[str, Any] | None) -> Metadata:
    if not stored:
        return {}
    return {_decoded(k): v for k, v in stored.get("md", {}).items()}


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
    if op in _ORDER_BOUNDS:
        assert isinstance(value, float)
        return qe.FieldCondition(
            metadata_path(field), range=qe.RangeFloat(**{_ORDER_BOUNDS[op]: value})
        )
    options = value if isinstance(value, tuple) else (value,)
    any_of = _any_of(field, options)
    if op in ("$eq", "$in"):
        return any_of
    # $ne/$nin: "no element is in the set", never Qdrant's MatchExcept ("some element is not").
    return qe.Filter(must=[exists], must_not=[any_of])


def _any_of(field: str, options: Sequence[str | float | bool]) -> Any:
    """Matches when the field (or any element of a list field) equals one of `options`."""
    key = metadata_path(field)
    parts: list[Any] = []
    strings = [o for o in options if isinstance(o, str)]
    if strings:
        parts.append(qe.FieldCondition(key, match=qe.MatchAny(strings)))
    for option in options:
        if isinstance(option, bool):
            parts.append(
                qe.FieldCondition(bool_path(field), match=qe.MatchValue(_bool_word(option)))
            )
        elif isinstance(option, float):
            # MatchValue takes no floats; numbers are stored as floats and compared as such.
            parts.append(qe.FieldCondition(key, range=qe.RangeFloat(gte=option, lte=option)))
    if len(parts) == 1:
        return parts[0]
    return qe.Filter(should=parts)


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
        return
    schema = qe.PayloadSchemaType.Keyword if isinstance(sample, str) else qe.PayloadSchemaType.Float
    yield metadata_path(condition.field), schema
