"""What both clients share: the dataclasses callers see, requests built from them, and
replies turned back into them. The sync and async clients only add the calls."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from imagesearch.security import channel_credentials, token_metadata
from imagesearch.status import code_name, reason_of
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.wire import DEFAULT_NAMESPACE

DEFAULT_TARGET = "127.0.0.1:50052"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image to store; id "" means the SHA-256 of the bytes."""

    image: bytes
    id: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VectorRecord:
    id: str
    values: Sequence[float]
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one stored item: `ok`, or `reason` and `message` say why not."""

    id: str
    ok: bool
    reason: str = ""
    message: str = ""


# Scores at or above this are the same picture (re-encoded, resized); below, look-alikes.
EXACT_SCORE = 0.9999


@dataclass(frozen=True, slots=True)
class Match:
    id: str
    score: float
    metadata: dict[str, Any]
    values: list[float]
    # With collapse_above: the ids left out as near-duplicates of this match.
    collapsed_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Example:
    """One example of a query with several: one of image, text, id or vector, and a weight
    (negative: less like this)."""

    image: bytes | None = None
    text: str | None = None
    id: str | None = None
    vector: Sequence[float] | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class DuplicateGroup:
    """members[0] is the representative (score 1.0); the others' scores are cosines to it."""

    members: list[Match]

    @property
    def exact(self) -> bool:
        """Whether every member is the same picture as the representative."""
        return all(m.score >= EXACT_SCORE for m in self.members)


@dataclass(frozen=True, slots=True)
class DuplicatesProgress:
    """Groups found since the last message, and how far the scan is."""

    groups: list[DuplicateGroup]
    scanned: int
    total: int


@dataclass(frozen=True, slots=True)
class FetchedRecord:
    id: str
    values: list[float]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class RecordPage:
    """One page of a listing. `records` holds values/metadata only when they were asked
    for (otherwise it is empty); `next_page_token` is "" on the last page."""

    ids: list[str]
    records: list[FetchedRecord]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Stats:
    namespaces: dict[str, int]
    total: int
    dimension: int
    model_id: str
    model_fingerprint: str
    store: str


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how a client connects: credentials (None: plaintext) and call metadata."""

    target: str
    credentials: grpc.ChannelCredentials | None
    metadata: tuple[tuple[str, str], ...]


def connection(
    target: str | None,
    tls_ca: str | Path | None,
    tls_cert: str | Path | None,
    tls_key: str | Path | None,
    token: str | None,
) -> Connection:
    """Arguments first, then IMAGESEARCH_* variables; raises SecurityConfigError."""
    credentials = channel_credentials(
        _path(tls_ca, "IMAGESEARCH_TLS_CA"),
        _path(tls_cert, "IMAGESEARCH_TLS_CERT"),
        _path(tls_key, "IMAGESEARCH_TLS_KEY"),
        names=("IMAGESEARCH_TLS_CA", "IMAGESEARCH_TLS_CERT", "IMAGESEARCH_TLS_KEY"),
    )
    return Connection(
        target=target or os.environ.get("SEARCH_ADDR") or DEFAULT_TARGET,
        credentials=credentials,
        metadata=tuple(token_metadata(token or os.environ.get("IMAGESEARCH_TOKEN"))),
    )


# --- requests ---------------------------------------------------------------------


def images(records: Sequence[ImageRecord]) -> list[pb.ImageRecord]:
    return [pb.ImageRecord(id=r.id, image=r.image, metadata=_struct(r.metadata)) for r in records]


def upsert_vectors_request(
    records: Sequence[VectorRecord], namespace: str, model_fingerprint: str
) -> pb.UpsertVectorsRequest:
    return pb.UpsertVectorsRequest(
        namespace=namespace,
        records=[
            pb.VectorRecord(id=r.id, values=r.values, metadata=_struct(r.metadata)) for r in records
        ],
        model_fingerprint=model_fingerprint,
    )


def delete_request(
    *,
    ids: Sequence[str] | None = None,
    filter: Mapping[str, Any] | None = None,
    delete_all: bool = False,
    namespace: str = "",
) -> pb.DeleteRequest:
    if sum((ids is not None, filter is not None, delete_all)) != 1:
        raise ValueError("give exactly one of ids, filter or delete_all=True")
    request = pb.DeleteRequest(namespace=namespace)
    if ids is not None:
        request.ids.ids.extend(ids)
    elif filter is not None:
        request.filter.update(filter)
    else:
        request.delete_all = True
    return request


def query_request(
    *,
    image: bytes | None = None,
    text: str | None = None,
    id: str | None = None,
    vector: Sequence[float] | None = None,
    examples: Sequence[Example] = (),
    top_k: int = 10,
    filter: Mapping[str, Any] | None = None,
    namespace: str = "",
    include_metadata: bool = True,
    include_values: bool = False,
    min_score: float | None = None,
    diversity: float = 0.0,
    collapse_above: float = 0.0,
    autocut: int = 0,
) -> pb.QueryRequest:
    given = [x for x in (image, text, id, vector) if x is not None]
    if len(given) + bool(examples) != 1:
        raise ValueError("give exactly one of image, text, id or vector, or examples")
    request = pb.QueryRequest(
        top_k=top_k,
        namespace=namespace,
        include_metadata=include_metadata,
        include_values=include_values,
        diversity=diversity,
        collapse_above=collapse_above,
        autocut=autocut,
    )
    if examples:
        request.examples.extend(_example(e) for e in examples)
    else:
        _fill(request, Example(image, text, id, vector))
    if filter:
        request.filter.update(filter)
    if min_score is not None:
        request.min_score = min_score
    return request


def duplicates_request(
    *, min_score: float = 0.95, namespace: str = "", filter: Mapping[str, Any] | None = None
) -> pb.FindDuplicatesRequest:
    request = pb.FindDuplicatesRequest(namespace=namespace, min_score=min_score)
    if filter:
        request.filter.update(filter)
    return request


def _example(example: Example) -> pb.QueryExample:
    message = pb.QueryExample(weight=example.weight)
    _fill(message, example)
    return message


def _fill(message: pb.QueryRequest | pb.QueryExample, example: Example) -> None:
    """Sets the one of image, text, id, vector that `example` holds: QueryRequest's `query`
    and QueryExample's `example` are the same four fields."""
    if example.image is not None:
        message.image = example.image
    elif example.text is not None:
        message.text = example.text
    elif example.id is not None:
        message.id = example.id
    elif example.vector is not None:
        message.vector.values.extend(example.vector)


