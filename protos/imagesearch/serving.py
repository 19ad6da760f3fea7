"""A grpc.aio server with health and reflection, shared by both services.

Health starts NOT_SERVING and turns SERVING only when the service says it is ready;
stopping turns it NOT_SERVING first, so load balancers drain it, then lets
in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

log = logging.getLogger(__name__)


class GrpcServer:
    def __init__(
        self,
        addr: str,
        *,
        service_names: Sequence[str],
        register: Callable[[grpc.aio.Server], None],
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._addr = addr
        self._service_names = list(service_names)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ]
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        register(self._server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        self.port = 0

    async def start(self) -> int:
        """Binds and starts serving (NOT_SERVING until `set_serving`); returns the port."""
        self.port = self._server.add_insecure_port(self._addr)
        if self.port == 0:
            raise OSError(f"could not listen on {self._addr}: the address is in use or invalid")
        await self._set(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        return self.port

    async def set_serving(self) -> None:
        await self._set(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def _set(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ["", *self._service_names]:
            await self._health.set(name, status)


def host_of(addr: str, port: int) -> str:
    """The address clients should dial, with the real port when 0 was asked for."""
    host = addr.rsplit(":", 1)[0]
    return f"{host}:{port}"


async def wait_for_signal() -> None:
    """Returns on the first SIGTERM or SIGINT; the caller then drains and stops."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
