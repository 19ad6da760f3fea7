"""Prometheus metrics shared by both services: the gRPC server series and /metrics.

The gRPC series follow go-grpc-prometheus / py-grpc-prometheus, so existing Grafana
dashboards work: `grpc_server_started_total`, `grpc_server_handled_total` (with
`grpc_code`) and the `grpc_server_handling_seconds` histogram, labelled by `grpc_type`,
`grpc_service` and `grpc_method`. One interceptor counts every RPC (health and
reflection too) before authentication, so refused calls are counted with their code.
Each app has its own registry; labels never carry ids, metadata values or tokens.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from imagesearch_serving.server import Continuation, behaviour_of, invoke

_KINDS = {
    (False, False): "unary",
    (True, False): "client_stream",
    (False, True): "server_stream",
    (True, True): "bidi_stream",
}


class GrpcMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC of the server it is given to."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, whatever their status.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, seconds.",
            labels,
            registry=registry,
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
        )
        self._children: dict[tuple[str, str], _Children] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        kind = _kind_of(str(details.method), handler)
        # The handler itself may differ from call to call (a later interceptor refuses
        # one caller and serves another), so it is wrapped per call; the label children,
        # which cost a lock and a lookup each, are resolved once per method.
        key = (str(details.method), kind)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._resolve(*key)
        name = behaviour_of(handler)
        behaviour = getattr(handler, name)

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:
            children.started.inc()
            began = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                return await invoke(handler, behaviour, request, context)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                children.handled(code).inc()
                children.seconds.observe(time.perf_counter() - began)

        return handler._replace(**{name: counted})

    def _resolve(self, full_method: str, kind: str) -> _Children:
        service, _, method = full_method.lstrip("/").rpartition("/")
        handled = self.handled
        by_code: dict[grpc.StatusCode, Any] = {}

        def handled_with(code: grpc.StatusCode) -> Any:
            child = by_code.get(code)
            if child is None:
                child = by_code[code] = handled.labels(kind, service, method, code.name)
            return child

        return _Children(
            started=self.started.labels(kind, service, method),
            seconds=self.seconds.labels(kind, service, method),
            handled=handled_with,
        )


@functools.cache
def _declared_kind(full_method: str) -> str | None:
    """The method's kind as its proto declares it; None for one the pool does not know."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    try:
        found = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return None
    return _KINDS[(found.client_streaming, found.server_streaming)]


def _kind_of(full_method: str, handler: grpc.RpcMethodHandler) -> str:
    # By the declaration: a refusal is served as a client stream whatever the method.
    declared = _declared_kind(full_method)
    return declared or _KINDS[(handler.request_streaming, handler.response_streaming)]


@dataclass(frozen=True, slots=True)
class _Children:
    started: Any
    seconds: Any
    handled: Callable[[grpc.StatusCode], Any]


class MetricsEndpoint:
    """Serves a registry's metrics in Prometheus' text format at http://ADDR/metrics."""

    def __init__(self, addr: str, registry: CollectorRegistry, *, variable: str) -> None:
        """Raises OSError, naming `variable`, when `addr` cannot be listened on."""
        host, _, port = addr.rpartition(":")
        try:
            self._server, self._thread = start_http_server(
                int(port), addr=host or "127.0.0.1", registry=registry
            )
        except (OSError, ValueError) as exc:
            raise OSError(f"{variable}={addr}: cannot serve metrics there ({exc})") from exc
        self.address = f"{host or '127.0.0.1'}:{self._server.server_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
