"""Pinecone's rules for ids, namespaces, metadata and filters, enforced in one place.

Every store goes through this module, so a request that works on the embedded store
works on Pinecone and means the same thing there. `parse_filter` turns a Pinecone
filter dict into a small tree of `Condition`s (validated, with a precise message for
each mistake); stores translate that tree, and `matches` evaluates it the way
Pinecone does, as the reference the stores are tested against.

Semantics (from Pinecone's documentation, see shared/reference/pinecone-sdk-10.md):
- `{"k": v}` means `{"k": {"$eq": v}}`; sibling keys and operators are ANDed.
- Numbers compare as floats; booleans are not numbers.
- A list-valued field (list of strings) matches `$eq`/`$in` when any element does,
  and `$ne`/`$nin` only when no element does.
- A record without the field matches neither `$ne` nor `$nin`.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from search_service.errors import InvalidFilter, InvalidId, InvalidMetadata, InvalidNamespace

MAX_ID_LENGTH = 512
MAX_NAMESPACE_LENGTH = 512
MAX_METADATA_BYTES = 40 * 1024
DEFAULT_NAMESPACE = "__default__"

Scalar = str | float | bool
MetadataValue = str | float | bool | list[str]
Metadata = dict[str, MetadataValue]

Comparison = Literal["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"]
COMPARISONS: tuple[Comparison, ...] = (
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FieldCondition:
    """`field <op> value`; value is a scalar, a tuple of scalars ($in/$nin) or a bool ($exists)."""

    field: str
    op: Comparison
    value: Scalar | tuple[str | float, ...]


@dataclass(frozen=True, slots=True)
class And:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Or:
    conditions: tuple[Condition, ...]


Condition = FieldCondition | And | Or


def validate_id(value: str, *, field: str = "id") -> str:
    if not 1 <= len(value) <= MAX_ID_LENGTH or not value.isascii():
        raise InvalidId(
            f"{field} {value[:40]!r} is invalid: ids are 1-{MAX_ID_LENGTH} ASCII characters",
            field=field,
        )
    return value


def validate_namespace(value: str, *, field: str = "namespace") -> str:
    """The namespace to use; Pinecone's name for the default one, "__default__", means ""."""
    if len(value) > MAX_NAMESPACE_LENGTH or not value.isascii():
        raise InvalidNamespace(
            f"{field} is invalid: namespaces are up to {MAX_NAMESPACE_LENGTH} ASCII "
            'characters ("" is the default namespace)',
            field=field,
        )
    return "" if value == DEFAULT_NAMESPACE else value


