"""HTTP basic auth for a gallery reachable from other machines (WEB_PASSWORD), answering
wrong passwords ever more slowly per address."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from collections import OrderedDict
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

# A failed password waits this long, doubling per failure from the same address (to
# FAILED_AUTH_MAX_S), and one address's attempts are answered one at a time.
FAILED_AUTH_S = 0.25
FAILED_AUTH_MAX_S = 8.0
FAILED_AUTH_FORGET_S = 300.0
AUTH_ADDRESSES = 1024


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
