"""Helpers to run search_service in tests and call the synchronous client from them.

grpc.aio binds to one event loop per process, so every server in the suite runs on
pytest-asyncio's session loop, and tests are async. The client and the CLI are
synchronous: tests run them in a thread (`InThread`, `asyncio.to_thread`) so the
loop keeps serving while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from search_service.app import SearchApp
from search_service.config import SearchSettings


def search_settings(data_dir: Path, embed_target: str, **overrides: object) -> SearchSettings:
    values: dict[str, object] = {
        "addr": "127.0.0.1:0",
        "embed_target": embed_target,
        "data_dir": str(data_dir),
        "vector_store": "local",
        "grace_s": 0.5,
        "embed_timeout_s": 10.0,
    }
    values.update(overrides)
    # model_validate skips the environment and .env: tests see only what they set.
    return SearchSettings.model_validate(values)


@contextlib.asynccontextmanager
async def serving_search(
    data_dir: Path, embed_target: str, **overrides: object
) -> AsyncIterator[tuple[SearchApp, grpc.aio.Channel]]:
    """A SERVING search_service on this loop, and a channel to it; both closed after."""
    app = SearchApp(search_settings(data_dir, embed_target, **overrides))
    await app.start()
    try:
        await app.wait_serving()
        async with grpc.aio.insecure_channel(app.address) as channel:
            yield app, channel
    finally:
        await app.stop(0)


class InThread:
    """`await proxy.method(...)` runs `target.method(...)` in a worker thread."""

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Callable[..., Coroutine[Any, Any, Any]]:
        method = getattr(self.target, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call
