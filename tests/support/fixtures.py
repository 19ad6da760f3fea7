"""The fixtures every test may ask for (registered in tests/conftest.py): a tiny CLIP on
disk, embed_service and search_service on the session loop, the Pinecone stand-in, and each
client on each store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
from imagesearch.v1 import embed_service_pb2_grpc
from imagesearch_client import AsyncImageSearchClient, ImageSearchClient
from pinecone._internal import http_client

from embed_service.app import EmbedApp
from search_service.app import SearchApp
from tests.support.pinecone_standin import PineconeStandIn
from tests.support.stack import AnyClient, InThread, search_settings, serving_embed
from tests.support.tiny_clip import build_clip

StartSearch = Callable[..., Awaitable[SearchApp]]


def on_pinecone(standin: PineconeStandIn, index: str = "image-search") -> dict[str, object]:
    """Settings overrides that put search_service on the stand-in, as PINECONE_* would."""
    return {
        "vector_store": "pinecone",
        "pinecone_api_key": standin.api_key,
        "pinecone_host": standin.url,
        "pinecone_index": index,
    }


@pytest.fixture
async def start_search_app(embed_app: EmbedApp, tmp_path: Path) -> AsyncIterator[StartSearch]:
    """Starts search_service apps (default: a fresh DATA_DIR); all stop at the end."""
    apps: list[SearchApp] = []

    async def start(data_dir: Path | None = None, **overrides: object) -> SearchApp:
        target = str(overrides.pop("embed_target", embed_app.address))
        settings = search_settings(data_dir or tmp_path / "data", target, **overrides)
        app = SearchApp(settings)
        apps.append(app)
        await app.start()
        await app.wait_serving()
        return app

    yield start
    for app in apps:
        await app.stop(0)


@pytest.fixture(params=["local", "pinecone"])
async def search_app(
    request: pytest.FixtureRequest, start_search_app: StartSearch, tmp_path: Path
) -> AsyncIterator[SearchApp]:
    """search_service on each store: the local one, and Pinecone (the stand-in)."""
    if request.param == "local":
        yield await start_search_app()
    else:
        with PineconeStandIn() as standin:
            yield await start_search_app(**on_pinecone(standin))


@pytest.fixture(params=["sync", "async"])
async def client(request: pytest.FixtureRequest, search_app: SearchApp) -> AsyncIterator[AnyClient]:
    """Each client on each store: the same behaviour tests run against both clients."""
    if request.param == "sync":
        with ImageSearchClient(search_app.address, timeout_s=30) as sync:
            yield InThread(sync)
    else:
        async with AsyncImageSearchClient(search_app.address, timeout_s=30) as aio:
            yield aio


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="session")
async def embed_app(clip_dir: Path) -> AsyncIterator[EmbedApp]:
    async with serving_embed(clip_dir) as app:
        yield app


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