def validate_metadata(metadata: Mapping[str, Any], *, field: str = "metadata") -> Metadata:
    """Checks Pinecone's value rules; drops null values as Pinecone does."""
    clean: Metadata = {}
    for key, value in metadata.items():
        where = f"{field}.{key}"
        if not isinstance(key, str) or not key or key.startswith("$") or '"' in key:
            raise InvalidMetadata(
                f"{field} key {key!r} is invalid: keys are non-empty strings that do not "
                "start with '$' or contain '\"'",
                field=field,
            )
        if value is None:
            continue
        if isinstance(value, bool | str):
            clean[key] = value
        elif isinstance(value, int | float):
            if not math.isfinite(value):
                raise InvalidMetadata(f"{where} is {value}; numbers must be finite", field=where)
            clean[key] = float(value)
        elif isinstance(value, list | tuple):
            if not all(isinstance(item, str) for item in value):
                raise InvalidMetadata(
                    f"{where} is a list with a non-string element; lists may hold strings only",
                    field=where,
                )
            clean[key] = list(value)
        else:
            raise InvalidMetadata(
                f"{where} is a {type(value).__name__}; metadata values are strings, numbers, "
                "booleans or lists of strings (no nested objects)",
                field=where,
            )
    size = len(json.dumps(clean, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadata(
            f"{field} is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES} bytes",
            field=field,
        )
    return clean


def parse_filter(raw: Mapping[str, Any] | None, *, field: str = "filter") -> Condition | None:
    """Validates a Pinecone filter and returns its tree; None or {} means no filter."""
    if not raw:
        return None
    return _parse_clause(raw, field)


def _parse_clause(raw: Any, where: str) -> Condition:
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidFilter(f"{where} must be a non-empty object", field=where)
    conditions: list[Condition] = []
    for key, value in raw.items():
        path = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise InvalidFilter(f"{path} must be a non-empty array of filters", field=path)
            parts = tuple(_parse_clause(item, f"{path}[{i}]") for i, item in enumerate(value))
            conditions.append(And(parts) if key == "$and" else Or(parts))
        elif '"' in key:
            raise InvalidFilter(f"{path}: field names cannot contain '\"'", field=path)
        elif key.startswith("$"):
            raise InvalidFilter(
                f"{path}: unknown operator {key!r} at the top of a filter; only $and and $or "
                "combine filters, and field names do not start with '$'",
                field=path,
            )
        elif isinstance(value, Mapping):
            if not value:
                raise InvalidFilter(f"{path} has no operator", field=path)
            for op, operand in value.items():
                conditions.append(_parse_comparison(key, op, operand, f"{path}.{op}"))
        else:
            conditions.append(_parse_comparison(key, "$eq", value, path))
    return conditions[0] if len(conditions) == 1 else And(tuple(conditions))


def _parse_comparison(key: str, op: str, operand: Any, where: str) -> FieldCondition:
    if op not in COMPARISONS:
        raise InvalidFilter(
            f"{where}: unknown operator {op!r}; use one of {', '.join(COMPARISONS)}", field=where
        )
    if op in ("$eq", "$ne"):
        if not _is_scalar(operand):
            raise InvalidFilter(
                f"{where} must be a string, number or boolean (use $in for a list)", field=where
            )
        return FieldCondition(key, op, _scalar(operand))
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if not _is_number(operand):
            raise InvalidFilter(f"{where} must be a number", field=where)
        return FieldCondition(key, op, float(operand))
    if op in ("$in", "$nin"):
        # An empty array is refused: Qdrant would read it as "no constraint".
        if (
            not isinstance(operand, list)
            or not operand
            or not all(isinstance(x, str) or _is_number(x) for x in operand)
        ):
            raise InvalidFilter(
                f"{where} must be a non-empty array of strings or numbers", field=where
            )
        values = tuple(x if isinstance(x, str) else float(x) for x in operand)
        return FieldCondition(key, op, values)
    if not isinstance(operand, bool):
        raise InvalidFilter(f"{where} must be true or false", field=where)
    return FieldCondition(key, "$exists", operand)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


def _scalar(value: Any) -> Scalar:
    return value if isinstance(value, str | bool) else float(value)


def _same(a: Any, b: Any) -> bool:
    # Python says True == 1; Pinecone does not: a boolean only ever equals a boolean.
    return isinstance(a, bool) == isinstance(b, bool) and _is_number(a) == _is_number(b) and a == b


# $eq/$ne compare with one value, $in/$nin with several; all four look at every list element.
_MEMBERSHIP = ("$eq", "$ne", "$in", "$nin")
_ORDER: dict[str, Callable[[float, float], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}


def matches(condition: Condition | None, metadata: Mapping[str, Any]) -> bool:
    """Pinecone's answer to "does this record's metadata match the filter?"."""
    if condition is None:
        return True
    if isinstance(condition, And):
        return all(matches(c, metadata) for c in condition.conditions)
    if isinstance(condition, Or):
        return any(matches(c, metadata) for c in condition.conditions)
    present = condition.field in metadata
    value = metadata.get(condition.field)
    values = value if isinstance(value, list) else [value]
    op, operand = condition.op, condition.value
    if op == "$exists":
        return present is operand
    if not present:
        return False
    if op in _MEMBERSHIP:
        options = operand if isinstance(operand, tuple) else (operand,)
        hit = any(_same(v, o) for v in values for o in options)
        return hit if op in ("$eq", "$in") else not hit
    if not _is_number(value):
        return False
    return _ORDER[op](float(value), float(operand))  # type: ignore[arg-type]


def to_filter(condition: Condition) -> dict[str, Any]:
    """The Pinecone filter dict that `parse_filter` turns into `condition`."""
    if isinstance(condition, And):
        return {"$and": [to_filter(c) for c in condition.conditions]}
    if isinstance(condition, Or):
        return {"$or": [to_filter(c) for c in condition.conditions]}
    value = list(condition.value) if isinstance(condition.value, tuple) else condition.value
    return {condition.field: {condition.op: value}}
