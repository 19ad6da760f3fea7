"""The gallery's process: its server (uvicorn, bounded connections and header timeouts),
basic auth where it must, and the `python -m imagesearch_client.web` entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Sequence

import uvicorn
from imagesearch.security import SecurityConfigError
from starlette.types import ASGIApp

from imagesearch_client.aio import AsyncImageSearchClient
from imagesearch_client.web.basic_auth import BasicAuth
from imagesearch_client.web.config import WebConfigError, WebSettings
from imagesearch_client.web.gallery import create_app
from imagesearch_client.web.guard import Guard, bounded_protocol

log = logging.getLogger("imagesearch_client.web")

CALL_TIMEOUT_S = 30.0


class WebApp:
    """The gallery served by uvicorn on this event loop; `start` then `stop`."""

    def __init__(self, settings: WebSettings, client: AsyncImageSearchClient | None = None) -> None:
        """Raises WebConfigError (unsafe or unusable settings), SecurityConfigError."""
        settings.check()
        self.settings = settings
        self.client = client or AsyncImageSearchClient(settings.target, timeout_s=CALL_TIMEOUT_S)
        app, self.gallery = create_app(settings, self.client)
        authenticated: ASGIApp = BasicAuth(app, settings.password) if settings.password else app
        self._asgi: ASGIApp = Guard(authenticated, hosts=settings.hosts)
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> str:
        """Listens; returns the URL (with the port chosen, for port 0). OSError if taken."""
        host, port = self.settings.host_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot listen on {self.settings.addr}: {exc.strerror}") from None
        sock.listen(128)
        sock.setblocking(False)
        config = uvicorn.Config(
            self._asgi,
            log_level="warning",
            lifespan="off",
            access_log=False,
            http=bounded_protocol(self.settings.max_connections, self.settings.header_timeout_s),
            limit_concurrency=self.settings.max_connections,
        )
        self._server = uvicorn.Server(config)
        # Server.serve() would also take over SIGINT/SIGTERM, which are the caller's here.
        config.load()
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[sock])
        self._socket = sock
        self._task = asyncio.create_task(self._server.main_loop(), name="web-main-loop")
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}/"
        return self.url

    async def stop(self) -> None:
        await self.gallery.close()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        if self._socket is not None:
            self._socket.close()
        await self.client.close()


# --- helpers ---------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="imagesearch web", description="the web gallery of a search_service"
    )
    parser.add_argument("--root", required=True, help="the folder the Index button indexes")
    parser.add_argument("--cifar", action="append", default=[], metavar="ARCHIVE",
                        help="CIFAR archive(s) to draw CIFAR records from")  # fmt: skip
    parser.add_argument("--target", help="search_service (default: $SEARCH_ADDR)")
    parser.add_argument("--addr", help="where to listen (default: $WEB_ADDR or 127.0.0.1:8080)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    return serve_web(args.root, cifar=tuple(args.cifar), addr=args.addr, target=args.target)


def serve_web(
    root: str, *, cifar: tuple[str, ...] = (), addr: str | None = None, target: str | None = None
) -> int:
    """Serves the gallery until SIGINT/SIGTERM; 2 for settings it cannot start with."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = WebSettings.from_env(root, cifar=cifar, addr=addr, target=target)
        return asyncio.run(_serve(settings))
    except (WebConfigError, SecurityConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


async def _serve(settings: WebSettings) -> int:
    web = WebApp(settings)
    url = await web.start()
    auth = "basic auth with WEB_PASSWORD" if settings.password else "no password (loopback only)"
    log.info("imagesearch web listening on %s (%s; search_service at %s)", url, auth,
             web.client.target)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await web.stop()
    return 0
