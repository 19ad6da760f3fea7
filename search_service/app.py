"""The search_service process: open the store, check the model, serve until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from imagesearch.security import channel_credentials
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.v1 import search_service_pb2_grpc as pb_grpc
from imagesearch_serving.auth import TokenAuth, read_tokens, server_credentials
from imagesearch_serving.metrics import GrpcMetrics, MetricsEndpoint
from imagesearch_serving.server import REFLECTION_SERVICE, GrpcServer, host_of
from prometheus_client import CollectorRegistry

from search_service.config import SearchSettings
from search_service.embed_client import EmbedClient
from search_service.errors import Unavailable
from search_service.metrics import SearchMetrics
from search_service.server import REPLY_MARGIN_BYTES, SearchServicer
from search_service.service import SearchService
from search_service.stores import make_store
from search_service.stores.base import BuildsIndexes, VectorStore

log = logging.getLogger(__name__)

CONNECT_RETRY_FIRST_S = 0.5
CONNECT_RETRY_MAX_S = 5.0
# How often embed_service's health is checked, and how long it may be out of reach before
# the log says so and this service's own health turns NOT_SERVING.
EMBED_CHECK_EVERY_S = 1.0
EMBED_DOWN_AFTER_S = 3.0
VECTOR_COUNT_EVERY_S = 5.0

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SearchService"].full_name
# Reading the schema through server reflection is a read too: a read-only token may.
READ_METHODS = frozenset(
    f"/{SERVICE_NAME}/{m}"
    for m in ("Query", "Fetch", "ListRecords", "DescribeStats", "FindDuplicates")
) | frozenset({f"/{REFLECTION_SERVICE}/ServerReflectionInfo"})


class SearchApp:
    """Owns the server, the store and the embed client; `start` then `stop`."""

    def __init__(self, settings: SearchSettings, store: VectorStore | None = None) -> None:
        """Raises SecurityConfigError when a TLS or token setting cannot be used."""
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = SearchMetrics(self.registry)
        self.metrics_endpoint: MetricsEndpoint | None = None
        max_bytes = settings.max_message_mb * 1024 * 1024
        self.embed = EmbedClient(
            settings.embed_target,
            timeout_s=settings.embed_timeout_s,
            max_message_bytes=max_bytes,
            credentials=channel_credentials(
                settings.embed_target_ca,
                settings.embed_target_cert,
                settings.embed_target_key,
                names=("EMBED_TARGET_CA", "EMBED_TARGET_CERT", "EMBED_TARGET_KEY"),
            ),
            token=settings.embed_token.get_secret_value() if settings.embed_token else None,
            authority=settings.embed_target_authority,
            observe=lambda method, s: self.metrics.embed_seconds.labels(method).observe(s),
        )
        self.store = (
            store
            if store is not None
            else make_store(
                settings,
                on_index_build=self.metrics.observe_build,
                on_index_wait=self.metrics.index_wait_seconds.inc,
                on_store_error=lambda kind: self.metrics.store_errors.labels(kind).inc(),
                on_store_retry=self.metrics.store_retries.inc,
            )
        )
        self.service = SearchService(
            self.store, self.embed, max_reply_bytes=max_bytes - REPLY_MARGIN_BYTES
        )
        servicer = SearchServicer(self.service, max_reply_bytes=max_bytes)
        secret = settings.tokens.get_secret_value() if settings.tokens else None
        tokens = read_tokens(secret, settings.tokens_file, variable="SEARCH_TOKENS")
        readers = read_tokens(
            settings.read_tokens.get_secret_value() if settings.read_tokens else None,
            None,
            variable="SEARCH_READ_TOKENS",
        )
        auth = TokenAuth(tokens, read_tokens=readers, read_methods=READ_METHODS)
        self._server = GrpcServer(
            settings.addr,
            service_names=[SERVICE_NAME],
            register=lambda s: pb_grpc.add_SearchServiceServicer_to_server(servicer, s),
            max_message_bytes=max_bytes,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
            max_health_watchers=settings.max_health_watchers,
            stream_idle_s=settings.stream_idle_s,
            env_prefix="SEARCH",
            credentials=server_credentials(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca, prefix="SEARCH"
            ),
            interceptors=[GrpcMetrics(self.registry), *([auth] if tokens or readers else [])],
        )
        self.address = settings.addr
        self._connecting: asyncio.Task[None] | None = None
        self._counting: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self.embed_trouble: str | None = None  # why embed_service is out of reach, if it is

    async def start(self) -> str:
        """Opens the store and listens; health turns SERVING once embed_service does."""
        await self.service.open()
        if self.settings.metrics_addr:
            self.metrics_endpoint = MetricsEndpoint(
                self.settings.metrics_addr, self.registry, variable="SEARCH_METRICS_ADDR"
            )
            self._counting = asyncio.create_task(self._count_vectors(), name="count-vectors")
            log.info("metrics at http://%s/metrics", self.metrics_endpoint.address)
        port = await self._server.start()
        self.address = host_of(self.settings.addr, port)
        log.info(
            "search_service listening on %s (%s store, embed_service at %s)",
            self.address,
            self.store.name,
            self.settings.embed_target,
        )
        self._connecting = asyncio.create_task(self._connect(), name="connect-embed")
        self._watching = asyncio.create_task(self._watch_embed(), name="watch-embed")
        return self.address

    async def wait_serving(self) -> None:
        """Returns once health says SERVING (embed_service answered and the model checked)."""
        if self._connecting is not None:
            await asyncio.shield(self._connecting)

    async def _connect(self) -> None:
        delay = CONNECT_RETRY_FIRST_S
        while True:
            try:
                await self.service.connect()
                break
            except Unavailable as exc:
                # embed_service went away between answering health and model info.
                log.warning("connecting: %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, CONNECT_RETRY_MAX_S)
        if self.embed_trouble is None:
            await self._server.set_serving()
        log.info("search_service ready: embed_service at %s serves", self.settings.embed_target)

    async def _watch_embed(self) -> None:
        """Says in the log, once per change, when embed_service has been out of reach for
        EMBED_DOWN_AFTER_S and why (gRPC's words: TLS verification, connection refused,
        NOT_SERVING), and when it is back; health is NOT_SERVING meanwhile."""
        loop = asyncio.get_running_loop()
        since: float | None = None
        while True:
            trouble = await self.embed.trouble(EMBED_CHECK_EVERY_S * 2)
            now = loop.time()
            if trouble is None:
                since = None
                if self.embed_trouble is not None:
                    self.embed_trouble = None
                    log.info("embed_service at %s serves again", self.settings.embed_target)
                    if self._connecting is not None and self._connecting.done():
                        await self._server.set_serving()
            else:
                since = now if since is None else since
                if self.embed_trouble is None and now - since >= EMBED_DOWN_AFTER_S:
                    self.embed_trouble = trouble
                    log.error(
                        "embed_service at %s cannot be reached for %.0f s: %s; this service "
                        "is NOT_SERVING until it can",
                        self.settings.embed_target, now - since, trouble,
                    )  # fmt: skip
                    await self._server.set_not_serving()
            await asyncio.sleep(EMBED_CHECK_EVERY_S)

    async def _count_vectors(self) -> None:
        """Keeps the per-namespace gauge fresh; a stats call is cheap on every store."""
        counted = None
        while True:
            try:
                store = self.store
                if isinstance(store, BuildsIndexes):
                    # Its exact count holds the event loop (and the GIL) for a while at
                    # a million vectors: only when something changed since the last one.
                    changes = store.changes
                    if changes != counted:
                        self.metrics.observe_stats(await store.stats())
                        counted = changes
                    self.metrics.observe_index(*store.index_status(), store.building)
                else:
                    self.metrics.observe_stats(await store.stats())
            except Exception as exc:  # a store that is down shows in its own errors
                log.debug("counting vectors failed: %s", exc)
            await asyncio.sleep(VECTOR_COUNT_EVERY_S)

    async def stop(self, grace_s: float | None = None) -> None:
        for task in (self._counting, self._connecting, self._watching):
            if task is not None:
                task.cancel()
        await self._server.stop(self.settings.grace_s if grace_s is None else grace_s)
        await self.store.close()
        await self.embed.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()

    async def serve_until(self, stopping: asyncio.Event) -> None:
        """Serves until `stopping` is set; raises StoreMisconfigured if the store cannot serve."""
        signalled = asyncio.create_task(stopping.wait())
        watched: set[asyncio.Future[Any]] = {signalled}
        if self._connecting is not None:
            watched.add(self._connecting)
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        connecting = self._connecting
        failure = None
        if connecting is not None and connecting.done() and not connecting.cancelled():
            failure = connecting.exception()
        if failure is not None and not signalled.done():
            signalled.cancel()
            await self.stop(0)
            raise failure
        await signalled
        log.info("stopping: draining in-flight calls for up to %.0f s", self.settings.grace_s)
        await self.stop()
