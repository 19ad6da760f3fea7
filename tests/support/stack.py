"""Helpers to run search_service in tests and call the synchronous client from them.

grpc.aio binds to one event loop per process, so every server in the suite runs on
pytest-asyncio's session loop, and tests are async. The client and the CLI are
synchronous: tests run them in a thread (`InThread`, `asyncio.to_thread`) so the
loop keeps serving while they wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2
from imagesearch_client import AsyncImageSearchClient

from embed_service.app import EmbedApp
from embed_service.config import EmbedSettings
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


@contextlib.contextmanager
def service_process(
    module: str,
    env: dict[str, str],
    *,
    ready: str,
    log: Path | None = None,
    timeout_s: float = 120.0,
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`python -m module` with `env` added; yields once a line contains `ready`, with the
    address it logged ("listening on ..."). Its stderr goes on to `log`; it is stopped
    with SIGTERM at the end. A process that exits, or is not ready within `timeout_s`,
    fails the test with the end of what it said."""
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    stderr = process.stderr
    sink = log.open("a") if log is not None else open(os.devnull, "w")  # noqa: SIM115
    said: list[str] = []
    address: list[str] = []
    is_ready, ended = threading.Event(), threading.Event()

    def pump() -> None:  # a full pipe would block the service
        for line in stderr:
            sink.write(line)
            sink.flush()
            if not is_ready.is_set():
                said.append(line)
                if found := re.search(r"listening on (\S+)", line):
                    address.append(found.group(1))
                if ready in line:
                    is_ready.set()
        ended.set()

    pumping = threading.Thread(target=pump, daemon=True)
    pumping.start()
    deadline = time.monotonic() + timeout_s
    while not (is_ready.is_set() or ended.is_set()) and time.monotonic() < deadline:
        is_ready.wait(0.05)
    try:
        why = f"{module} was not ready ({ready!r}) within {timeout_s} s or exited; it said:\n"
        assert is_ready.is_set(), why + "".join(said[-30:])
        assert address, why + "".join(said[-30:])
        yield process, address[0]
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        pumping.join(timeout=10)  # its last lines reach the log before it is read
        sink.close()


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports (EMBED_REPLICAS takes those)."""
    while True:
        first = free_port()
        sockets = []
        try:
            for offset in range(count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


def status_mb(pid: int, key: str) -> int:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM...), MiB."""
    found = re.search(rf"{key}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert found, key
    return int(found.group(1)) // 1024


def files_of(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root`: (size, mtime in ns), by relative path."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    built = struct_pb2.Struct()
    built.update(values)
    return built


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class InThread:
    """`await proxy.method(...)` runs `target.method(...)` in a worker thread.

    Generators are run to the end there and come back as async iterators, so a test
    written for AsyncImageSearchClient runs unchanged against the sync client.
    """

    def __init__(self, target: Any) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.target, name)

        if inspect.isgeneratorfunction(method):

            async def each(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                for item in await asyncio.to_thread(lambda: list(method(*args, **kwargs))):
                    yield item

            return each

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kwargs)

        return call


# What the behaviour tests drive: the sync client through InThread, or the async one.
AnyClient = InThread | AsyncImageSearchClient


def embed_settings(clip_dir: Path, **overrides: object) -> EmbedSettings:
    values: dict[str, object] = {
        "model": str(clip_dir),
        "addr": "127.0.0.1:0",
        "device": "cpu",
        # Exact comparisons need one precision on every machine; `auto` has its own tests.
        "precision": "fp32",
        "backend": "torch",
        "cache_dir": os.environ["EMBED_CACHE_DIR"],
        "threads": 2,
        "grace_s": 1.0,
    }
    values.update(overrides)
    # model_validate skips the environment and .env: tests see only what they set.
    return EmbedSettings.model_validate(values)


@asynccontextmanager
async def serving_embed(model_dir: Path, **overrides: object) -> AsyncIterator[EmbedApp]:
    """embed_service on this loop with the model loaded (`embed_settings` plus overrides),
    stopped at the end of the block."""
    app = EmbedApp(embed_settings(model_dir, **overrides))
    await app.start()
    try:
        await app.load()
        yield app
    finally:
        await app.stop(0)
