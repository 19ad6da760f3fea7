"""The gRPC servicer of SearchService: proto -> service call -> proto, nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2
from imagesearch.status import grpc_errors, status_for, to_rpc_status
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.v1 import search_service_pb2_grpc as pb_grpc
from imagesearch.wire import DEFAULT_NAMESPACE

from search_service.domain import ScoredRecord
from search_service.errors import (
    EmbedFailed,
    InvalidArgument,
    ModelMismatch,
    NotFound,
    Overloaded,
    PermissionDenied,
    ReplyTooLarge,
    StoreMisconfigured,
    Unauthenticated,
    Unavailable,
)
from search_service.query import Example, QuerySpec
from search_service.service import ImageItem, ItemResult, SearchService, VectorItem

log = logging.getLogger(__name__)

# Batches of one ingest stream that are embedded and stored at once; answers stay in order.
INGEST_PIPELINE_DEPTH = 2
# Room left in a reply for its envelope (and a ListRecords page's next_page_token).
REPLY_MARGIN_BYTES = 64 * 1024

STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ModelMismatch: grpc.StatusCode.FAILED_PRECONDITION,
    StoreMisconfigured: grpc.StatusCode.FAILED_PRECONDITION,
    Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ReplyTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    EmbedFailed: grpc.StatusCode.INTERNAL,
}
handle_errors = grpc_errors(STATUS_CODES, log)


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, service: SearchService, *, max_reply_bytes: int = 16 * 1024 * 1024) -> None:
        """`max_reply_bytes`: the server's send limit; ListRecords pages stay under it."""
        self._service = service
        self._reply_budget = max_reply_bytes - REPLY_MARGIN_BYTES

    @handle_errors
    async def UpsertImages(
        self, request: pb.UpsertImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertImagesResponse:
        results = await self._service.upsert_images(request.namespace, _images(request.records))
        return pb.UpsertImagesResponse(results=_results(results))

    async def IngestImages(
        self,
        requests: AsyncIterator[pb.IngestImagesRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.IngestImagesResponse]:
        # Up to INGEST_PIPELINE_DEPTH batches are in flight, so embedding the next batch
        # overlaps storing this one; each answer is sent only once its batch is stored.
        pending: list[asyncio.Task[list[ItemResult]]] = []
        try:
            async for request in requests:
                pending.append(
                    asyncio.create_task(
                        self._service.upsert_images(request.namespace, _images(request.records))
                    )
                )
                if len(pending) >= INGEST_PIPELINE_DEPTH:
                    yield pb.IngestImagesResponse(results=_results(await pending.pop(0)))
            while pending:
                yield pb.IngestImagesResponse(results=_results(await pending.pop(0)))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            for task in pending:
                task.cancel()

    @handle_errors
    async def UpsertVectors(
        self, request: pb.UpsertVectorsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertVectorsResponse:
        items = [VectorItem(r.id, r.values, _dict(r.metadata)) for r in request.records]
        results = await self._service.upsert_vectors(
            request.namespace, items, model_fingerprint=request.model_fingerprint
        )
        return pb.UpsertVectorsResponse(results=_results(results))

    @handle_errors
    async def Query(
        self, request: pb.QueryRequest, context: grpc.aio.ServicerContext
    ) -> pb.QueryResponse:
        spec = QuerySpec(
            query=_example(request, "query"),
            top_k=request.top_k,
            filter=_dict(request.filter) if request.HasField("filter") else None,
            namespace=request.namespace,
            include_metadata=request.include_metadata,
            include_values=request.include_values,
            min_score=request.min_score if request.HasField("min_score") else None,
            examples=[_example(e, "example") for e in request.examples],
            diversity=request.diversity,
            collapse_above=request.collapse_above,
            autocut=request.autocut,
        )
        matches = await self._service.query(spec)
        return pb.QueryResponse(namespace=request.namespace, matches=[_match(m) for m in matches])

    async def FindDuplicates(
        self, request: pb.FindDuplicatesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.FindDuplicatesResponse]:
        try:
            found = self._service.find_duplicates(
                request.namespace,
                request.min_score,
                _dict(request.filter) if request.HasField("filter") else None,
            )
            async for progress in found:
                reply = pb.FindDuplicatesResponse(scanned=progress.scanned, total=progress.total)
                for group in progress.groups:
                    message = pb.DuplicateGroup(members=[_match(m) for m in group.members])
                    # Groups go out in messages under the reply limit (one may be alone).
                    if reply.groups and reply.ByteSize() + message.ByteSize() > self._reply_budget:
                        yield reply
                        reply = pb.FindDuplicatesResponse(
                            scanned=progress.scanned, total=progress.total
                        )
                    reply.groups.append(message)
                yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)

    @handle_errors
    async def Fetch(
        self, request: pb.FetchRequest, context: grpc.aio.ServicerContext
    ) -> pb.FetchResponse:
        records = await self._service.fetch(request.namespace, list(request.ids))
        return pb.FetchResponse(
            namespace=request.namespace,
            records=[
                pb.VectorRecord(id=r.id, values=r.values.tolist(), metadata=_struct(r.metadata))
                for r in records
            ],
        )

    @handle_errors
    async def ListRecords(
        self, request: pb.ListRecordsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRecordsResponse:
        detailed = request.include_metadata or request.include_values
        page = await self._service.list_records(
            request.namespace,
            prefix=request.prefix,
            page_size=request.page_size,
            page_token=request.page_token,
            include_metadata=request.include_metadata,
            include_values=request.include_values,
        )
        reply = pb.ListRecordsResponse(namespace=request.namespace)
        size = 0
        for record, token in zip(page.records, page.tokens, strict=True):
            message = (
                pb.VectorRecord(
                    id=record.id,
                    values=record.values.tolist() if record.values is not None else [],
                    metadata=_struct(record.metadata) if record.metadata is not None else None,
                )
                if detailed
                else None
            )
            size += len(record.id) + 4 + (message.ByteSize() + 8 if message is not None else 0)
            # A page is cut short rather than overflow the reply; its token resumes after
            # the last record sent. The first record always goes: one fits by the limits.
            if size > self._reply_budget and reply.ids:
                break
            reply.ids.append(record.id)
            if message is not None:
                reply.records.append(message)
            reply.next_page_token = token
        return reply

    @handle_errors
    async def Delete(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteResponse:
        which = request.WhichOneof("selector")
        await self._service.delete(
            request.namespace,
            ids=list(request.ids.ids) if which == "ids" else None,
            filter=_dict(request.filter) if which == "filter" else None,
            delete_all=which == "delete_all" and request.delete_all,
        )
        return pb.DeleteResponse()

    @handle_errors
    async def DescribeStats(
        self, request: pb.DescribeStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DescribeStatsResponse:
        stats = await self._service.stats()
        model = stats.model
        return pb.DescribeStatsResponse(
            namespaces={
                (name or DEFAULT_NAMESPACE): pb.NamespaceStats(vector_count=count)
                for name, count in stats.namespaces.items()
            },
            total_vector_count=stats.total,
            dimension=model.dimension if model else 0,
            model_id=model.model_id if model else "",
            model_fingerprint=model.fingerprint if model else "",
            store=self._service.store.name,
        )


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """A stream handler cannot take @handle_errors; it ends with the same status."""
    await context.abort_with_status(to_rpc_status(status_for(exc, STATUS_CODES, log)))


def _match(m: ScoredRecord) -> pb.Match:
    return pb.Match(
        id=m.id,
        score=m.score,
        values=m.values.tolist() if m.values is not None else [],
        metadata=_struct(m.metadata) if m.metadata is not None else None,
        collapsed_ids=m.collapsed_ids,
    )


def _example(message: pb.QueryRequest | pb.QueryExample, oneof: str) -> Example:
    """What a QueryRequest's `query` or a QueryExample's `example` oneof holds (the same
    four fields), and the example's weight."""
    which = message.WhichOneof(oneof)
    weight = None
    if isinstance(message, pb.QueryExample) and message.HasField("weight"):
        weight = message.weight
    return Example(
        image=message.image if which == "image" else None,
        text=message.text if which == "text" else None,
        id=message.id if which == "id" else None,
        vector=message.vector.values if which == "vector" else None,
        weight=weight,
    )


def _images(records: Sequence[pb.ImageRecord]) -> list[ImageItem]:
    return [ImageItem(r.id, r.image, _dict(r.metadata)) for r in records]


def _results(results: Sequence[ItemResult]) -> list[pb.UpsertResult]:
    return [
        pb.UpsertResult(id=r.id)
        if r.error is None
        else pb.UpsertResult(id=r.id, error=status_for(r.error, STATUS_CODES, log))
        for r in results
    ]


def _dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python, faithfully: NaN and Infinity stay floats, so the validator
    can name the field that holds one (json_format would raise instead)."""
    return {key: _python(value) for key, value in struct.fields.items()}


def _python(value: struct_pb2.Value) -> Any:
    match value.WhichOneof("kind"):
        case "struct_value":
            return _dict(value.struct_value)
        case "list_value":
            return [_python(item) for item in value.list_value.values]
        case "number_value":
            return value.number_value
        case "string_value":
            return value.string_value
        case "bool_value":
            return value.bool_value
        case _:
            return None


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct
