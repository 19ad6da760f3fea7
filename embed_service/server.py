"""The gRPC servicer of EmbedService: proto -> engine call -> proto, nothing else."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc
from imagesearch.status import grpc_errors, make_status
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from imagesearch.wire import REPLICA_HEADER

from embed_service.engine import EmbeddingResult, EmbedEngine
from embed_service.errors import BatcherStopped, InvalidRequest, ModelNotReady, Overloaded

log = logging.getLogger(__name__)

handle_errors = grpc_errors(
    {
        InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
        Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
        ModelNotReady: grpc.StatusCode.UNAVAILABLE,
        BatcherStopped: grpc.StatusCode.UNAVAILABLE,
    },
    log,
)

PRECISIONS = {
    "fp32": pb.PRECISION_FLOAT32,
    "int8": pb.PRECISION_INT8,
    "bf16": pb.PRECISION_BFLOAT16,
    "fp16": pb.PRECISION_FLOAT16,
}
RUNTIMES = {"torch": pb.RUNTIME_TORCH, "onnx": pb.RUNTIME_ONNX}


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    def __init__(self, engine: Callable[[], EmbedEngine], replica: Callable[[], str]) -> None:
        # A callable, because the server answers (UNAVAILABLE) while the model loads.
        self._engine = engine
        # This replica's address, sent with every embedding so a caller spreading calls
        # over several replicas can say which one answered.
        self._replica = replica

    @handle_errors
    async def EmbedImages(
        self, request: pb.EmbedImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedImagesResponse:
        engine = self._engine()
        results = await engine.embed_images(request.images)
        context.set_trailing_metadata(((REPLICA_HEADER, self._replica()),))
        return pb.EmbedImagesResponse(
            embeddings=_embeddings(results), model_fingerprint=engine.info().fingerprint
        )

    @handle_errors
    async def EmbedTexts(
        self, request: pb.EmbedTextsRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmbedTextsResponse:
        engine = self._engine()
        results = await engine.embed_texts(request.texts)
        context.set_trailing_metadata(((REPLICA_HEADER, self._replica()),))
        return pb.EmbedTextsResponse(
            embeddings=_embeddings(results), model_fingerprint=engine.info().fingerprint
        )

    @handle_errors
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelInfoResponse:
        info = self._engine().info()
        return pb.GetModelInfoResponse(
            model_id=info.model_id,
            dimension=info.dimension,
            fingerprint=info.fingerprint,
            device=info.device,
            precision=PRECISIONS.get(info.precision, pb.PRECISION_UNSPECIFIED),
            runtime=RUNTIMES.get(info.runtime, pb.RUNTIME_UNSPECIFIED),
            max_batch_size=info.max_batch_size,
            max_text_tokens=info.max_text_tokens,
            image_size=info.image_size,
            family=info.family,
        )


def _embeddings(results: Sequence[EmbeddingResult]) -> list[pb.Embedding]:
    out = []
    for result in results:
        if result.error is not None:
            error = make_status(
                grpc.StatusCode.INVALID_ARGUMENT, result.error.reason, str(result.error)
            )
            out.append(pb.Embedding(error=error))
        else:
            assert result.vector is not None
            out.append(pb.Embedding(values=result.vector.tolist(), truncated=result.truncated))
    return out
