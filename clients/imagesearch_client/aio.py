"""AsyncImageSearchClient: ImageSearchClient's surface on grpc.aio, for asyncio programs.

    async with AsyncImageSearchClient("127.0.0.1:50052") as client:
        for match in await client.query(text="a cat", top_k=5):
            print(match.id, match.score)

Same arguments, dataclasses, errors, deadlines and TLS/token options as the sync client;
both build their requests and read their replies with `imagesearch_client.messages`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.v1 import search_service_pb2_grpc as pb_grpc

from imagesearch_client import messages as m
from imagesearch_client.errors import Unavailable, from_rpc_error
from imagesearch_client.messages import (
    FetchedRecord,
    ImageRecord,
    Match,
    Outcome,
    RecordPage,
    Stats,
    VectorRecord,
)


class AsyncImageSearchClient:
    """An asyncio client; use it with `async with`, or `await close()`."""

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
        connection = m.connection(target, tls_ca, tls_cert, tls_key, token)
        self.target = connection.target
        self.timeout_s = timeout_s
        self._metadata = connection.metadata
        self._channel = (
            grpc.aio.secure_channel(self.target, connection.credentials, options=m.CHANNEL_OPTIONS)
            if connection.credentials is not None
            else grpc.aio.insecure_channel(self.target, options=m.CHANNEL_OPTIONS)
        )
        self._stub = pb_grpc.SearchServiceStub(self._channel)

    async def __aenter__(self) -> AsyncImageSearchClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Returns once the service reports SERVING; raises Unavailable after timeout_s."""
        health = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service="")
        try:
            async for reply in health.Watch(
                request, timeout=timeout_s, wait_for_ready=True, metadata=self._metadata
            ):
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise from_rpc_error(error, self.target) from None
        raise Unavailable(m.not_ready(self.target, timeout_s), code="UNAVAILABLE")

    # --- writes --------------------------------------------------------------------

    async def upsert_images(
        self, records: Sequence[ImageRecord], *, namespace: str = ""
    ) -> list[Outcome]:
        request = pb.UpsertImagesRequest(namespace=namespace, records=m.images(records))
        return m.outcomes((await self._call(self._stub.UpsertImages, request)).results)

    async def ingest(
        self,
        batches: Iterable[Sequence[ImageRecord]] | AsyncIterable[Sequence[ImageRecord]],
        *,
        namespace: str = "",
        window: int = 4,
    ) -> AsyncIterator[list[Outcome]]:
        """Streams batches; yields each batch's outcomes, in order, once it is stored.

        At most `window` batches are in flight. Each batch holds at most 64 images.
        """
        slots = asyncio.Semaphore(window)

        async def requests() -> AsyncIterator[pb.IngestImagesRequest]:
            async for batch in _aiter(batches):
                await slots.acquire()
                yield pb.IngestImagesRequest(namespace=namespace, records=m.images(batch))

        # No overall deadline: a bulk ingest runs as long as it has images.
        call = self._stub.IngestImages(requests(), metadata=self._metadata)
        try:
            async for reply in call:
                slots.release()
                yield m.outcomes(reply.results)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        finally:
            call.cancel()

    async def upsert_vectors(
        self,
        records: Sequence[VectorRecord],
        *,
        namespace: str = "",
        model_fingerprint: str = "",
    ) -> list[Outcome]:
        """Stores vectors; with `model_fingerprint`, only if the service runs that model
        (FailedPrecondition otherwise, and nothing is stored)."""
        request = m.upsert_vectors_request(records, namespace, model_fingerprint)
        return m.outcomes((await self._call(self._stub.UpsertVectors, request)).results)

    async def delete(
        self,
        *,
        ids: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        delete_all: bool = False,
        namespace: str = "",
    ) -> None:
        """Deletes by ids, by metadata filter, or everything in the namespace."""
        await self._call(self._stub.Delete, m.delete_request(ids, filter, delete_all, namespace))

    # --- reads ---------------------------------------------------------------------

    async def query(
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
        request = m.query_request(
            image=image,
            text=text,
            id=id,
            vector=vector,
            top_k=top_k,
            filter=filter,
            namespace=namespace,
            include_metadata=include_metadata,
            include_values=include_values,
            min_score=min_score,
        )
        return m.matches(await self._call(self._stub.Query, request))

    async def fetch(self, ids: Sequence[str], *, namespace: str = "") -> list[FetchedRecord]:
        """The stored records among `ids`, in that order; missing ids are left out."""
        reply = await self._call(self._stub.Fetch, pb.FetchRequest(ids=ids, namespace=namespace))
        return m.fetched(reply.records)

    async def list_records(
        self,
        *,
        namespace: str = "",
        prefix: str = "",
        page_size: int = 100,
        page_token: str = "",
        include_metadata: bool = False,
        include_values: bool = False,
    ) -> RecordPage:
        """One page of the records of `namespace` whose id starts with `prefix`."""
        request = m.list_request(
            namespace=namespace,
            prefix=prefix,
            page_size=page_size,
            page_token=page_token,
            include_metadata=include_metadata,
            include_values=include_values,
        )
        return m.record_page(await self._call(self._stub.ListRecords, request))

    async def iter_pages(
        self,
        *,
        namespace: str = "",
        prefix: str = "",
        page_size: int = 100,
        include_metadata: bool = False,
        include_values: bool = False,
    ) -> AsyncIterator[RecordPage]:
        """Every page of one listing, following the page tokens to the end."""
        token = ""
        while True:
            page = await self.list_records(
                namespace=namespace,
                prefix=prefix,
                page_size=page_size,
                page_token=token,
                include_metadata=include_metadata,
                include_values=include_values,
            )
            yield page
            token = page.next_page_token
            if not token:
                return

    async def stats(self) -> Stats:
        return m.stats(await self._call(self._stub.DescribeStats, pb.DescribeStatsRequest()))

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


__all__ = ["AsyncImageSearchClient"]
