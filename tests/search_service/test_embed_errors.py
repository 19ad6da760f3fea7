"""embed_service's own errors as search_service reports them: the reason kept, the code right.

A fault-injecting EmbedService peer (real gRPC, the shared server) answers model info
like the tiny model and fails EmbedTexts with the status a test asks for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from imagesearch.status import make_status, to_rpc_status
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from imagesearch_client import ImageSearchClient, ImageSearchError, InvalidArgument
from imagesearch_serving.server import GrpcServer

from tests.support.fixtures import StartSearch
from tests.support.stack import InThread


class FailingEmbed(pb_grpc.EmbedServiceServicer):
    def __init__(self) -> None:
        self.failure: tuple[grpc.StatusCode, str, str] = (grpc.StatusCode.INTERNAL, "BOOM", "")

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(model_id="fake", dimension=8, fingerprint="f" * 32)

    async def EmbedImages(
        self, request: pb.EmbedImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedImagesResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "texts only")
        raise AssertionError("unreachable")

    async def EmbedTexts(
        self, request: pb.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedTextsResponse:
        code, reason, field = self.failure
        violations = [(field, "bad")] if field else []
        status = make_status(code, reason, "injected", field_violations=violations)
        await context.abort_with_status(to_rpc_status(status))
        raise AssertionError("unreachable")


@pytest.fixture
async def failing_embed() -> AsyncIterator[tuple[FailingEmbed, str]]:
    servicer = FailingEmbed()
    server = GrpcServer(
        "127.0.0.1:0",
        service_names=["imagesearch.v1.EmbedService"],
        register=lambda s: pb_grpc.add_EmbedServiceServicer_to_server(servicer, s),
    )
    port = await server.start()
    await server.set_serving()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.mark.parametrize(
    ("code", "reason", "expected_code", "expected_reason"),
    [
        (grpc.StatusCode.INTERNAL, "BOOM", "INTERNAL", "BOOM"),
        (grpc.StatusCode.UNIMPLEMENTED, "", "INTERNAL", "EMBED_FAILED"),
        (grpc.StatusCode.FAILED_PRECONDITION, "ODD", "INTERNAL", "ODD"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", "RESOURCE_EXHAUSTED", "OVERLOADED"),
        (grpc.StatusCode.INVALID_ARGUMENT, "TEXT_TOO_ODD", "INVALID_ARGUMENT", "TEXT_TOO_ODD"),
    ],
)
async def test_embed_service_errors_keep_their_reason_and_are_not_called_retryable(
    failing_embed: tuple[FailingEmbed, str],
    start_search_app: StartSearch,
    code: grpc.StatusCode,
    reason: str,
    expected_code: str,
    expected_reason: str,
) -> None:
    servicer, target = failing_embed
    servicer.failure = (code, reason, "texts" if code == grpc.StatusCode.INVALID_ARGUMENT else "")
    search = await start_search_app(embed_target=target, embed_timeout_s=5.0)
    with (
        ImageSearchClient(search.address, timeout_s=20) as sync_client,
        pytest.raises(ImageSearchError) as caught,
    ):
        await InThread(sync_client).query(text="anything")
    assert (caught.value.code, caught.value.reason) == (expected_code, expected_reason)
    assert caught.value.code != "UNAVAILABLE"
    if isinstance(caught.value, InvalidArgument):
        assert "texts" in caught.value.fields
