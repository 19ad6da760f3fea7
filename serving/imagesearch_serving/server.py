"""A grpc.aio server with health and reflection, shared by both services.

Health starts NOT_SERVING and turns SERVING only when the service says it is ready;
stopping turns it NOT_SERVING first, so load balancers drain it, then lets
in-flight calls finish within the grace period. Health Watch streams end once they
have told their watcher NOT_SERVING: they are not work in flight, and would otherwise
hold every stop for its whole grace period.

Guards on every RPC:
- admission (`Admission`): the service's own calls, health Watch streams and health
  Checks each have a budget of their own, so callers who need no token (health is exempt
  from tokens, for load balancers and probes) can never take the places that
  authenticated calls need. A call past its budget is RESOURCE_EXHAUSTED before its
  message is read; a call refused for its token takes no place at all. gRPC's own limit
  stays above the three together, so memory stays bounded by it x max_message_bytes;
- a client stream that sends nothing for `stream_idle_s` ends DEADLINE_EXCEEDED, so an
  idle stream gives its place back;
- a request that cannot be decoded (not protobuf of that type, or nested deeper than
  protobuf's decoder allows) is INVALID_ARGUMENT with a message, never UNKNOWN.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import sys
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from imagesearch.status import make_status, to_rpc_status

log = logging.getLogger(__name__)


class GrpcServer:
    def __init__(
        self,
        addr: str,
        *,
        service_names: Sequence[str],
        register: Callable[[grpc.aio.Server], None],
        max_message_bytes: int = 4 * 1024 * 1024,
        max_concurrent_rpcs: int = 16,
        max_health_watchers: int = 32,
        stream_idle_s: float | None = None,
        env_prefix: str = "",
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        self._addr = addr
        self._service_names = list(service_names)
        self._credentials = credentials
        admission = Admission(max_concurrent_rpcs, max_health_watchers, env_prefix=env_prefix)
        self._server = grpc.aio.server(
            # Authentication first: a refused caller's request is never decoded, and takes
            # no place in admission's budgets (its handler never runs).
            interceptors=[*interceptors, admission, DecodeGuard(stream_idle_s)],
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
            # A ceiling above admission's budgets: reached only by callers refused for their
            # token arriving faster than they are answered, it bounds their messages too.
            maximum_concurrent_rpcs=admission.ceiling,
        )
        self._health = Health()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        register(self._server)
        reflection.enable_server_reflection(
            [*self._service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], self._server
        )
        self.port = 0

    async def start(self) -> int:
        """Binds and starts serving (NOT_SERVING until `set_serving`); returns the port."""
        try:
            if self._credentials is not None:
                self.port = self._server.add_secure_port(self._addr, self._credentials)
            else:
                self.port = self._server.add_insecure_port(self._addr)
        except RuntimeError:  # gRPC's "Failed to bind"; it says why only in its own log
            self.port = 0
        if self.port == 0:
            raise OSError(f"could not listen on {self._addr}: the address is in use or invalid")
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        return self.port

    async def set_serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace_s: float) -> None:
        await self._health.drain()
        await self._server.stop(grace_s)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def _set(self, status: ServingStatus) -> None:
        for name in ["", *self._service_names]:
            await self._health.set(name, status)


# What a grpc.aio server interceptor is handed to reach the next one, or the servicer.
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]
BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def behaviour_of(handler: grpc.RpcMethodHandler) -> str:
    """The name of the one behaviour a method handler has (unary_unary, ...)."""
    return next(name for name in BEHAVIOURS if getattr(handler, name) is not None)


HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICE: str = reflection.SERVICE_NAME
# The generated enum's value type (an int); health_pb2 carries no stubs mypy can read.
ServingStatus = int


class Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 (Check and Watch), whose Watch streams end when the server drains."""

    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {}
        self._changed = asyncio.Condition()
        self._draining = False

    async def set(self, service: str, status: ServingStatus) -> None:
        async with self._changed:
            if not self._draining:
                self._status[service] = status
                self._changed.notify_all()

    async def drain(self) -> None:
        """Every service NOT_SERVING from now on; watchers are told, then their streams end."""
        async with self._changed:
            self._draining = True
            for service in self._status:
                self._status[service] = health_pb2.HealthCheckResponse.NOT_SERVING
            self._changed.notify_all()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> None:
        unknown = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        sent: ServingStatus | None = None
        while True:
            status = self._status.get(request.service, unknown)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if self._draining:
                return
            async with self._changed:
                if self._status.get(request.service, unknown) == sent and not self._draining:
                    await self._changed.wait()


