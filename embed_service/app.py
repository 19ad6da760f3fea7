"""The embed_service process: server first (NOT_SERVING), then the model, then SERVING."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from imagesearch_serving.auth import TokenAuth, read_tokens, server_credentials
from imagesearch_serving.metrics import GrpcMetrics, MetricsEndpoint
from imagesearch_serving.server import GrpcServer, host_of
from prometheus_client import CollectorRegistry

from embed_service.config import EmbedSettings
from embed_service.engine import EmbedEngine
from embed_service.errors import ModelNotReady
from embed_service.metrics import EmbedMetrics
from embed_service.model import EmbeddingModel
from embed_service.server import EmbedServicer

log = logging.getLogger(__name__)

T = TypeVar("T")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbedService"].full_name


class EmbedApp:
    """Owns the server and the engine; `start`, `load`, `stop` in that order."""

    def __init__(self, settings: EmbedSettings) -> None:
        """Raises SecurityConfigError when a TLS or token setting cannot be used."""
        self.settings = settings
        self.engine: EmbedEngine | None = None
        servicer = EmbedServicer(self._require_engine, lambda: self.address)
        tokens = read_tokens(
            settings.tokens.get_secret_value() if settings.tokens else None,
            settings.tokens_file,
            variable="EMBED_TOKENS",
        )
        self.registry = CollectorRegistry()
        self.metrics = EmbedMetrics(self.registry)
        self.metrics_endpoint: MetricsEndpoint | None = None
        self._server = GrpcServer(
            settings.addr,
            service_names=[SERVICE_NAME],
            register=lambda s: pb_grpc.add_EmbedServiceServicer_to_server(servicer, s),
            max_message_bytes=settings.max_message_mb * 1024 * 1024,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_health_watchers=settings.max_health_watchers,
            env_prefix="EMBED",
            credentials=server_credentials(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca, prefix="EMBED"
            ),
            interceptors=[GrpcMetrics(self.registry), *([TokenAuth(tokens)] if tokens else [])],
        )
        self.address = settings.addr

    async def start(self) -> str:
        if self.settings.metrics_addr:
            self.metrics_endpoint = MetricsEndpoint(
                self.settings.metrics_addr, self.registry, variable="EMBED_METRICS_ADDR"
            )
            log.info("metrics at http://%s/metrics", self.metrics_endpoint.address)
        port = await self._server.start()
        self.address = host_of(self.settings.addr, port)
        log.info("embed_service listening on %s (loading %s)", self.address, self.settings.model)
        return self.address

    async def load(self) -> None:
        """Loads and warms the model, then reports SERVING. Raises ModelLoadError."""
        s = self.settings
        model = await _in_daemon_thread(
            functools.partial(
                EmbeddingModel.load,
                s.model,
                device=s.device,
                precision=s.precision,
                threads=s.torch_threads,
                backend=s.backend,
                cache_dir=s.cache_dir,
                probe_batch=min(s.model_batch_size, 16),
            )
        )
        engine = EmbedEngine(model, s, self.metrics)
        await engine.start()
        await engine.warm_up()
        self.engine = engine
        await self._server.set_serving()
        log.info("embed_service ready: %s", engine.info())

    async def stop(self, grace_s: float | None = None) -> None:
        await self._server.stop(self.settings.grace_s if grace_s is None else grace_s)
        if self.engine is not None:
            await self.engine.stop()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()

    async def serve_until(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        log.info("stopping: draining in-flight calls for up to %.0f s", self.settings.grace_s)
        await self.stop()

    def _require_engine(self) -> EmbedEngine:
        if self.engine is None:
            raise ModelNotReady("the model is still loading; retry in a few seconds")
        return self.engine


async def _in_daemon_thread(work: Callable[[], T]) -> T:
    """Runs `work` on a daemon thread: a stop while a model loads (minutes, from a hub)
    ends the process at once, where asyncio's executor would wait for the load."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="load-model", daemon=True).start()
    return await done


def _settle(future: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    if future.done():  # the caller stopped waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]
