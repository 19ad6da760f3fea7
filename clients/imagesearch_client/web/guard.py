"""What the gallery asks of every request before any route sees it, and the HTTP
protocol's own bounds.

- `Guard` (ASGI): a Host header must name this gallery (loopback names, the address it
  listens on, any IP literal, WEB_ALLOWED_HOSTS), so a DNS-rebinding page cannot read it;
  a state-changing request must come from the gallery's own page (Sec-Fetch-Site, else
  Origin), so another site cannot press Index in a visitor's browser; every response
  carries a Content-Security-Policy that allows only the gallery's own files and no
  framing, and X-Content-Type-Options.
- `BoundedH11Protocol` (uvicorn): at most `max_connections` connections, and a request's
  headers must arrive within `header_timeout_s`, so half-sent requests cannot pile up
  (authentication only runs once the headers are in).
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


def hostname(host_header: str) -> str:
    """The name in a Host header, without its port and brackets, lower-cased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, _, port = host.rpartition(":")
    return name if port.isdigit() and name else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """Refuses foreign Host headers and cross-site writes; adds the security headers."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str]) -> None:
        """`hosts`: names beside the loopback ones and IP literals that this gallery is."""
        self._app = app
        self._hosts = LOOPBACK_NAMES | {h.lower() for h in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        headers = Headers(scope=scope)
        name = hostname(headers.get("host", ""))
        if not (name in self._hosts or _is_ip(name)):
            refusal = PlainTextResponse(
                f"this gallery does not answer to the host name {name!r}; an operator behind "
                "a proxy or DNS name adds it to WEB_ALLOWED_HOSTS",
                status_code=421,
            )
            await refusal(scope, receive, secured)
            return
        if scope["method"] not in SAFE_METHODS and _cross_site(headers):
            refusal = PlainTextResponse(
                "refused: this request came from another site; use the gallery's own page",
                status_code=403,
            )
            await refusal(scope, receive, secured)
            return
        await self._app(scope, receive, secured)


def _cross_site(headers: Headers) -> bool:
    """Whether a browser says the request comes from a page of another origin. Programs
    that send neither header (curl, scripts) are no browser a site could drive."""
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None:
        return False
    return origin == "null" or urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a cap on connections and a deadline for headers."""

    max_connections = 256
    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._headers_due: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._await_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._await_headers()  # of the next request on this kept-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._headers_due is not None:
            self._headers_due.cancel()
        self._headers_due = self.loop.call_later(
            self.header_timeout_s, self._headers_late, self.cycle
        )

    def _headers_late(self, cycle: object) -> None:
        # No request began since the deadline was set: its headers are still not in.
        if self.cycle is cycle and not self.transport.is_closing():
            self.transport.close()


def bounded_protocol(max_connections: int, header_timeout_s: float) -> type[H11Protocol]:
    """A BoundedH11Protocol class with these bounds, for uvicorn.Config(http=...)."""
    return type(
        "BoundedH11",
        (BoundedH11Protocol,),
        {"max_connections": max_connections, "header_timeout_s": header_timeout_s},
    )