HEALTH_PREFIX = f"/{HEALTH_SERVICE}/"
HEALTH_WATCH = f"{HEALTH_PREFIX}Watch"
# Check answers at once; a few at a time is plenty for any number of probes.
HEALTH_CHECKS = 8


def refusal(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, reason: str, message: str
) -> grpc.RpcMethodHandler:
    """A handler that answers `code` without reading the request at all.

    Served as a client stream whatever the method's kind: gRPC reads a unary request
    whole before its handler runs, so a refused 16 MiB request would be read first.
    The wire does not tell the kinds apart; the caller sees only the status."""
    status = to_rpc_status(make_status(code, reason, message))

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort_with_status(status)

    return grpc.stream_unary_rpc_method_handler(
        refuse, response_serializer=handler.response_serializer
    )


class Admission(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Three budgets of calls at once: the service's own RPCs (`max_rpcs`), health Watch
    streams (`max_watchers`) and health Checks (HEALTH_CHECKS).

    Health needs no token, so without budgets of its own a stranger's Watch streams, which
    live as long as the caller likes, could fill every place. A place is taken before the
    request is read (a call past its budget is refused unread) and given back when the
    handler ends, or, for a call that ended before its handler ran (a client gone while
    sending), when gRPC lets go of that call's handler."""

    def __init__(self, max_rpcs: int, max_watchers: int, *, env_prefix: str = "") -> None:
        variables = (f"{env_prefix}_MAX_CONCURRENT_RPCS", f"{env_prefix}_MAX_HEALTH_WATCHERS")
        self._limits = {"rpc": max_rpcs, "watch": max_watchers, "check": HEALTH_CHECKS}
        self._running = dict.fromkeys(self._limits, 0)
        self._refusals = {
            "rpc": f"the service is serving its limit of {max_rpcs} calls at once "
            f"({variables[0]}); retry with backoff",
            "watch": f"the service has its limit of {max_watchers} health Watch streams open "
            f"({variables[1]}); use Check, or retry later",
            "check": f"{HEALTH_CHECKS} health checks are being answered; retry with backoff",
        }
        # gRPC's own limit: room for every budget, and as many callers again on their way
        # to a refusal for their token (answered without reading their message).
        self.ceiling = 2 * max_rpcs + max_watchers + HEALTH_CHECKS
        self._refused: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = str(details.method)
        budget = "watch" if method == HEALTH_WATCH else "check" if method.startswith(
            HEALTH_PREFIX
        ) else "rpc"  # fmt: skip
        if self._running[budget] >= self._limits[budget]:
            if method not in self._refused:
                self._refused[method] = refusal(
                    handler,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "TOO_MANY_CALLS",
                    self._refusals[budget],
                )
            return self._refused[method]
        self._running[budget] += 1
        return self._holding(handler, _Place(self._running, budget))

    @staticmethod
    def _holding(handler: grpc.RpcMethodHandler, place: _Place) -> grpc.RpcMethodHandler:
        """`handler` for this one call, giving its place back when it ends."""
        name = behaviour_of(handler)
        inner = getattr(handler, name)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await invoke(handler, inner, request, context)
            finally:
                place.release()

        weakref.finalize(run, place.release)
        return handler._replace(**{name: run})


class _Place:
    """One call's place in a budget, given back once."""

    __slots__ = ("_budget", "_held", "_running")

    def __init__(self, running: dict[str, int], budget: str) -> None:
        self._running, self._budget, self._held = running, budget, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._running[self._budget] -= 1


class _Undecodable:
    """Stands in for a request whose bytes did not decode; the handler refuses it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns a request that fails to decode into INVALID_ARGUMENT (gRPC says UNKNOWN), and
    ends a client stream that sends nothing for `idle_s` (None: never)."""

    def __init__(self, idle_s: float | None = None) -> None:
        self._idle_s = idle_s
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = str(details.method)
        if method not in self._guarded:
            self._guarded[method] = _guard(handler, method, self._idle_s)
        return self._guarded[method]


def _guard(
    handler: grpc.RpcMethodHandler, method: str, idle_s: float | None
) -> grpc.RpcMethodHandler:
    decode = handler.request_deserializer

    def safe_decode(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:
            return _Undecodable(exc)

    async def refuse(context: grpc.aio.ServicerContext, request: _Undecodable) -> None:
        log.info("refused an undecodable request to %s: %s", method, request.error)
        message = (
            f"the request to {method} could not be decoded: {request.error}. Send a valid "
            "protobuf message of the method's request type; nested values (filters, "
            "metadata) must stay within protobuf's depth limit of 100 levels"
        )
        status = make_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            "REQUEST_UNDECODABLE",
            message,
            field_violations=[("request", message)],
        )
        await context.abort_with_status(to_rpc_status(status))

    idle = to_rpc_status(
        make_status(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "STREAM_IDLE",
            f"the stream sent no message for {idle_s} s; it was ended to free its place. "
            "Open a new stream when there is more to send",
        )
    )

    async def checked(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        iterator = aiter(requests)
        while True:
            try:
                request = await asyncio.wait_for(anext(iterator), idle_s)
            except StopAsyncIteration:
                return
            except TimeoutError:
                log.info("ended a stream of %s idle for %s s", method, idle_s)
                await context.abort_with_status(idle)
            if isinstance(request, _Undecodable):
                await refuse(context, request)
            yield request

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Undecodable):
                await refuse(context, request)
            return await unary(request, context)

        return handler._replace(request_deserializer=safe_decode, unary_unary=unary_unary)
    if handler.unary_stream is not None:
        streaming = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
            if isinstance(request, _Undecodable):
                await refuse(context, request)
            await respond(streaming(request, context), context)

        return handler._replace(request_deserializer=safe_decode, unary_stream=unary_stream)
    if handler.stream_unary is not None:
        collecting = handler.stream_unary

        async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await collecting(checked(requests, context), context)

        return handler._replace(request_deserializer=safe_decode, stream_unary=stream_unary)
    both = handler.stream_stream

    async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await respond(both(checked(requests, context), context), context)

    return handler._replace(request_deserializer=safe_decode, stream_stream=stream_stream)


async def invoke(
    handler: grpc.RpcMethodHandler,
    behaviour: Callable[..., Any],
    request: Any,
    context: grpc.aio.ServicerContext,
) -> Any:
    """Runs `behaviour` (one of `handler`'s, or a wrapper of it) to its end: the reply of a
    unary-response method, None for a streaming one (its replies are written)."""
    if handler.response_streaming:
        await respond(behaviour(request, context), context)
        return None
    return await behaviour(request, context)


async def respond(result: Any, context: grpc.aio.ServicerContext) -> None:
    """Runs a streaming handler of either style: an async generator, or one that writes."""
    if inspect.isasyncgen(result):
        async for response in result:
            await context.write(response)
    else:
        await result


def host_of(addr: str, port: int) -> str:
    """The address clients should dial, with the real port when 0 was asked for."""
    host = addr.rsplit(":", 1)[0]
    return f"{host}:{port}"


def stop_requested() -> asyncio.Event:
    """An event the first SIGTERM or SIGINT sets. Call it first thing in `main`: a signal
    that arrives while the service starts (a model loading for a minute) is kept, not
    lost, and SIGINT works even where the shell started the service with it ignored."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping


def init_grpc() -> None:
    """Initialises grpc.aio on the main thread before anything else uses it. Otherwise its
    completion-queue poller can race the loop's closing at exit and print an OSError
    traceback (grpc/grpc#22365); held from the start, it is not torn down mid-exit."""
    from grpc.experimental.aio import init_grpc_aio

    init_grpc_aio()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("grpc._cython.cygrpc").addFilter(_drop_replies_to_gone_callers)


def _drop_replies_to_gone_callers(record: logging.LogRecord) -> bool:
    """grpc.aio logs an ERROR with a traceback when a handler's reply cannot be sent because
    its caller gave up (a deadline passed as the handler finished). Nothing failed here:
    said in one DEBUG line instead."""
    if record.getMessage().startswith("ExecuteBatchError raised in core by servicer method"):
        log.debug("a reply was dropped: its caller had already given up (%s)", record.getMessage())
        return False
    return True
