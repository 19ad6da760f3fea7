"""ImageSearchClient: SearchService through the generated stubs, with plain Python types.

    with ImageSearchClient("127.0.0.1:50052") as client:
        client.upsert_images([ImageRecord(image=open("cat.jpg", "rb").read())])
        for match in client.query(text="a cat", top_k=5):
            print(match.id, match.score)

Every call has a deadline; failures raise `ImageSearchError` subclasses that carry
the gRPC code and the server's reason. TLS (`tls_ca`, and `tls_cert`/`tls_key` for
mutual TLS) and a bearer `token` default to IMAGESEARCH_TLS_CA, IMAGESEARCH_TLS_CERT,
IMAGESEARCH_TLS_KEY and IMAGESEARCH_TOKEN.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.security import channel_credentials, token_metadata
from imagesearch.status import code_name, reason_of
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.v1 import search_service_pb2_grpc as pb_grpc

from imagesearch_client.errors import Unavailable, from_rpc_error

DEFAULT_TARGET = "127.0.0.1:50052"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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


@dataclass(frozen=True, slots=True)
class Match:
    id: str
    score: float
    metadata: dict[str, Any]
    values: list[float]


@dataclass(frozen=True, slots=True)
class FetchedRecord:
    id: str
    values: list[float]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Stats:
    namespaces: dict[str, int]
    total: int
    dimension: int
    model_id: str
    model_fingerprint: str
    store: str


class ImageSearchClient:
    """A synchronous client; use it as a context manager, or call `close()`."""

    def __init__(
        self,
        target: str | None = None,
        *,
        timeout_s: float = 60.0,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        """Raises SecurityConfigError when a TLS file cannot be used."""
        self.target = target or os.environ.get("SEARCH_ADDR") or DEFAULT_TARGET
        self.timeout_s = timeout_s
        credentials = channel_credentials(
            _path(tls_ca, "IMAGESEARCH_TLS_CA"),
            _path(tls_cert, "IMAGESEARCH_TLS_CERT"),
            _path(tls_key, "IMAGESEARCH_TLS_KEY"),
            names=("IMAGESEARCH_TLS_CA", "IMAGESEARCH_TLS_CERT", "IMAGESEARCH_TLS_KEY"),
        )
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = (
            grpc.secure_channel(self.target, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(self.target, options=options)
        )
        metadata = token_metadata(token or os.environ.get("IMAGESEARCH_TOKEN"))
        channel = grpc.intercept_channel(self._channel, _WithMetadata(metadata))
        self._stub = pb_grpc.SearchServiceStub(channel)

    def __enter__(self) -> ImageSearchClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Blocks until the service reports SERVING; raises Unavailable after timeout_s."""
        health = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service="")
        try:
            for reply in health.Watch(request, timeout=timeout_s, wait_for_ready=True):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise from_rpc_error(error, self.target) from None
        raise Unavailable(
            f"{self.target} did not report SERVING within {timeout_s:.0f} s; is embed_service "
            "running (search_service waits for it)?",
            code="UNAVAILABLE",
        )

    # --- writes --------------------------------------------------------------------

    def upsert_images(
        self, records: Sequence[ImageRecord], *, namespace: str = ""
    ) -> list[Outcome]:
        request = pb.UpsertImagesRequest(namespace=namespace, records=_images(records))
        reply = self._call(self._stub.UpsertImages, request)
        return _outcomes(reply.results)

    def ingest(
        self,
        batches: Iterable[Sequence[ImageRecord]],
        *,
        namespace: str = "",
        window: int = 4,
    ) -> Iterator[list[Outcome]]:
        """Streams batches; yields each batch's outcomes, in order, once it is stored.

        At most `window` batches are in flight, so memory stays bounded however many
        images the iterable produces. Each batch holds at most 64 images.
        """
        slots = threading.Semaphore(window)
        done = threading.Event()

        def requests() -> Iterator[pb.IngestImagesRequest]:
            for batch in batches:
                while not slots.acquire(timeout=0.1):
                    if done.is_set():
                        return
                yield pb.IngestImagesRequest(namespace=namespace, records=_images(batch))

        # No overall deadline: a bulk ingest runs as long as it has images.
        call = self._stub.IngestImages(requests())
        try:
            for reply in call:
                slots.release()
                yield _outcomes(reply.results)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        finally:
            done.set()
            call.cancel()

    def upsert_vectors(
        self, records: Sequence[VectorRecord], *, namespace: str = ""
    ) -> list[Outcome]:
        request = pb.UpsertVectorsRequest(
            namespace=namespace,
            records=[
                pb.VectorRecord(id=r.id, values=r.values, metadata=_struct(r.metadata))
                for r in records
            ],
        )
        return _outcomes(self._call(self._stub.UpsertVectors, request).results)

    def delete(
        self,
        *,
        ids: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        delete_all: bool = False,
        namespace: str = "",
    ) -> None:
        """Deletes by ids, by metadata filter, or everything in the namespace."""
        if sum((ids is not None, filter is not None, delete_all)) != 1:
            raise ValueError("give exactly one of ids, filter or delete_all=True")
        request = pb.DeleteRequest(namespace=namespace)
        if ids is not None:
            request.ids.ids.extend(ids)
        elif filter is not None:
            request.filter.update(filter)
        else:
            request.delete_all = True
        self._call(self._stub.Delete, request)

    # --- reads ---------------------------------------------------------------------

    def query(
        self,
        *,
        image: bytes | None = None,
        text: str | None = None,
        id: str | None = None,
        vector: Sequence[float] | None = None,
        top_k: int = 10,
        filter: Mapping[str, Any] | None = None,
        namespace: str = "",
        include_metadata: bool = True,
        include_values: bool = False,
        min_score: float | None = None,
    ) -> list[Match]:
        """The most similar stored records to exactly one of image, text, id or vector."""
        given = [x for x in (image, text, id, vector) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of image, text, id or vector")
        request = pb.QueryRequest(
            top_k=top_k,
            namespace=namespace,
            include_metadata=include_metadata,
            include_values=include_values,
        )
        if image is not None:
            request.image = image
        elif text is not None:
            request.text = text
        elif id is not None:
            request.id = id
        else:
            assert vector is not None
            request.vector.values.extend(vector)
        if filter:
            request.filter.update(filter)
        if min_score is not None:
            request.min_score = min_score
        reply = self._call(self._stub.Query, request)
        return [
            Match(m.id, m.score, json_format.MessageToDict(m.metadata), list(m.values))
            for m in reply.matches
        ]

    def fetch(self, ids: Sequence[str], *, namespace: str = "") -> list[FetchedRecord]:
        """The stored records among `ids`, in that order; missing ids are left out."""
        reply = self._call(self._stub.Fetch, pb.FetchRequest(ids=ids, namespace=namespace))
        return [
            FetchedRecord(r.id, list(r.values), json_format.MessageToDict(r.metadata))
            for r in reply.records
        ]

    def stats(self) -> Stats:
        reply = self._call(self._stub.DescribeStats, pb.DescribeStatsRequest())
        return Stats(
            namespaces={name: ns.vector_count for name, ns in reply.namespaces.items()},
            total=reply.total_vector_count,
            dimension=reply.dimension,
            model_id=reply.model_id,
            model_fingerprint=reply.model_fingerprint,
            store=reply.store,
        )

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None


def _images(records: Sequence[ImageRecord]) -> list[pb.ImageRecord]:
    return [pb.ImageRecord(id=r.id, image=r.image, metadata=_struct(r.metadata)) for r in records]


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


def _outcomes(results: Iterable[pb.UpsertResult]) -> list[Outcome]:
    out = []
    for result in results:
        if result.HasField("error"):
            reason = reason_of(result.error) or code_name(result.error)
            out.append(Outcome(result.id, False, reason, result.error.message))
        else:
            out.append(Outcome(result.id, True))
    return out


def _path(value: str | Path | None, variable: str) -> Path | None:
    chosen = value or os.environ.get(variable)
    return Path(chosen) if chosen else None


class _Details(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(self, base: grpc.ClientCallDetails, metadata: Sequence[tuple[str, str]]) -> None:
        self.method = base.method
        self.timeout = base.timeout
        self.metadata = [*(base.metadata or ()), *metadata]
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _WithMetadata(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """Adds the same metadata (the bearer token) to every call of a channel."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = metadata

    def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_Details(details, self._metadata), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call
