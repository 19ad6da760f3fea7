"""search_service's client of embed_service: the generated stub, deadlines, retries.

Retries come from the channel's service config (UNAVAILABLE and RESOURCE_EXHAUSTED,
with backoff), never from loops here. The reconnect backoff is capped at a few
seconds so a restarted embed_service is picked up quickly. gRPC errors become
domain errors here, so service.py never sees grpc.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.security import token_metadata
from imagesearch.status import field_violations, reason_of, status_from_error
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from imagesearch.wire import REPLICA_HEADER

from search_service.domain import Embedded, Embeddings, ModelInfo
from search_service.errors import (
    EmbedFailed,
    EmbedUnavailable,
    InvalidArgument,
    Overloaded,
    SearchError,
)

SERVICE = "imagesearch.v1.EmbedService"
# Every address of EMBED_TARGET gets calls in turn, but only while its health says
# SERVING: a replica that is loading, draining or gone gets none.
SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": SERVICE},
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
                },
            }
        ],
    }
)


class EmbedClient:
    def __init__(
        self,
        target: str,
        *,
        timeout_s: float,
        max_message_bytes: int = 64 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        authority: str | None = None,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """`observe(method, seconds)` is told how long each call took; `authority` is the
        name TLS verifies (see `channel_authority`)."""
        self.target = target
        self._observe = observe
        self._timeout_s = timeout_s
        self._metadata = token_metadata(token)
        options = [
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        named = channel_authority(target, authority)
        if named is not None:
            options.append(("grpc.default_authority", named))
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=options)
        )
        self._stub = pb_grpc.EmbedServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def wait_until_serving(self) -> None:
        """Returns once embed_service's health says SERVING (its model is loaded).

        Watches the health stream with wait_for_ready, so it waits through
        embed_service not listening yet and through its model loading, without polling.
        """
        health = health_pb2_grpc.HealthStub(self._channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        while True:
            try:
                watch = health.Watch(
                    health_pb2.HealthCheckRequest(service=SERVICE), wait_for_ready=True
                )
                async for reply in watch:
                    if reply.status == serving:
                        watch.cancel()
                        return
            except grpc.aio.AioRpcError as error:
                # The stream ends when embed_service stops; watch again once it is back.
                if error.code() == grpc.StatusCode.CANCELLED:
                    raise

    async def trouble(self, timeout_s: float) -> str | None:
        """None while embed_service answers SERVING; else why not, as gRPC tells it (a TLS
        verification failure, a refused connection, NOT_SERVING)."""
        health = health_pb2_grpc.HealthStub(self._channel)
        try:
            reply = await health.Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return f"its health says {name}"
        return None

    async def model_info(self, timeout_s: float | None = None) -> ModelInfo:
        call = self._stub.GetModelInfo(
            pb.GetModelInfoRequest(), timeout=timeout_s or self._timeout_s, metadata=self._metadata
        )
        reply = await self._finish(call, "GetModelInfo")
        return ModelInfo(
            model_id=reply.model_id, dimension=reply.dimension, fingerprint=reply.fingerprint
        )

    async def embed_images(self, images: Sequence[bytes]) -> Embeddings:
        reply, replica = await self._embed("EmbedImages", pb.EmbedImagesRequest(images=images))
        items = [_embedded(e) for e in reply.embeddings]
        return Embeddings(items, reply.model_fingerprint, replica)

    async def embed_text(self, text: str) -> Embeddings:
        reply, replica = await self._embed("EmbedTexts", pb.EmbedTextsRequest(texts=[text]))
        return Embeddings([_embedded(reply.embeddings[0])], reply.model_fingerprint, replica)

    async def _embed(self, method: str, request: Any) -> tuple[Any, str]:
        """The reply, and the replica that sent it (its trailing metadata)."""
        call = getattr(self._stub, method)(
            request, timeout=self._timeout_s, metadata=self._metadata
        )
        reply = await self._finish(call, method)
        trailing = dict(await call.trailing_metadata() or ())
        return reply, str(trailing.get(REPLICA_HEADER, self.target))

    async def _finish(self, call: Any, method: str) -> Any:
        """Awaits a started call; gRPC errors become domain errors, the time is observed."""
        began = time.perf_counter()
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise self._domain_error(error) from None
        finally:
            if self._observe is not None:
                self._observe(method, time.perf_counter() - began)

    def _domain_error(self, error: grpc.aio.AioRpcError) -> SearchError:
        """The domain error for a failed call, keeping embed_service's reason and field."""
        code, detail = error.code(), error.details() or ""
        status = status_from_error(error)
        reason = reason_of(status) if status is not None else ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return EmbedUnavailable(
                f"embed_service at {self.target} did not answer ({code.name}: {detail}); "
                "check that it is running and that EMBED_TARGET points at it"
            )
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return Overloaded(
                f"embed_service is at capacity: {detail}; retry shortly", reason=reason
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument(
                f"embed_service refused the request: {detail}",
                field=next(iter(field_violations(status)), "") if status else "",
                reason=reason,
            )
        # Not the caller's doing (INTERNAL, UNIMPLEMENTED, ...): not retryable either.
        return EmbedFailed(
            f"embed_service at {self.target} failed the call ({code.name}: {detail})",
            reason=reason or "EMBED_FAILED",
        )


def channel_authority(target: str, override: str | None) -> str | None:
    """The authority to dial `target` with, where gRPC's own would not verify: `override`,
    or, for an `ipv4:`/`ipv6:` list whose addresses share one host, that host and the
    first port (gRPC's default is the whole comma-joined list, which no certificate can
    name). None: gRPC's default."""
    if override:
        return override
    scheme, _, addresses = target.partition(":")
    if scheme not in ("ipv4", "ipv6") or "," not in addresses:
        return None
    hosts = {address.rpartition(":")[0] for address in addresses.split(",")}
    if len(hosts) != 1:
        return None
    return addresses.split(",")[0]


def _embedded(embedding: pb.Embedding) -> Embedded:
    if embedding.HasField("error"):
        return Embedded(None, reason_of(embedding.error), embedding.error.message)
    return Embedded(np.asarray(embedding.values, dtype=np.float32))
