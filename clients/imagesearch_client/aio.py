"""AsyncImageSearchClient: ImageSearchClient's methods as coroutines, on grpc.aio.

    async with AsyncImageSearchClient("127.0.0.1:50052") as client:
        for match in await client.query(text="a cat", top_k=5):
            print(match.id, match.score)

The options (`base.py`), requests and replies (`messages.py`), errors, deadlines and
TLS/token settings are the sync client's own; only the sending differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

import grpc
import grpc.aio
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
    DuplicatesProgress,
    FetchedRecord,
    ImageRecord,
    Match,
    Outcome,
    RecordPage,
    Stats,
    VectorRecord,
)


class AsyncImageSearchClient(ClientBase[grpc.aio.Channel]):
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
        super().__init__(target, timeout_s=timeout_s, tls_ca=tls_ca, tls_cert=tls_cert,
                         tls_key=tls_key, token=token, secure=grpc.aio.secure_channel,
                         insecure=grpc.aio.insecure_channel)  # fmt: skip

    async def __aenter__(self) -> AsyncImageSearchClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Returns once the service reports SERVING; raises Unavailable after timeout_s."""
        watch = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=""),
            timeout=timeout_s, wait_for_ready=True, metadata=self._metadata,
        )  # fmt: skip
        try:
            async for reply in watch:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise from_rpc_error(error, self.target) from None
        raise Unavailable(m.not_ready(self.target, timeout_s), code="UNAVAILABLE")

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
    ) -> AsyncGenerator[list[Outcome], None]:
        """The sync client's `ingest`, taking batches from an iterable or an async one."""
        slots = asyncio.Semaphore(window)

        async def requests() -> AsyncIterator[pb.IngestImagesRequest]:
            # Cancelled with the call, so nothing more is taken from `batches` after it.
            source = _aiter(batches)
            try:
                async for batch in source:
                    await slots.acquire()
                    yield pb.IngestImagesRequest(namespace=namespace, records=m.images(batch))
            finally:
                await source.aclose()

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
        self, records: Sequence[VectorRecord], *, namespace: str = "", model_fingerprint: str = ""
    ) -> list[Outcome]:
        request = m.upsert_vectors_request(records, namespace, model_fingerprint)
        return m.outcomes((await self._call(self._stub.UpsertVectors, request)).results)

    async def delete(self, **options: Unpack[DeleteOptions]) -> None:
        await self._call(self._stub.Delete, m.delete_request(**options))

    async def query(self, **options: Unpack[QueryOptions]) -> list[Match]:
        return m.matches(await self._call(self._stub.Query, m.query_request(**options)))

    async def find_duplicates(
        self, **options: Unpack[DuplicatesOptions]
    ) -> AsyncGenerator[DuplicatesProgress, None]:
        call = self._stub.FindDuplicates(m.duplicates_request(**options), metadata=self._metadata)
        try:
            async for reply in call:
                yield m.duplicates(reply)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        finally:
            call.cancel()

    async def fetch(self, ids: Sequence[str], *, namespace: str = "") -> list[FetchedRecord]:
        request = pb.FetchRequest(ids=ids, namespace=namespace)
        return m.fetched((await self._call(self._stub.Fetch, request)).records)

    async def list_records(self, **options: Unpack[PageOptions]) -> RecordPage:
        return m.record_page(await self._call(self._stub.ListRecords, m.list_request(**options)))

    async def iter_pages(self, **options: Unpack[ListOptions]) -> AsyncIterator[RecordPage]:
        token = ""
        while page := await self.list_records(**options, page_token=token):
            yield page
            if not (token := page.next_page_token):
                return

    async def stats(self) -> Stats:
        return m.stats(await self._call(self._stub.DescribeStats, pb.DescribeStatsRequest()))

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
    if isinstance(items, AsyncIterable):
        source = aiter(items)
        try:
            async for item in source:
                yield item
        finally:
            if isinstance(source, AsyncGenerator):
                await source.aclose()
    else:
        plain = iter(items)
        try:
            for item in plain:
                yield item
        finally:
            m.close_source(plain)


__all__ = ["AsyncImageSearchClient"]
