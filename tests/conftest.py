"""Fixtures shared by every test: a tiny CLIP on disk and a running embed_service."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from imagesearch.v1 import embed_service_pb2_grpc
from pinecone._internal import http_client

from embed_service.app import EmbedApp
from embed_service.config import EmbedSettings
from tests.pinecone_standin import PineconeStandIn
from tests.tiny_clip import build_clip

# Tests never reach a hub; a stray hub id fails fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Exact comparisons need one runtime everywhere, services started as processes included
# (the runtimes have their own tests), and exports go to a cache of the run's own.
os.environ.setdefault("EMBED_BACKEND", "torch")
if "EMBED_CACHE_DIR" not in os.environ:
    os.environ["EMBED_CACHE_DIR"] = tempfile.mkdtemp(prefix="imagesearch-test-cache-")
    atexit.register(shutil.rmtree, os.environ["EMBED_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


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


@pytest.fixture(scope="session")
async def embed_app(clip_dir: Path) -> AsyncIterator[EmbedApp]:
    app = EmbedApp(embed_settings(clip_dir))
    await app.start()
    await app.load()
    yield app
    await app.stop(0)


@pytest.fixture(scope="session")
async def embed_stub(embed_app: EmbedApp) -> AsyncIterator[embed_service_pb2_grpc.EmbedServiceStub]:
    async with grpc.aio.insecure_channel(embed_app.address) as channel:
        yield embed_service_pb2_grpc.EmbedServiceStub(channel)


@pytest.fixture
def backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The Pinecone SDK's retry delays, recorded instead of slept (its documented seam)."""
    delays: list[float] = []

    async def record(delay: float) -> None:
        delays.append(delay)

    monkeypatch.setattr(http_client, "_async_retry_sleep", record)
    # The SDK stops retrying a host after many failures; every test starts afresh.
    http_client.get_budget_registry()._reset()
    return delays


@pytest.fixture
def standin() -> Iterator[PineconeStandIn]:
    """A local Pinecone REST API (control and data plane) on free ports."""
    with PineconeStandIn() as server:
        yield server