def list_request(
    *,
    namespace: str = "",
    prefix: str = "",
    page_size: int = 100,
    page_token: str = "",
    include_metadata: bool = False,
    include_values: bool = False,
) -> pb.ListRecordsRequest:
    return pb.ListRecordsRequest(
        namespace=namespace,
        prefix=prefix,
        page_size=page_size,
        page_token=page_token,
        include_metadata=include_metadata,
        include_values=include_values,
    )


# --- replies ----------------------------------------------------------------------


def outcomes(results: Iterable[pb.UpsertResult]) -> list[Outcome]:
    out = []
    for result in results:
        if result.HasField("error"):
            reason = reason_of(result.error) or code_name(result.error)
            out.append(Outcome(result.id, False, reason, result.error.message))
        else:
            out.append(Outcome(result.id, True))
    return out


def matches(reply: pb.QueryResponse) -> list[Match]:
    return [_match(m) for m in reply.matches]


def duplicates(reply: pb.FindDuplicatesResponse) -> DuplicatesProgress:
    groups = [DuplicateGroup([_match(m) for m in g.members]) for g in reply.groups]
    return DuplicatesProgress(groups, reply.scanned, reply.total)


def _match(m: pb.Match) -> Match:
    return Match(
        m.id, m.score, json_format.MessageToDict(m.metadata), list(m.values), list(m.collapsed_ids)
    )


def fetched(records: Iterable[pb.VectorRecord]) -> list[FetchedRecord]:
    return [
        FetchedRecord(r.id, list(r.values), json_format.MessageToDict(r.metadata)) for r in records
    ]


def record_page(reply: pb.ListRecordsResponse) -> RecordPage:
    return RecordPage(list(reply.ids), fetched(reply.records), reply.next_page_token)


def stats(reply: pb.DescribeStatsResponse) -> Stats:
    return Stats(
        namespaces={name: ns.vector_count for name, ns in reply.namespaces.items()},
        total=reply.total_vector_count,
        dimension=reply.dimension,
        model_id=reply.model_id,
        model_fingerprint=reply.model_fingerprint,
        store=reply.store,
    )


def listed_name(reported: str) -> str:
    """The namespace to pass to calls for a name DescribeStats reports."""
    return "" if reported == DEFAULT_NAMESPACE else reported


def reported_name(namespace: str) -> str:
    """The name DescribeStats reports `namespace` under."""
    return namespace or DEFAULT_NAMESPACE


def close_source(source: Iterator[Any]) -> None:
    """Closes a generator the caller handed over once nothing more is taken from it."""
    if isinstance(source, Generator):
        source.close()


def not_ready(target: str, timeout_s: float) -> str:
    return (
        f"{target} did not report SERVING within {timeout_s:.0f} s; is embed_service "
        "running (search_service waits for it)?"
    )


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _path(value: str | Path | None, variable: str) -> Path | None:
    chosen = value or os.environ.get(variable)
    return Path(chosen) if chosen else None
