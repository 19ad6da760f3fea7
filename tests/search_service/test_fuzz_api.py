"""Hypothesis through the real search_service: any Struct as metadata or as a filter.

Values of any JSON shape, NaN and Infinity, nesting past what protobuf decodes, keys
with any character, operators in odd places. The only answers allowed are OK and
INVALID_ARGUMENT; whenever a query is OK its answer equals the reference evaluator's,
and whenever metadata is stored it comes back as the validator cleaned it.
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from imagesearch.limits import MAX_TEXT_CHARS
from imagesearch.status import reason_of, status_from_error
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.v1 import search_service_pb2_grpc as pb_grpc

from embed_service.app import EmbedApp
from search_service.errors import InvalidArgument
from search_service.filters import matches, parse_filter, validate_metadata
from tests.support.stack import serving_search

T = TypeVar("T")
DIM = 64
KEYS = ["label", "n", "tags", "flag", 'q"uote', "back\\slash", "dot.ted", "br[0]", "sp ace"]
OPERATORS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$and", "$or"]
LABELS = ["cat", "dog", "1", ""]


def unit(rng: np.random.Generator) -> list[float]:
    v = rng.standard_normal(DIM)
    return [float(x) for x in (v / np.linalg.norm(v)).astype(np.float32)]


def stored_metadata(i: int) -> dict[str, Any]:
    return {
        "label": LABELS[i % 4],
        "n": float(i % 5) - 1.0,
        "tags": [LABELS[i % 3], LABELS[(i + 1) % 4]],
        "flag": i % 2 == 0,
        KEYS[4 + i % 5]: LABELS[i % 2],
    }


keys = st.one_of(st.sampled_from([*KEYS, *OPERATORS]), st.text(max_size=6))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-3, 5),
    st.sampled_from(LABELS),
    st.text(max_size=4),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=30,
)
# Filters shaped like filters often enough to pass validation, and nested deep sometimes.
fields = st.sampled_from([*KEYS, "absent"])
members = st.lists(st.one_of(st.sampled_from(LABELS), st.integers(-1, 4)), min_size=1, max_size=3)
equal_to = st.one_of(st.sampled_from(LABELS), st.integers(-1, 4), st.booleans())
typed_leaves = st.one_of(
    st.builds(lambda k, op, v: {k: {op: v}}, fields, st.sampled_from(["$eq", "$ne"]), equal_to),
    st.builds(
        lambda k, op, v: {k: {op: v}},
        fields,
        st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
        st.floats(-2, 4),
    ),
    st.builds(lambda k, op, v: {k: {op: v}}, fields, st.sampled_from(["$in", "$nin"]), members),
    st.builds(lambda k, v: {k: {"$exists": v}}, fields, st.booleans()),
    st.builds(lambda k, v: {k: v}, fields, st.sampled_from(LABELS)),
)
odd_leaves = st.builds(
    lambda key, op, operand: {key: {op: operand}},
    fields,
    st.sampled_from(OPERATORS[:9]),
    st.one_of(scalars, st.lists(scalars, max_size=3)),
)


def trees(leaves: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        leaves,
        lambda inner: st.builds(
            lambda op, parts: {op: parts},
            st.sampled_from(["$and", "$or"]),
            st.lists(inner, min_size=1, max_size=3),
        ),
        max_leaves=12,
    )


def _nested(depth: int) -> dict[str, Any]:
    clause: dict[str, Any] = {"label": "cat"}
    for _ in range(depth):
        clause = {"$or": [clause]}
    return clause


filters = st.one_of(
    trees(typed_leaves),  # valid: the answer is checked against the reference
    trees(typed_leaves),
    trees(st.one_of(typed_leaves, odd_leaves)),
    st.dictionaries(keys, json_values, max_size=4),
    st.integers(8, 40).map(_nested),
)
metadata_dicts = st.one_of(
    st.dictionaries(keys, json_values, max_size=6),
    st.dictionaries(  # Pinecone's value types, odd keys and non-finite numbers included
        keys,
        st.one_of(scalars, st.lists(st.text(max_size=4), max_size=3)),
        max_size=6,
    ),
)


def fill(target: struct_pb2.Struct, values: dict[str, Any]) -> bool:
    """Fills `target` in place (a copy would re-parse, and refuse, what is nested past
    protobuf's depth limit); False where protobuf's Python API refuses the values."""
    try:
        target.update(values)
    except (ValueError, TypeError):
        return False
    return True


def from_struct(values: struct_pb2.Struct) -> dict[str, Any]:
    """What the server receives: numbers are doubles, nothing else changes."""
    return {k: _value(v) for k, v in values.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return from_struct(value.struct_value)
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    if kind in (None, "null_value"):
        return None
    return getattr(value, kind)


async def ok_or_invalid(call: Awaitable[T]) -> T | None:
    """The reply, or None for INVALID_ARGUMENT; any other status fails the test."""
    failure: grpc.aio.AioRpcError | None = None
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        failure = error
    assert failure.code() == grpc.StatusCode.INVALID_ARGUMENT, failure.details()
    return None


class Corpus:
    def __init__(self, stub: pb_grpc.SearchServiceStub) -> None:
        self.stub = stub
        self.vectors: dict[str, np.ndarray] = {}
        self.metadata: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
async def corpus(
    embed_app: EmbedApp, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Corpus]:
    async with serving_search(tmp_path_factory.mktemp("fuzz"), embed_app.address) as (_, ch):
        built = Corpus(pb_grpc.SearchServiceStub(ch))
        rng = np.random.default_rng(0)
        records = []
        for i in range(40):
            values, metadata = unit(rng), stored_metadata(i)
            record = pb.VectorRecord(id=f"r{i}", values=values)
            assert fill(record.metadata, metadata)
            records.append(record)
            built.vectors[f"r{i}"] = np.asarray(values, dtype=np.float32)
            built.metadata[f"r{i}"] = validate_metadata(metadata)
        reply = await built.stub.UpsertVectors(pb.UpsertVectorsRequest(records=records))
        assert not any(r.HasField("error") for r in reply.results)
        yield built


def reference_ids(corpus: Corpus, raw_filter: dict[str, Any], query: np.ndarray) -> list[str]:
    condition = parse_filter(raw_filter)
    keep = [i for i, md in corpus.metadata.items() if matches(condition, md)]
    return sorted(keep, key=lambda i: (-float(corpus.vectors[i] @ query), i))


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw_filter=filters, seed=st.integers(0, 2**16))
async def test_any_filter_is_ok_or_invalid_argument_and_ok_answers_match_the_reference(
    corpus: Corpus, raw_filter: dict[str, Any], seed: int
) -> None:
    query = np.asarray(unit(np.random.default_rng(seed)), dtype=np.float32)
    request = pb.QueryRequest(vector=pb.QueryVector(values=query.tolist()), top_k=100)
    if not fill(request.filter, raw_filter):
        return
    reply = await ok_or_invalid(corpus.stub.Query(request, timeout=30))
    if reply is None:
        return
    received = from_struct(request.filter)
    try:
        expected = reference_ids(corpus, received, query)
    except InvalidArgument as exc:
        pytest.fail(f"the service accepted a filter the validator refuses: {exc}")
    assert [m.id for m in reply.matches] == expected
    for match in reply.matches:
        assert match.score == pytest.approx(float(corpus.vectors[match.id] @ query), abs=1e-5)


_ids = itertools.count()


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(metadata=metadata_dicts)
async def test_any_metadata_is_stored_as_validated_or_refused_as_invalid_argument(
    corpus: Corpus, metadata: dict[str, Any]
) -> None:
    rid = f"md-{next(_ids)}"
    record = pb.VectorRecord(id=rid, values=unit(np.random.default_rng(1)))
    if not fill(record.metadata, metadata):
        return
    request = pb.UpsertVectorsRequest(namespace="fuzz-metadata", records=[record])
    # Only a request protobuf cannot decode is refused whole; bad records, one by one.
    reply = await ok_or_invalid(corpus.stub.UpsertVectors(request, timeout=30))
    if reply is None:
        return
    (result,) = reply.results
    received = from_struct(record.metadata)
    if result.HasField("error"):
        assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        with pytest.raises(InvalidArgument):
            validate_metadata(received)
        return
    fetched = await corpus.stub.Fetch(pb.FetchRequest(ids=[rid], namespace="fuzz-metadata"))
    assert from_struct(fetched.records[0].metadata) == validate_metadata(received)


async def outcome(call: Awaitable[T]) -> tuple[T | None, tuple[str, str] | None]:
    """The reply, or the status code and ErrorInfo reason that refused the call."""
    try:
        return await call, None
    except grpc.aio.AioRpcError as error:
        return None, (error.code().name, reason_of(status_from_error(error)))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


page_tokens = st.one_of(
    st.text(max_size=200),
    st.integers(1, 9000).map(lambda n: "[" * n),
    st.integers(1, 6000).map(lambda n: b64(b"[" * n)),
    st.binary(max_size=300).map(b64),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5)),
        lambda inner: st.lists(inner, max_size=6),
        max_leaves=12,
    ).map(lambda value: b64(json.dumps(value).encode())),
)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(token=page_tokens)
async def test_any_page_token_is_a_page_or_invalid_page_token(corpus: Corpus, token: str) -> None:
    request = pb.ListRecordsRequest(page_token=token, page_size=5)
    reply, refusal = await outcome(corpus.stub.ListRecords(request, timeout=30))
    assert reply is not None or refusal == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN"), refusal


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.integers(MAX_TEXT_CHARS - 2, MAX_TEXT_CHARS + 2).map(lambda n: "é" * n),
        st.text(min_size=1, max_size=3).map(lambda part: (part * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS]),
    )
)
async def test_any_query_text_is_answered_or_refused_naming_the_text(
    corpus: Corpus, text: str
) -> None:
    reply, refusal = await outcome(
        corpus.stub.Query(pb.QueryRequest(text=text, top_k=3), timeout=30)
    )
    if len(text) > MAX_TEXT_CHARS:
        assert refusal == ("INVALID_ARGUMENT", "TEXT_TOO_LONG"), len(text)
    elif not text.strip():
        assert refusal == ("INVALID_ARGUMENT", "TEXT_EMPTY"), repr(text)
    else:
        assert reply is not None, refusal
        assert len(reply.matches) == 3


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e-9, 1.0000001]),
)


@pytest.mark.slow
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    weights=st.lists(floats, min_size=1, max_size=18),
    diversity=floats,
    collapse_above=floats,
    autocut=st.integers(-3, 5),
    top_k=st.integers(1, 30),
)
async def test_any_examples_and_refinements_are_answered_or_refused_naming_the_field(
    corpus: Corpus,
    weights: list[float],
    diversity: float,
    collapse_above: float,
    autocut: int,
    top_k: int,
) -> None:
    ids = sorted(corpus.vectors)
    examples = [pb.QueryExample(id=ids[i % len(ids)], weight=w) for i, w in enumerate(weights)]
    request = pb.QueryRequest(examples=examples, diversity=diversity, top_k=top_k,
                              collapse_above=collapse_above, autocut=autocut)  # fmt: skip
    reply, refusal = await outcome(corpus.stub.Query(request, timeout=30))
    if reply is None:
        assert refusal is not None
        assert refusal[0] == "INVALID_ARGUMENT", refusal
        return
    # Accepted: every number was in range, and the answer is as the semantics say.
    assert len(weights) <= 16
    assert all(np.isfinite(w) and w != 0 for w in weights)
    assert 0 <= diversity <= 1
    assert 0 <= collapse_above <= 1
    assert autocut >= 0
    given = {e.id for e in examples}
    found = [m.id for m in reply.matches]
    assert given.isdisjoint(found)
    assert len(found) == len(set(found))
    assert 1 <= len(found) <= top_k
    if not (diversity or collapse_above or autocut):
        assert len(found) == min(top_k, len(ids) - len(given))
