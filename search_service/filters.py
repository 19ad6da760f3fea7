"""Pinecone's rules for ids, namespaces, metadata and filters, enforced in one place.

Every store goes through this module, so a request that works on the embedded store
works on Pinecone and means the same thing there. `parse_filter` turns a Pinecone
filter dict into a small tree of `Condition`s (validated, with a precise message for
each mistake); stores translate that tree, and `matches` evaluates it the way
Pinecone does, as the reference the stores are tested against.

Semantics (from Pinecone's documentation of its filter language):
- `{"k": v}` means `{"k": {"$eq": v}}`; sibling keys and operators are ANDed.
- Numbers compare as floats; booleans are not numbers.
- A list-valued field (list of strings) matches `$eq`/`$in` when any element does,
  and `$ne`/`$nin` only when no element does.
- A record without the field matches neither `$ne` nor `$nin`.

Choices where Pinecone's documentation is silent, made once here for every store:
- Ids and namespaces are printable ASCII: control characters are refused, never
  stored, so they cannot hide in logs, URLs or a terminal.
- Metadata keys may hold any character (quotes, backslashes, dots, brackets, spaces,
  non-ASCII) but must not be empty or start with '$'.
- Metadata size is the UTF-8 length of its compact JSON, as Pinecone counts it.
- NaN and Infinity are refused wherever a number goes, naming the exact field.
- Filters nest `$and`/`$or` at most MAX_FILTER_DEPTH levels deep.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from imagesearch.wire import DEFAULT_NAMESPACE

from search_service.errors import InvalidFilter, InvalidId, InvalidMetadata, InvalidNamespace

MAX_ID_LENGTH = 512
MAX_NAMESPACE_LENGTH = 512
MAX_METADATA_BYTES = 40 * 1024
# Far above what a person writes, and below what protobuf's decoder takes (~19 levels).
MAX_FILTER_DEPTH = 10

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


def _printable_ascii(value: str) -> bool:
    return value.isascii() and value.isprintable()


def validate_id(value: str, *, field: str = "id") -> str:
    if not 1 <= len(value) <= MAX_ID_LENGTH or not _printable_ascii(value):
        raise InvalidId(
            f"{field} {value[:40]!r} is invalid: ids are 1-{MAX_ID_LENGTH} printable ASCII "
            "characters (no control characters)",
            field=field,
        )
    return value


def validate_prefix(value: str, *, field: str = "prefix") -> str:
    """An id prefix to list by: what an id may hold, and "" for every id."""
    if len(value) > MAX_ID_LENGTH or not _printable_ascii(value):
        raise InvalidId(
            f"{field} {value[:40]!r} is invalid: a prefix is up to {MAX_ID_LENGTH} printable "
            "ASCII characters, as ids are",
            field=field,
        )
    return value


def validate_namespace(value: str, *, field: str = "namespace") -> str:
    """The namespace to use; Pinecone's name for the default one, "__default__", means ""."""
    if len(value) > MAX_NAMESPACE_LENGTH or not _printable_ascii(value):
        raise InvalidNamespace(
            f"{field} {value[:40]!r} is invalid: namespaces are up to {MAX_NAMESPACE_LENGTH} "
            'printable ASCII characters ("" is the default namespace)',
            field=field,
        )
    return "" if value == DEFAULT_NAMESPACE else value


def validate_metadata(metadata: Mapping[str, Any], *, field: str = "metadata") -> Metadata:
    """Checks Pinecone's value rules; drops null values as Pinecone does."""
    clean: Metadata = {}
    for key, value in metadata.items():
        where = f"{field}.{key}"
        if not isinstance(key, str) or not key or key.startswith("$"):
            raise InvalidMetadata(
                f"{field} key {key!r} is invalid: keys are non-empty strings that do not "
                "start with '$'",
                field=field,
            )
        if value is None:
            continue
        if isinstance(value, bool | str):
            clean[key] = value
        elif isinstance(value, int | float):
            clean[key] = _finite(value, where, InvalidMetadata)
        elif isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise InvalidMetadata(
                        f"{where}[{i}] is {_kind(item)}; lists may hold strings only",
                        field=f"{where}[{i}]",
                    )
            clean[key] = list(value)
        else:
            raise InvalidMetadata(
                f"{where} is {_kind(value)}; metadata values are strings, numbers, "
                "booleans or lists of strings (no nested objects)",
                field=where,
            )
    size = metadata_bytes(clean)
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadata(
            f"{field} is {size} bytes as UTF-8 JSON; the limit is {MAX_METADATA_BYTES} bytes",
            field=field,
        )
    return clean


def metadata_bytes(metadata: Mapping[str, Any]) -> int:
    """The size Pinecone's 40 KB limit applies to: UTF-8 bytes of the compact JSON."""
    return len(json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode())


def _finite(value: float, where: str, error: type[InvalidFilter | InvalidMetadata]) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise error(
            f"{where} is {number}; numbers must be finite (NaN and Infinity are not allowed)",
            field=where,
        )
    return number


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else f"a {type(value).__name__}"


def parse_filter(raw: Mapping[str, Any] | None, *, field: str = "filter") -> Condition | None:
    """Validates a Pinecone filter and returns its tree; None or {} means no filter."""
    if not raw:
        return None
    return _parse_clause(raw, field, 0)


def _parse_clause(raw: Any, where: str, depth: int) -> Condition:
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidFilter(f"{where} must be a non-empty object", field=where)
    conditions: list[Condition] = []
    for key, value in raw.items():
        path = f"{where}.{key}"
        if key in ("$and", "$or"):
            if depth >= MAX_FILTER_DEPTH:
                raise InvalidFilter(
                    f"{path} nests $and/$or more than {MAX_FILTER_DEPTH} levels deep "
                    f"(MAX_FILTER_DEPTH); flatten the filter",
                    field=path,
                )
            if not isinstance(value, list) or not value:
                raise InvalidFilter(f"{path} must be a non-empty array of filters", field=path)
            parts = tuple(
                _parse_clause(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)
            )
            conditions.append(And(parts) if key == "$and" else Or(parts))
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
        return FieldCondition(key, op, _scalar(operand, where))
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if not _is_number(operand):
            raise InvalidFilter(f"{where} must be a number", field=where)
        return FieldCondition(key, op, _finite(operand, where, InvalidFilter))
    if op in ("$in", "$nin"):
        # An empty array is refused: Qdrant would read it as "no constraint".
        if not isinstance(operand, list) or not operand:
            raise InvalidFilter(
                f"{where} must be a non-empty array of strings or numbers", field=where
            )
        values: list[str | float] = []
        for i, item in enumerate(operand):
            if isinstance(item, str):
                values.append(item)
            elif _is_number(item):
                values.append(_finite(item, f"{where}[{i}]", InvalidFilter))
            else:
                raise InvalidFilter(
                    f"{where} must be a non-empty array of strings or numbers; "
                    f"{where}[{i}] is {_kind(item)}",
                    field=f"{where}[{i}]",
                )
        return FieldCondition(key, op, tuple(values))
    if not isinstance(operand, bool):
        raise InvalidFilter(f"{where} must be true or false", field=where)
    return FieldCondition(key, "$exists", operand)


def _is_number(value: Any) -> bool:
    """A JSON number, finite or not (non-finite ones are refused by `_finite`)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or _is_number(value)


def _scalar(value: Any, where: str) -> Scalar:
    return value if isinstance(value, str | bool) else _finite(value, where, InvalidFilter)


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
