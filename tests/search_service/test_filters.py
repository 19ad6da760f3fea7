"""Pinecone's id, namespace, metadata and filter rules, and the reference evaluator."""

from __future__ import annotations

from typing import Any

import pytest

from search_service.errors import InvalidFilter, InvalidId, InvalidMetadata, InvalidNamespace
from search_service.filters import (
    And,
    FieldCondition,
    Or,
    matches,
    parse_filter,
    validate_id,
    validate_metadata,
    validate_namespace,
)

RECORD: dict[str, Any] = {"label": "cat", "year": 2020.0, "night": False, "tags": ["a", "b"]}


def test_shorthand_equality_and_sibling_keys_become_an_and() -> None:
    parsed = parse_filter({"label": "cat", "year": {"$gte": 2019, "$lt": 2021}})
    assert parsed == And(
        (
            FieldCondition("label", "$eq", "cat"),
            FieldCondition("year", "$gte", 2019.0),
            FieldCondition("year", "$lt", 2021.0),
        )
    )


def test_empty_or_missing_filter_means_no_filter() -> None:
    assert parse_filter(None) is None
    assert parse_filter({}) is None


def test_nested_and_or_parse_into_a_tree() -> None:
    parsed = parse_filter({"$or": [{"label": "cat"}, {"$and": [{"year": 1}, {"night": True}]}]})
    assert isinstance(parsed, Or)
    assert isinstance(parsed.conditions[1], And)


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"label": {"$regex": "c.*"}}, "filter.label.$regex", "unknown operator"),
        ({"$not": {"label": "cat"}}, "filter.$not", "unknown operator"),
        ({"label": ["cat", "dog"]}, "filter.label", "use $in"),
        ({"label": {"$eq": ["cat"]}}, "filter.label.$eq", "use $in"),
        ({"year": {"$gt": "2020"}}, "filter.year.$gt", "must be a number"),
        ({"year": {"$gt": True}}, "filter.year.$gt", "must be a number"),
        ({"label": {"$in": "cat"}}, "filter.label.$in", "array of strings or numbers"),
        ({"label": {"$in": [True]}}, "filter.label.$in[0]", "array of strings or numbers"),
        ({"label": {"$exists": 1}}, "filter.label.$exists", "true or false"),
        ({"$and": []}, "filter.$and", "non-empty array"),
        ({"label": {"$in": []}}, "filter.label.$in", "non-empty array"),
        ({"$or": [{}]}, "filter.$or[0]", "non-empty object"),
        ({"label": {}}, "filter.label", "no operator"),
        ({"label": {"$eq": {"x": 1}}}, "filter.label.$eq", "use $in"),
    ],
)
def test_each_mistake_is_named_with_its_path(raw: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        parse_filter(raw)
    assert caught.value.field == field
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"label": "cat"}, True),
        ({"label": "dog"}, False),
        ({"year": 2020}, True),  # numbers compare as floats
        ({"year": {"$gte": 2020.0, "$lt": 2020.5}}, True),
        ({"year": {"$gt": 2020}}, False),
        ({"night": False}, True),
        ({"night": 0}, False),  # a boolean never equals a number
        ({"tags": "a"}, True),  # any element of a list field
        ({"tags": {"$in": ["z", "b"]}}, True),
        ({"tags": {"$ne": "a"}}, False),  # no element may equal
        ({"tags": {"$ne": "z"}}, True),
        ({"tags": {"$nin": ["z", "a"]}}, False),
        ({"tags": {"$gt": 1}}, False),
        ({"missing": {"$ne": "x"}}, False),  # Pinecone: absent fields never match $ne
        ({"missing": {"$nin": ["x"]}}, False),
        ({"missing": {"$exists": False}}, True),
        ({"label": {"$exists": True}}, True),
        ({"label": {"$in": ["dog", "cat"]}}, True),
        ({"year": {"$in": [2020]}}, True),
        ({"label": {"$nin": ["dog"]}}, True),
        ({"$or": [{"label": "dog"}, {"year": {"$lte": 2020}}]}, True),
        ({"$and": [{"label": "cat"}, {"night": True}]}, False),
    ],
)
def test_the_reference_evaluator_follows_pinecone_semantics(
    raw: dict[str, Any], expected: bool
) -> None:
    assert matches(parse_filter(raw), RECORD) is expected


def test_metadata_keeps_pinecone_value_types_and_drops_nulls() -> None:
    clean = validate_metadata({"a": "x", "n": 3, "f": 1.5, "b": True, "l": ["p"], "z": None})
    assert clean == {"a": "x", "n": 3.0, "f": 1.5, "b": True, "l": ["p"]}


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"nested": {"x": 1}}, "metadata.nested"),
        ({"nums": [1, 2]}, "metadata.nums[0]"),
        ({"inf": float("inf")}, "metadata.inf"),
        ({"big": "x" * 50_000}, "metadata"),
    ],
)
def test_metadata_outside_pinecone_rules_is_refused(metadata: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        validate_metadata(metadata)
    assert caught.value.field == field


def test_ids_and_namespaces_follow_pinecone_limits() -> None:
    assert validate_id("CIFAR10.123") == "CIFAR10.123"
    assert validate_namespace("") == ""
    for bad in ["", "x" * 513, "caf\u00e9"]:
        with pytest.raises(InvalidId):
            validate_id(bad)
    with pytest.raises(InvalidNamespace):
        validate_namespace("n" * 513)


def test_a_bad_namespace_message_reads_as_a_sentence() -> None:
    with pytest.raises(InvalidNamespace) as caught:
        validate_namespace("n" * 513)
    assert 'up to 512 printable ASCII characters ("" is the default namespace)' in str(caught.value)
