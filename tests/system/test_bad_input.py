"""A corpus of odd and hostile input, sent through real servers as any gRPC peer would.

Every case names the exact code, ErrorInfo reason and BadRequest field it must get
(legal odd input must get OK). After each case both services must still be SERVING
and a known-good call must give the same answer as before; at the end every record
that was acknowledged is fetched back intact. No case may ever get INTERNAL or UNKNOWN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.status import field_violations, reason_of, status_from_error
from imagesearch.v1 import embed_service_pb2 as epb
from imagesearch.v1 import embed_service_pb2_grpc as epb_grpc
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.v1 import search_service_pb2_grpc as pb_grpc

from embed_service.app import EmbedApp
from tests.support.imagegen import encode, picture, png_claiming
from tests.support.stack import serving_search, struct

DIM = 64
GOOD_IMAGE = encode(picture("green", shape=1), "PNG")
ODD_KEY = 'a"b\\c.d[0] e ü'


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(DIM)
    return [float(x) for x in (v / np.linalg.norm(v)).astype(np.float32)]


def scaled(seed: int, scale: float) -> list[float]:
    return [x * scale for x in unit(seed)]


def nested_and(depth: int) -> dict[str, Any]:
    clause: dict[str, Any] = {"label": "x"}
    for _ in range(depth):
        clause = {"$and": [clause]}
    return clause


def vectors(*records: pb.VectorRecord, namespace: str = "") -> pb.UpsertVectorsRequest:
    return pb.UpsertVectorsRequest(namespace=namespace, records=list(records))


def record(rid: str, values: list[float] | None = None, /, **metadata: Any) -> pb.VectorRecord:
    return pb.VectorRecord(id=rid, values=values or unit(len(rid)), metadata=struct(metadata))


def raw(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class Case:
    """One call and what it must get. `items` is for batches: per-record (reason, field),
    "" for a record that must be stored."""

    name: str
    service: str  # "search" or "embed"
    method: str
    request: Any
    code: str = "INVALID_ARGUMENT"
    reason: str = ""
    field: str | None = None
    items: Sequence[tuple[str, str]] = ()
    stream: bool = False


def q(**fields: Any) -> pb.QueryRequest:
    return pb.QueryRequest(**fields)


def with_filter(raw_filter: dict[str, Any], **fields: Any) -> pb.QueryRequest:
    request = pb.QueryRequest(vector=pb.QueryVector(values=unit(1)), **fields)
    # In place: copying a Struct nested past protobuf's depth limit would re-parse it here.
    request.filter.update(raw_filter)
    return request


BAD_ID = "INVALID_ID"
BAD_NS = "INVALID_NAMESPACE"
BAD_FILTER = "INVALID_FILTER"
BAD_MD = "INVALID_METADATA"
BAD_VEC = "INVALID_VECTOR"
UNDECODABLE = "REQUEST_UNDECODABLE"
NAN, INF = float("nan"), float("inf")

CASES: list[Case] = [
    # --- Query: what to search for --------------------------------------------------
    Case(
        "top_k negative",
        "search",
        "Query",
        q(text="x", top_k=-1),
        reason="INVALID_ARGUMENT",
        field="top_k",
    ),
    Case(
        "top_k over 10000",
        "search",
        "Query",
        q(text="x", top_k=10_001),
        reason="INVALID_ARGUMENT",
        field="top_k",
    ),
    Case("no query at all", "search", "Query", q(), reason="INVALID_ARGUMENT", field="query"),
    Case("empty text", "search", "Query", q(text=""), reason="TEXT_EMPTY", field="text"),
    Case("blank text", "search", "Query", q(text=" \n\t"), reason="TEXT_EMPTY", field="text"),
    Case("empty image", "search", "Query", q(image=b""), reason="IMAGE_EMPTY", field="image"),
    Case(
        "image that is not one",
        "search",
        "Query",
        q(image=b"GIF89a nope"),
        reason="IMAGE_UNREADABLE",
        field="image",
    ),
    Case(
        "truncated image",
        "search",
        "Query",
        q(image=GOOD_IMAGE[:60]),
        reason="IMAGE_UNREADABLE",
        field="image",
    ),
    Case(
        "decompression bomb",
        "search",
        "Query",
        q(image=png_claiming(100_000, 100_000)),
        reason="IMAGE_TOO_LARGE",
        field="image",
    ),
    Case("empty id", "search", "Query", q(id=""), reason=BAD_ID, field="id"),
    Case("id with a bell", "search", "Query", q(id="a\x07b"), reason=BAD_ID, field="id"),
    Case("id with NUL", "search", "Query", q(id="a\x00b"), reason=BAD_ID, field="id"),
    Case("id of 513", "search", "Query", q(id="x" * 513), reason=BAD_ID, field="id"),
    Case("non-ASCII id", "search", "Query", q(id="café"), reason=BAD_ID, field="id"),
    Case(
        "id not stored", "search", "Query", q(id="no-such-id"), code="NOT_FOUND", reason="NOT_FOUND"
    ),
    Case(
        "vector too short",
        "search",
        "Query",
        q(vector=pb.QueryVector(values=[1.0, 2.0])),
        reason=BAD_VEC,
        field="vector.values",
    ),
    Case(
        "vector all zeros",
        "search",
        "Query",
        q(vector=pb.QueryVector(values=[0.0] * DIM)),
        reason=BAD_VEC,
        field="vector.values",
    ),
    Case(
        "vector with NaN",
        "search",
        "Query",
        q(vector=pb.QueryVector(values=[1.0] * 3 + [NAN] + [1.0] * 60)),
        reason=BAD_VEC,
        field="vector.values[3]",
    ),
    Case(
        "vector with Infinity",
        "search",
        "Query",
        q(vector=pb.QueryVector(values=[INF] + [1.0] * 63)),
        reason=BAD_VEC,
        field="vector.values[0]",
    ),
    Case(
        "tiny vector",
        "search",
        "Query",
        q(vector=pb.QueryVector(values=scaled(3, 1e-30))),
        code="OK",
    ),
    Case(
        "huge vector",
        "search",
        "Query",
        q(vector=pb.QueryVector(values=scaled(3, 1e30))),
        code="OK",
    ),
    Case(
        "namespace of 513",
        "search",
        "Query",
        q(text="x", namespace="n" * 513),
        reason=BAD_NS,
        field="namespace",
    ),
    Case(
        "namespace with a newline",
        "search",
        "Query",
        q(text="x", namespace="a\nb"),
        reason=BAD_NS,
        field="namespace",
    ),
    Case(
        "non-ASCII namespace",
        "search",
        "Query",
        q(text="x", namespace="ñ"),
        reason=BAD_NS,
        field="namespace",
    ),
    Case(
        "NaN min_score",
        "search",
        "Query",
        q(text="x", min_score=NAN),
        reason="INVALID_ARGUMENT",
        field="min_score",
    ),
    Case("a long text within the limit", "search", "Query", q(text="word " * 819), code="OK"),
    Case(
        "a text past the limit",
        "search",
        "Query",
        q(text="word " * 20_000),
        reason="TEXT_TOO_LONG",
        field="text",
    ),
    # --- Query: several examples and refinements ---------------------------------------
    Case(
        "examples beside a single query",
        "search",
        "Query",
        q(text="x", examples=[pb.QueryExample(text="y")]),
        reason="INVALID_ARGUMENT",
        field="examples",
    ),
    Case(
        "example weight 0",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="y", weight=0)]),
        reason="INVALID_ARGUMENT",
        field="examples[0].weight",
    ),
    Case(
        "example weight NaN",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="y"), pb.QueryExample(text="z", weight=NAN)]),
        reason="INVALID_ARGUMENT",
        field="examples[1].weight",
    ),
    Case(
        "example with nothing set",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="y"), pb.QueryExample()]),
        reason="INVALID_ARGUMENT",
        field="examples[1]",
    ),
    Case(
        "17 examples",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="y")] * 17),
        reason="INVALID_ARGUMENT",
        field="examples",
    ),
    Case(
        "examples that cancel out",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="y"), pb.QueryExample(text="y", weight=-1)]),
        reason="INVALID_ARGUMENT",
        field="examples",
    ),
    Case(
        "empty text example",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="")]),
        reason="TEXT_EMPTY",
        field="examples[0].text",
    ),
    Case(
        "unreadable image example",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="y"), pb.QueryExample(image=b"GIF89a nope")]),
        reason="IMAGE_UNREADABLE",
        field="examples[1].image",
    ),
    Case(
        "NaN in an example vector",
        "search",
        "Query",
        q(examples=[pb.QueryExample(vector=pb.QueryVector(values=[NAN, *unit(2)[1:]]))]),
        reason=BAD_VEC,
        field="examples[0].vector.values[0]",
    ),
    Case(
        "example id not stored",
        "search",
        "Query",
        q(examples=[pb.QueryExample(text="y"), pb.QueryExample(id="no-such-id")]),
        code="NOT_FOUND",
        reason="NOT_FOUND",
    ),
    Case(
        "example id with a control character",
        "search",
        "Query",
        q(examples=[pb.QueryExample(id="a\x00b")]),
        reason=BAD_ID,
        field="examples[0].id",
    ),
    Case(
        "diversity over 1",
        "search",
        "Query",
        q(text="x", diversity=1.5),
        reason="INVALID_ARGUMENT",
        field="diversity",
    ),
    Case(
        "diversity negative",
        "search",
        "Query",
        q(text="x", diversity=-0.1),
        reason="INVALID_ARGUMENT",
        field="diversity",
    ),
    Case(
        "collapse_above NaN",
        "search",
        "Query",
        q(text="x", collapse_above=NAN),
        reason="INVALID_ARGUMENT",
        field="collapse_above",
    ),
    Case(
        "collapse_above over 1",
        "search",
        "Query",
        q(text="x", collapse_above=1.01),
        reason="INVALID_ARGUMENT",
        field="collapse_above",
    ),
    Case(
        "autocut negative",
        "search",
        "Query",
        q(text="x", autocut=-2),
        reason="INVALID_ARGUMENT",
        field="autocut",
    ),
    Case(
        "diversity with top_k 5000",
        "search",
        "Query",
        q(text="x", diversity=0.3, top_k=5000),
        reason="INVALID_ARGUMENT",
        field="top_k",
    ),
    # --- FindDuplicates ---------------------------------------------------------------
    Case(
        "duplicates without min_score",
        "search",
        "FindDuplicates",
        pb.FindDuplicatesRequest(),
        reason="INVALID_ARGUMENT",
        field="min_score",
    ),
    Case(
        "duplicates min_score over 1",
        "search",
        "FindDuplicates",
        pb.FindDuplicatesRequest(min_score=1.5),
        reason="INVALID_ARGUMENT",
        field="min_score",
    ),
    Case(
        "duplicates min_score NaN",
        "search",
        "FindDuplicates",
        pb.FindDuplicatesRequest(min_score=NAN),
        reason="INVALID_ARGUMENT",
        field="min_score",
    ),
    Case(
        "duplicates with a bad filter",
        "search",
        "FindDuplicates",
        pb.FindDuplicatesRequest(min_score=0.9, filter=struct({"label": {"$regex": "x"}})),
        reason=BAD_FILTER,
        field="filter.label.$regex",
    ),
    Case(
        "duplicates in a bad namespace",
        "search",
        "FindDuplicates",
        pb.FindDuplicatesRequest(min_score=0.9, namespace="a\x01"),
        reason=BAD_NS,
        field="namespace",
    ),
    # --- Query: filters ---------------------------------------------------------------
    Case(
        "unknown operator",
        "search",
        "Query",
        with_filter({"label": {"$regex": "c.*"}}),
        reason=BAD_FILTER,
        field="filter.label.$regex",
    ),
    Case(
        "NaN in $gt",
        "search",
        "Query",
        with_filter({"n": {"$gt": NAN}}),
        reason=BAD_FILTER,
        field="filter.n.$gt",
    ),
    Case(
        "Infinity in $in",
        "search",
        "Query",
        with_filter({"n": {"$in": [1, -INF]}}),
        reason=BAD_FILTER,
        field="filter.n.$in[1]",
    ),
    Case(
        "NaN shorthand",
        "search",
        "Query",
        with_filter({"n": NAN}),
        reason=BAD_FILTER,
        field="filter.n",
    ),
    Case(
        "NaN in $ne inside $or",
        "search",
        "Query",
        with_filter({"$or": [{"a": "b"}, {"n": {"$ne": NAN}}]}),
        reason=BAD_FILTER,
        field="filter.$or[1].n.$ne",
    ),
    Case(
        "filter 11 levels deep",
        "search",
        "Query",
        with_filter(nested_and(11)),
        reason=BAD_FILTER,
        field="filter" + ".$and[0]" * 10 + ".$and",
    ),
    Case(
        "filter 10 levels deep is fine", "search", "Query", with_filter(nested_and(10)), code="OK"
    ),
    Case(
        "filter deeper than protobuf decodes",
        "search",
        "Query",
        with_filter(nested_and(40)),
        reason=UNDECODABLE,
        field="request",
    ),
    Case(
        "empty $and",
        "search",
        "Query",
        with_filter({"$and": []}),
        reason=BAD_FILTER,
        field="filter.$and",
    ),
    Case(
        "$or not a list",
        "search",
        "Query",
        with_filter({"$or": "x"}),
        reason=BAD_FILTER,
        field="filter.$or",
    ),
    Case(
        "no operator",
        "search",
        "Query",
        with_filter({"label": {}}),
        reason=BAD_FILTER,
        field="filter.label",
    ),
    Case(
        "empty $in",
        "search",
        "Query",
        with_filter({"label": {"$in": []}}),
        reason=BAD_FILTER,
        field="filter.label.$in",
    ),
    Case(
        "$in of an object",
        "search",
        "Query",
        with_filter({"label": {"$in": [{"a": 1}]}}),
        reason=BAD_FILTER,
        field="filter.label.$in[0]",
    ),
    Case(
        "$exists not a boolean",
        "search",
        "Query",
        with_filter({"label": {"$exists": "yes"}}),
        reason=BAD_FILTER,
        field="filter.label.$exists",
    ),
    Case(
        "top-level $foo",
        "search",
        "Query",
        with_filter({"$foo": 1}),
        reason=BAD_FILTER,
        field="filter.$foo",
    ),
    Case(
        "null comparison",
        "search",
        "Query",
        with_filter({"label": None}),
        reason=BAD_FILTER,
        field="filter.label",
    ),
    Case(
        "list shorthand",
        "search",
        "Query",
        with_filter({"label": ["a", "b"]}),
        reason=BAD_FILTER,
        field="filter.label",
    ),
    Case(
        "string for $gt",
        "search",
        "Query",
        with_filter({"n": {"$gt": "5"}}),
        reason=BAD_FILTER,
        field="filter.n.$gt",
    ),
    Case(
        "object for $eq",
        "search",
        "Query",
        with_filter({"label": {"$eq": {"a": 1}}}),
        reason=BAD_FILTER,
        field="filter.label.$eq",
    ),
    Case("filter on an odd key", "search", "Query", with_filter({ODD_KEY: "yes"}), code="OK"),
    Case(
        "garbage bytes",
        "search",
        "Query",
        raw(b"\xff\xff\xff\xff"),
        reason=UNDECODABLE,
        field="request",
    ),
    Case(
        "invalid UTF-8 text",
        "search",
        "Query",
        raw(b"\x12\x02\xff\xfe"),
        reason=UNDECODABLE,
        field="request",
    ),
    # --- UpsertVectors ----------------------------------------------------------------
    Case(
        "1001 vectors",
        "search",
        "UpsertVectors",
        vectors(*[record(f"v{i}") for i in range(1001)]),
        reason="INVALID_ARGUMENT",
        field="records",
    ),
    Case(
        "bad namespace for vectors",
        "search",
        "UpsertVectors",
        vectors(record("ok"), namespace="\x00"),
        reason=BAD_NS,
        field="namespace",
    ),
    Case(
        "a batch with every kind of bad record",
        "search",
        "UpsertVectors",
        vectors(
            record("good-1", category="fine"),
            record(""),
            record("nested", k={"x": 1}),
            record("nan-meta", score=NAN),
            record("inf-meta", score=-INF),
            record("mixed-list", tags=["a", 2]),
            record("too-big", blob="x" * 41_000),
            record("dollar", **{"$k": "v"}),
            record("empty-key", **{"": "v"}),
            pb.VectorRecord(id="short", values=[1.0, 2.0]),
            pb.VectorRecord(id="zero", values=[0.0] * DIM),
            pb.VectorRecord(id="inf", values=[INF] + [0.0] * (DIM - 1)),
            record("ctrl\x1bid"),
            record("good-2", year=2024),
        ),
        code="OK",
        items=[
            ("", ""),
            (BAD_ID, "records[1].id"),
            (BAD_MD, "records[2].metadata.k"),
            (BAD_MD, "records[3].metadata.score"),
            (BAD_MD, "records[4].metadata.score"),
            (BAD_MD, "records[5].metadata.tags[1]"),
            (BAD_MD, "records[6].metadata"),
            (BAD_MD, "records[7].metadata"),
            (BAD_MD, "records[8].metadata"),
            (BAD_VEC, "records[9].values"),
            (BAD_VEC, "records[10].values"),
            (BAD_VEC, "records[11].values[0]"),
            (BAD_ID, "records[12].id"),
            ("", ""),
        ],
    ),
    Case(
        "legal odd records",
        "search",
        "UpsertVectors",
        vectors(
            record("tiny", scaled(7, 1e-30)),
            record("huge", scaled(8, 1e30)),
            record("unicode-20k", text="é漢字🙂" * 2_000),
            record("odd-key", **{ODD_KEY: "yes", "dots.and[brackets]": 1.5}),
            record("punctuation !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
            record("null-value", gone=None, kept="yes"),
        ),
        code="OK",
        items=[("", "")] * 6,
    ),
    # --- UpsertImages and IngestImages -------------------------------------------------
    Case(
        "65 images",
        "search",
        "UpsertImages",
        pb.UpsertImagesRequest(records=[pb.ImageRecord(image=GOOD_IMAGE)] * 65),
        reason="INVALID_ARGUMENT",
        field="records",
    ),
    Case(
        "a batch of images with bad ones",
        "search",
        "UpsertImages",
        pb.UpsertImagesRequest(
            records=[
                pb.ImageRecord(id="img-good", image=GOOD_IMAGE),
                pb.ImageRecord(id="img-empty", image=b""),
                pb.ImageRecord(id="img-junk", image=b"not an image"),
                pb.ImageRecord(id="bad\tid", image=GOOD_IMAGE),
                pb.ImageRecord(id="img-meta", image=GOOD_IMAGE, metadata=struct({"x": NAN})),
                pb.ImageRecord(id="img-bomb", image=png_claiming(100_000, 100_000)),
            ]
        ),
        code="OK",
        items=[
            ("", ""),
            ("IMAGE_EMPTY", "records[1].image"),
            ("IMAGE_UNREADABLE", "records[2].image"),
            (BAD_ID, "records[3].id"),
            (BAD_MD, "records[4].metadata.x"),
            ("IMAGE_TOO_LARGE", "records[5].image"),
        ],
    ),
    Case(
        "ingest batch of 65",
        "search",
        "IngestImages",
        [pb.IngestImagesRequest(records=[pb.ImageRecord(image=GOOD_IMAGE)] * 65)],
        reason="INVALID_ARGUMENT",
        field="records",
        stream=True,
    ),
    Case(
        "ingest undecodable message",
        "search",
        "IngestImages",
        [raw(b"\x0a\x05ab")],
        reason=UNDECODABLE,
        field="request",
        stream=True,
    ),
    Case(
        "ingest bad namespace",
        "search",
        "IngestImages",
        [pb.IngestImagesRequest(namespace="\x7f", records=[pb.ImageRecord(image=GOOD_IMAGE)])],
        reason=BAD_NS,
        field="namespace",
        stream=True,
    ),
    # --- Fetch, Delete -----------------------------------------------------------------
    Case(
        "fetch 1001 ids",
        "search",
        "Fetch",
        pb.FetchRequest(ids=["a"] * 1001),
        reason="INVALID_ARGUMENT",
        field="ids",
    ),
    Case(
        "fetch a bad id",
        "search",
        "Fetch",
        pb.FetchRequest(ids=["a", "b", "\x01"]),
        reason=BAD_ID,
        field="ids[2]",
    ),
    Case(
        "fetch in a bad namespace",
        "search",
        "Fetch",
        pb.FetchRequest(ids=["a"], namespace="x" * 600),
        reason=BAD_NS,
        field="namespace",
    ),
    Case(
        "delete with no selector",
        "search",
        "Delete",
        pb.DeleteRequest(),
        reason="INVALID_ARGUMENT",
        field="selector",
    ),
    Case(
        "delete by an empty filter",
        "search",
        "Delete",
        pb.DeleteRequest(filter=struct({})),
        reason="INVALID_ARGUMENT",
        field="filter",
    ),
    Case(
        "delete a bad id",
        "search",
        "Delete",
        pb.DeleteRequest(ids=pb.IdList(ids=["\x00"])),
        reason=BAD_ID,
        field="ids[0]",
    ),
    Case(
        "delete by a bad filter",
        "search",
        "Delete",
        pb.DeleteRequest(filter=struct({"x": {"$foo": 1}})),
        reason=BAD_FILTER,
        field="filter.x.$foo",
    ),
    Case(
        "delete by a NaN filter",
        "search",
        "Delete",
        pb.DeleteRequest(filter=struct({"x": {"$lt": NAN}})),
        reason=BAD_FILTER,
        field="filter.x.$lt",
    ),
    Case(
        "delete garbage",
        "search",
        "Delete",
        raw(b"\x1a\x03\xff"),
        reason=UNDECODABLE,
        field="request",
    ),
    Case(
        "stats garbage",
        "search",
        "DescribeStats",
        raw(b"\x08"),
        reason=UNDECODABLE,
        field="request",
    ),
    # --- embed_service -------------------------------------------------------------------
    Case(
        "no images",
        "embed",
        "EmbedImages",
        epb.EmbedImagesRequest(),
        reason="INVALID_REQUEST",
        field="images",
    ),
    Case(
        "65 images to embed",
        "embed",
        "EmbedImages",
        epb.EmbedImagesRequest(images=[GOOD_IMAGE] * 65),
        reason="BATCH_TOO_LARGE",
        field="images",
    ),
    Case(
        "no texts",
        "embed",
        "EmbedTexts",
        epb.EmbedTextsRequest(),
        reason="INVALID_REQUEST",
        field="texts",
    ),
    Case(
        "65 texts",
        "embed",
        "EmbedTexts",
        epb.EmbedTextsRequest(texts=["a"] * 65),
        reason="BATCH_TOO_LARGE",
        field="texts",
    ),
    Case(
        "embed garbage",
        "embed",
        "EmbedImages",
        raw(b"\xff" * 9),
        reason=UNDECODABLE,
        field="request",
    ),
    Case(
        "texts of invalid UTF-8",
        "embed",
        "EmbedTexts",
        raw(b"\x0a\x02\xc3\x28"),
        reason=UNDECODABLE,
        field="request",
    ),
    Case(
        "model info garbage",
        "embed",
        "GetModelInfo",
        raw(b"\x07"),
        reason=UNDECODABLE,
        field="request",
    ),
    Case(
        "images each bad their own way",
        "embed",
        "EmbedImages",
        epb.EmbedImagesRequest(
            images=[GOOD_IMAGE, b"", b"junk", GOOD_IMAGE[:50], png_claiming(10_000, 6_000)]
        ),
        code="OK",
        items=[
            ("", ""),
            ("IMAGE_EMPTY", ""),
            ("IMAGE_UNREADABLE", ""),
            ("IMAGE_UNREADABLE", ""),
            ("IMAGE_TOO_LARGE", ""),
        ],
    ),
    Case(
        "texts empty, blank and huge",
        "embed",
        "EmbedTexts",
        epb.EmbedTextsRequest(texts=["", "  ", "x" * 100_000, "x" * 4096, "ok"]),
        code="OK",
        items=[("TEXT_EMPTY", ""), ("TEXT_EMPTY", ""), ("TEXT_TOO_LONG", ""), ("", ""), ("", "")],
    ),
]


@dataclass
class Stack:
    search: pb_grpc.SearchServiceStub
    embed: epb_grpc.EmbedServiceStub
    search_channel: grpc.aio.Channel
    embed_channel: grpc.aio.Channel
    acknowledged: dict[tuple[str, str], pb.VectorRecord] = field(default_factory=dict)
    baseline: tuple[Any, Any] | None = None


@pytest.fixture(scope="module")
async def stack(
    embed_app: EmbedApp, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("corpus")
    async with (
        serving_search(data_dir, embed_app.address) as (_, search_channel),
        grpc.aio.insecure_channel(embed_app.address) as embed_channel,
    ):
        built = Stack(
            pb_grpc.SearchServiceStub(search_channel),
            epb_grpc.EmbedServiceStub(embed_channel),
            search_channel,
            embed_channel,
        )
        seed = vectors(*[record(f"seed-{i}", unit(100 + i), label=f"l{i % 3}") for i in range(20)])
        await built.search.UpsertVectors(seed)
        built.acknowledged.update({("", r.id): r for r in seed.records})
        built.baseline = await known_good(built)
        yield built


async def known_good(stack: Stack) -> tuple[Any, Any]:
    found = await stack.search.Query(
        q(id="seed-3", top_k=5, filter=struct({"label": {"$ne": "l0"}}))
    )
    embedded = await stack.embed.EmbedImages(epb.EmbedImagesRequest(images=[GOOD_IMAGE]))
    return [(m.id, round(m.score, 5)) for m in found.matches], list(embedded.embeddings[0].values)


async def call(stack: Stack, case: Case) -> tuple[str, Any, Any]:
    """(code name, response or None, the rich status of a failure or None)."""
    channel = stack.search_channel if case.service == "search" else stack.embed_channel
    service = (
        "imagesearch.v1.SearchService"
        if case.service == "search"
        else "imagesearch.v1.EmbedService"
    )
    stub = stack.search if case.service == "search" else stack.embed
    try:
        if case.stream:
            method = channel.stream_stream(
                f"/{service}/{case.method}",
                request_serializer=_serialize,
                response_deserializer=pb.IngestImagesResponse.FromString,
            )
            replies = [r async for r in method(iter(case.request), timeout=30)]
            return "OK", replies, None
        if case.method == "FindDuplicates":
            replies = [r async for r in stack.search.FindDuplicates(case.request, timeout=30)]
            return "OK", replies, None
        if isinstance(case.request, bytes):
            method = channel.unary_unary(f"/{service}/{case.method}")
            return "OK", await method(case.request, timeout=30), None
        return "OK", await getattr(stub, case.method)(case.request, timeout=30), None
    except grpc.aio.AioRpcError as error:
        return error.code().name, None, status_from_error(error)


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def check_items(case: Case, reply: Any, stack: Stack) -> None:
    outcomes = reply.results if hasattr(reply, "results") else reply.embeddings
    assert len(outcomes) == len(case.items)
    for i, (outcome, (reason, where)) in enumerate(zip(outcomes, case.items, strict=True)):
        if not reason:
            assert not outcome.HasField("error"), (i, outcome.error.message)
            continue
        assert outcome.HasField("error"), i
        assert (outcome.error.code, reason_of(outcome.error)) == (3, reason), (i, outcome.error)
        if where:
            assert where in field_violations(outcome.error), (i, outcome.error)
        assert outcome.error.message
    if case.method == "UpsertVectors":
        for sent, outcome in zip(case.request.records, outcomes, strict=True):
            if not outcome.HasField("error"):
                stack.acknowledged[(case.request.namespace, sent.id)] = sent


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_each_bad_input_gets_its_exact_status_and_the_services_keep_serving(
    stack: Stack, case: Case
) -> None:
    code, reply, status = await call(stack, case)
    assert code not in ("INTERNAL", "UNKNOWN"), status
    assert code == case.code, status
    if case.code != "OK":
        assert status is not None, "no rich status"
        assert reason_of(status) == case.reason, status
        assert status.message, status
        if case.field is not None:
            assert case.field in field_violations(status), status
    elif case.items:
        check_items(case, reply, stack)
    for channel, name in (
        (stack.search_channel, "imagesearch.v1.SearchService"),
        (stack.embed_channel, "imagesearch.v1.EmbedService"),
    ):
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name)
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert await known_good(stack) == stack.baseline


def test_the_corpus_is_large_and_covers_both_services() -> None:
    assert len(CASES) + sum(len(c.items) for c in CASES) >= 60
    assert {c.service for c in CASES} == {"search", "embed"}


async def test_every_acknowledged_record_comes_back_intact(stack: Stack) -> None:
    assert len(stack.acknowledged) > 20, "the corpus stored its legal records first"
    for (namespace, rid), sent in stack.acknowledged.items():
        reply = await stack.search.Fetch(pb.FetchRequest(ids=[rid], namespace=namespace))
        assert [r.id for r in reply.records] == [rid]
        stored = reply.records[0]
        expected = np.asarray(sent.values, dtype=np.float64)
        expected /= np.abs(expected).max()
        expected /= np.linalg.norm(expected)
        assert np.allclose(stored.values, expected, atol=1e-6), rid
        sent_md = {k: v for k, v in _python(sent.metadata).items() if v is not None}
        assert _python(stored.metadata) == sent_md, rid
    found = await stack.search.Query(
        pb.QueryRequest(id="odd-key", top_k=100, filter=struct({ODD_KEY: "yes"}))
    )
    assert [m.id for m in found.matches] == ["odd-key"]


def _python(values: struct_pb2.Struct) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.fields.items():
        kind = value.WhichOneof("kind")
        if kind == "list_value":
            out[key] = [item.string_value for item in value.list_value.values]
        elif kind == "null_value":
            out[key] = None
        else:
            number = getattr(value, kind or "null_value")
            out[key] = (
                float(number)
                if isinstance(number, int | float) and not isinstance(number, bool)
                else number
            )
    return out
