"""ImageSearchClient: SearchService through the generated stubs, with plain Python types.

    with ImageSearchClient("127.0.0.1:50052") as client:
        client.upsert_images([ImageRecord(image=open("cat.jpg", "rb").read())])
        for match in client.query(text="a cat", top_k=5):
            print(match.id, match.score)

Every call has a deadline; failures raise `ImageSearchError` subclasses that carry
the gRPC code and the server's reason. TLS (`tls_ca`, and `tls_cert`/`tls_key` for
mutual TLS) and a bearer `token` default to IMAGESEARCH_TLS_CA, IMAGESEARCH_TLS_CERT,
IMAGESEARCH_TLS_KEY and IMAGESEARCH_TOKEN. `AsyncImageSearchClient` (imagesearch_client.aio)
has the same methods, as coroutines: both take their options from `base.py` and build
requests and read replies with `messages.py`, so they only differ in how they send.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.v1 import search_service_pb2 as pb

from imagesearch_client import messages as m
from imagesearch_client.base import (
    ClientBase,
    DeleteOptions,
    DuplicatesOptions,
    ListOptions,
    PageOptions,
    QueryOptions,
)
from imagesearch_client.errors import Unavailable, from_rpc_error
from imagesearch_client.messages import (
    DEFAULT_TARGET,
    DuplicatesProgress,
    FetchedRecord,
    ImageRecord,
    Match,
    Outcome,
    RecordPage,
    Stats,
    VectorRecord,
)


class ImageSearchClient(ClientBase[grpc.Channel]):
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
        super().__init__(target, timeout_s=timeout_s, tls_ca=tls_ca, tls_cert=tls_cert,
                         tls_key=tls_key, token=token, secure=grpc.secure_channel,
                         insecure=grpc.insecure_channel)  # fmt: skip

    def __enter__(self) -> ImageSearchClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Blocks until the service reports SERVING; raises Unavailable after timeout_s."""
        health = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service="")
        try:
            for reply in health.Watch(
                request, timeout=timeout_s, wait_for_ready=True, metadata=self._metadata
            ):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise from_rpc_error(error, self.target) from None
        raise Unavailable(m.not_ready(self.target, timeout_s), code="UNAVAILABLE")

    def upsert_images(
        self, records: Sequence[ImageRecord], *, namespace: str = ""
    ) -> list[Outcome]:
        request = pb.UpsertImagesRequest(namespace=namespace, records=m.images(records))
        return m.outcomes(self._call(self._stub.UpsertImages, request).results)

    def ingest(
        self, batches: Iterable[Sequence[ImageRecord]], *, namespace: str = "", window: int = 4
    ) -> Generator[list[Outcome], None, None]:
        """Streams batches (at most 64 images each); yields each batch's outcomes, in order,
        once it is stored. At most `window` batches are in flight, so memory stays bounded
        however many the iterable produces. Once the caller stops reading or the call
        ends, no further batch is taken, and a generator of batches is closed."""
        slots = threading.Semaphore(window)
        done = threading.Event()

        def requests() -> Iterator[pb.IngestImagesRequest]:
            source = iter(batches)
            try:
                for batch in source:
                    # gRPC reads this on a thread of its own: it must notice the end.
                    while not slots.acquire(timeout=0.1):
                        if done.is_set():
                            return
                    if done.is_set():
                        return
                    yield pb.IngestImagesRequest(namespace=namespace, records=m.images(batch))
            finally:
                m.close_source(source)

        # No overall deadline: a bulk ingest runs as long as it has images.
        call = self._stub.IngestImages(requests(), metadata=self._metadata)
        try:
            for reply in call:
                slots.release()
                yield m.outcomes(reply.results)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        finally:
            done.set()
            call.cancel()

    def upsert_vectors(
        self, records: Sequence[VectorRecord], *, namespace: str = "", model_fingerprint: str = ""
    ) -> list[Outcome]:
        """Stores vectors; with `model_fingerprint`, only if the service runs that model
        (FailedPrecondition otherwise, and nothing is stored)."""
        request = m.upsert_vectors_request(records, namespace, model_fingerprint)
        return m.outcomes(self._call(self._stub.UpsertVectors, request).results)

    def delete(self, **options: Unpack[DeleteOptions]) -> None:
        """Deletes by ids, by metadata filter, or everything in the namespace."""
        self._call(self._stub.Delete, m.delete_request(**options))

    def query(self, **options: Unpack[QueryOptions]) -> list[Match]:
        """The most similar stored records to exactly one of image, text, id or vector."""
        return m.matches(self._call(self._stub.Query, m.query_request(**options)))

    def find_duplicates(
        self, **options: Unpack[DuplicatesOptions]
    ) -> Generator[DuplicatesProgress, None, None]:
        """Groups of near-duplicates as the service completes them, with its progress
        (scanned of total); no deadline: a scan takes as long as the store is large."""
        call = self._stub.FindDuplicates(m.duplicates_request(**options), metadata=self._metadata)
        try:
            for reply in call:
                yield m.duplicates(reply)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        finally:
            call.cancel()

    def fetch(self, ids: Sequence[str], *, namespace: str = "") -> list[FetchedRecord]:
        """The stored records among `ids`, in that order; missing ids are left out."""
        reply = self._call(self._stub.Fetch, pb.FetchRequest(ids=ids, namespace=namespace))
        return m.fetched(reply.records)

    def list_records(self, **options: Unpack[PageOptions]) -> RecordPage:
        """One page of the records of `namespace` whose id starts with `prefix`."""
        return m.record_page(self._call(self._stub.ListRecords, m.list_request(**options)))

    def iter_pages(self, **options: Unpack[ListOptions]) -> Iterator[RecordPage]:
        """Every page of one listing, following the page tokens to the end."""
        token = ""
        while page := self.list_records(**options, page_token=token):
            yield page
            if not (token := page.next_page_token):
                return

    def stats(self) -> Stats:
        return m.stats(self._call(self._stub.DescribeStats, pb.DescribeStatsRequest()))

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None


__all__ = [
    "DEFAULT_TARGET",
    "FetchedRecord",
    "ImageRecord",
    "ImageSearchClient",
    "Match",
    "Outcome",
    "RecordPage",
    "Stats",
    "VectorRecord",
]
