"""The gallery's ASGI app (Starlette on uvicorn) and its process entry point.

Routes:
    GET  /                      browse (ListRecords), or search: ?similar=ID | ?text=T,
                                with k, label, min_score, ns; the state is the URL
    POST /api/query-image       an outside image (the body) -> JSON matches; not stored
    POST /api/index, GET ...    start the Index job / its progress (JSON)
    GET  /api/health            200 while search_service answers, 503 with why otherwise
    GET  /thumb/PATH            thumbnail of a file under --root
    GET  /cifar/ID              thumbnail of a CIFAR record from --cifar archives
    GET  /static/...            the page's own CSS, JS and placeholder: nothing external
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hmac
import logging
import math
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from imagesearch.security import SecurityConfigError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from imagesearch_client.aio import AsyncImageSearchClient
from imagesearch_client.errors import ImageSearchError, NotFound, Unauthenticated, Unavailable
from imagesearch_client.messages import listed_name, reported_name
from imagesearch_client.web.config import WebConfigError, WebSettings
from imagesearch_client.web.files import CifarImages, Thumbnails
from imagesearch_client.web.guard import Guard, bounded_protocol
from imagesearch_client.web.jobs import IndexJob
from imagesearch_client.web.pages import GalleryTile, Page, View, name_of, render, tile_json

log = logging.getLogger("imagesearch_client.web")

STATIC = Path(__file__).parent / "static"
BROWSE_PAGE = 48
MAX_K = 200
LABEL_SCAN = 5000
LABEL_TTL_S = 30.0
# Namespaces whose labels are remembered: `?ns=` is whatever a visitor types.
LABEL_NAMESPACES = 64
# A failed password waits this long, doubling per failure from the same address (to
# FAILED_AUTH_MAX_S), and one address's attempts are answered one at a time.
FAILED_AUTH_S = 0.25
FAILED_AUTH_MAX_S = 8.0
FAILED_AUTH_FORGET_S = 300.0
AUTH_ADDRESSES = 1024
HEALTH_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 30.0


class Gallery:
    """State shared by the routes: the client, the Index job, caches."""

    def __init__(self, settings: WebSettings, client: AsyncImageSearchClient) -> None:
        self.settings = settings
        self.client = client
        self.thumbs = Thumbnails(settings.root)
        self.cifar = CifarImages(settings.cifar)
        self.job = IndexJob(settings.root)
        self._job_task: asyncio.Task[None] | None = None
        self._labels: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()

    # --- the page ------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        view = _view(request)
        page = Page(
            view=view,
            title=self.settings.title,
            root=self.settings.root.name or str(self.settings.root),
            index_status=self.job.status() if self.job.recent() else {},
            max_upload_mb=self.settings.max_upload_mb,
        )
        try:
            stats = await self.client.stats()
            page.namespaces = sorted(listed_name(ns) for ns in stats.namespaces) or [""]
            if view.namespace not in page.namespaces and len(page.namespaces) == 1:
                view.namespace = page.namespaces[0]
            page.labels = await self._labels_of(view.namespace)
            if view.text:
                page.heading = f"Most similar to the text “{view.text}”"
                page.tiles = await self._query(view, text=view.text)
            elif view.similar:
                found = await self.client.fetch([view.similar], namespace=view.namespace)
                if found:
                    page.query = GalleryTile(view.similar, found[0].metadata)
                    page.heading = f"Most similar to {name_of(view.similar, found[0].metadata)}"
                page.tiles = await self._query(view, id=view.similar)
            elif view.label:
                page.tiles, scanned, complete = await self._labelled(view)
                page.heading = f"{len(page.tiles)} images labelled “{view.label}”" + (
                    "" if complete else f" among the first {scanned}"
                )
            else:
                listing = await self.client.list_records(
                    namespace=view.namespace,
                    page_size=BROWSE_PAGE,
                    page_token=view.page_token,
                    include_metadata=True,
                )
                page.heading = (
                    f"{stats.namespaces.get(reported_name(view.namespace), 0)} images"
                    if listing.records
                    else "Nothing is stored yet: press Index"
                )
                page.tiles = [GalleryTile(r.id, r.metadata) for r in listing.records]
                if listing.next_page_token:
                    page.next_link = view.link(page_token=listing.next_page_token)
            if view.searching and not page.tiles:
                page.message = "No matches (lower the minimum score, or clear the label)."
        except (Unavailable, Unauthenticated) as exc:
            page.down = _down(self.client.target, exc)
        except NotFound as exc:
            page.message = exc.message
        except ImageSearchError as exc:
            page.message = f"search_service refused this: {exc.message}"
        return HTMLResponse(render(page), status_code=200)

    async def _query(self, view: View, **what: Any) -> list[GalleryTile]:
        matches = await self.client.query(
            top_k=view.k,
            namespace=view.namespace,
            filter={"label": view.label} if view.label else None,
            min_score=view.min_score,
            include_metadata=True,
            **what,
        )
        return [GalleryTile(m.id, m.metadata, m.score) for m in matches]

    async def _labelled(self, view: View) -> tuple[list[GalleryTile], int, bool]:
        """Browsing with a label: the first BROWSE_PAGE records that carry it, found among
        at most LABEL_SCAN (ListRecords has no filter); (tiles, scanned, scanned all)."""
        tiles: list[GalleryTile] = []
        scanned = 0
        async for page in self.client.iter_pages(
            namespace=view.namespace, page_size=1000, include_metadata=True
        ):
            for record in page.records:
                label = record.metadata.get("label")
                if label == view.label or (isinstance(label, list) and view.label in label):
                    tiles.append(GalleryTile(record.id, record.metadata))
            scanned += len(page.records)
            if len(tiles) >= BROWSE_PAGE or scanned >= LABEL_SCAN:
                return tiles[:BROWSE_PAGE], scanned, False
        return tiles, scanned, True

    async def _labels_of(self, namespace: str) -> list[str]:
        """Labels present (from the first LABEL_SCAN records), cached a little while."""
        cached = self._labels.get(namespace)
        if cached is not None and time.monotonic() - cached[0] < LABEL_TTL_S:
            return cached[1]
        labels: set[str] = set()
        scanned = 0
        async for page in self.client.iter_pages(
            namespace=namespace, page_size=1000, include_metadata=True
        ):
            labels.update(str(r.metadata["label"]) for r in page.records if "label" in r.metadata)
            scanned += len(page.records)
            if scanned >= LABEL_SCAN:
                break
        found = sorted(labels)
        self._labels[namespace] = (time.monotonic(), found)
        self._labels.move_to_end(namespace)
        while len(self._labels) > LABEL_NAMESPACES:
            self._labels.popitem(last=False)
        return found

    # --- JSON api --------------------------------------------------------------------

    async def query_image(self, request: Request) -> Response:
        view = _view(request)
        limit = self.settings.max_upload_mb * 1024 * 1024
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _too_large(int(declared), self.settings.max_upload_mb)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _too_large(len(body), self.settings.max_upload_mb)
        if not body:
            return JSONResponse({"error": "the upload is empty: choose an image file"}, 400)
        try:
            tiles = await self._query(view, image=bytes(body))
        except (Unavailable, Unauthenticated) as exc:
            return JSONResponse({"error": _down(self.client.target, exc), "down": True}, 503)
        except ImageSearchError as exc:
            why = {
                "IMAGE_UNREADABLE": "this file is not an image the service can read",
                "IMAGE_TOO_LARGE": "this image is too large for the service",
            }.get(exc.reason, exc.message)
            return JSONResponse({"error": f"{why} ({exc.reason}: {exc.message})"}, 400)
        return JSONResponse({"matches": [tile_json(t, view) for t in tiles]})

    async def start_index(self, request: Request) -> Response:
        if not self.job.running:
            self.job.namespace = _view(request).namespace
            self._labels.clear()
            self.job.running = True  # at once, so a second press sees it
            self.job.started = time.monotonic()
            self._job_task = asyncio.create_task(self.job.run(self.client), name="index-job")
            self._job_task.add_done_callback(lambda _: self._labels.clear())
        return JSONResponse(self.job.status(), status_code=202)

    async def index_status(self, request: Request) -> Response:
        return JSONResponse(self.job.status())

    async def health(self, request: Request) -> Response:
        try:
            await asyncio.wait_for(self.client.stats(), HEALTH_TIMEOUT_S)
        except (ImageSearchError, TimeoutError) as exc:
            why = exc if isinstance(exc, ImageSearchError) else Unavailable("no answer", code="")
            return JSONResponse({"ok": False, "error": _down(self.client.target, why)}, 503)
        return JSONResponse({"ok": True})

    # --- images ----------------------------------------------------------------------

    async def thumb(self, request: Request) -> Response:
        data = await asyncio.to_thread(self.thumbs.get, request.path_params["path"])
        return _image(data, "no such image under --root")

    async def cifar_thumb(self, request: Request) -> Response:
        data = await asyncio.to_thread(self.cifar.get, request.path_params["id"])
        return _image(data, "no such CIFAR image in the --cifar archives")

    async def close(self) -> None:
        if self._job_task is not None:
            self._job_task.cancel()
            await asyncio.gather(self._job_task, return_exceptions=True)


def create_app(settings: WebSettings, client: AsyncImageSearchClient) -> tuple[Starlette, Gallery]:
    gallery = Gallery(settings, client)
    app = Starlette(
        routes=[
            Route("/", gallery.home),
            Route("/api/query-image", gallery.query_image, methods=["POST"]),
            Route("/api/index", gallery.start_index, methods=["POST"]),
            Route("/api/index", gallery.index_status, methods=["GET"]),
            Route("/api/health", gallery.health),
            Route("/favicon.ico", _favicon),
            Route("/thumb/{path:path}", gallery.thumb),
            Route("/cifar/{id}", gallery.cifar_thumb),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    # A redirect to the slashed or unslashed path is built from the Host header: none.
    app.router.redirect_slashes = False
    return app, gallery


class BasicAuth:
    """HTTP basic auth on every request when WEB_PASSWORD is set (any user name).

    A wrong password is answered only after a delay that doubles with each failure from
    the same address, and that address's attempts are judged one at a time, so guessing
    runs at a few tries a minute, not thousands a second."""

    def __init__(self, app: ASGIApp, password: str) -> None:
        self._app = app
        self._password = password.encode()
        # Per client address: (failures, when the last was), and the lock its tries take.
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._locks: OrderedDict[str, asyncio.Lock] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        given = _basic_password(scope)
        if given is not None and hmac.compare_digest(given, self._password):
            await self._app(scope, receive, send)
            return
        if given is not None:  # a wrong password, not a first visit's missing one
            client = scope.get("client")
            await self._slow_down(str(client[0]) if client else "")
        response = Response(
            "this gallery asks for its password (WEB_PASSWORD)",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="imagesearch", charset="UTF-8"'},
        )
        await response(scope, receive, send)

    async def _slow_down(self, address: str) -> None:
        async with self._remember(self._locks, address, asyncio.Lock):
            now = time.monotonic()
            count, last = self._remember(self._failures, address, lambda: (0, now))
            count = 1 if now - last > FAILED_AUTH_FORGET_S else count + 1
            self._failures[address] = (count, now)
            await asyncio.sleep(min(FAILED_AUTH_S * 2 ** (count - 1), FAILED_AUTH_MAX_S))

    @staticmethod
    def _remember(table: OrderedDict[str, Any], address: str, make: Any) -> Any:
        if address not in table:
            table[address] = make()
            while len(table) > AUTH_ADDRESSES:
                table.popitem(last=False)
        table.move_to_end(address)
        return table[address]


def _basic_password(scope: Scope) -> bytes | None:
    """The password of a basic Authorization header; None when there is none."""
    for name, value in scope.get("headers", []):
        if name == b"authorization" and value[:6].lower() == b"basic ":
            try:
                return base64.b64decode(value[6:], validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                return b""
    return None


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


async def _favicon(request: Request) -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


def _view(request: Request) -> View:
    q = request.query_params
    try:
        k = min(max(int(q.get("k") or 12), 1), MAX_K)
    except ValueError:
        k = 12
    try:
        min_score: float | None = float(q["min_score"]) if q.get("min_score") else None
        if min_score is not None and not math.isfinite(min_score):
            min_score = None
    except ValueError:
        min_score = None
    return View(
        namespace=q.get("ns", ""),
        similar=q.get("similar", ""),
        text=q.get("text", "").strip(),
        k=k,
        label=q.get("label", "").strip(),
        min_score=min_score,
        page_token=q.get("page_token", ""),
    )


def _down(target: str, exc: ImageSearchError) -> str:
    log.warning("search_service at %s cannot be used: %s", target, exc.message)
    if exc.code == "UNAUTHENTICATED" or exc.message.startswith("TLS "):
        # The gallery's own settings: the operator has something to set, not to wait for.
        return f"{exc.message}. This page tries again by itself."
    return (
        f"search_service at {target} cannot be reached. This page tries again by itself "
        "and recovers once it is back."
    )


def _too_large(size: int, limit_mb: int) -> Response:
    return JSONResponse(
        {
            "error": f"the image is {size / 1e6:.1f} MB; at most {limit_mb} MB "
            "(WEB_MAX_UPLOAD_MB) may be uploaded"
        },
        413,
    )


def _image(data: bytes | None, missing: str) -> Response:
    if data is None:
        return Response(missing, status_code=404, media_type="text/plain")
    return Response(
        data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"}
    )


# --- the process -------------------------------------------------------------------------


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
