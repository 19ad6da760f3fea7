"""search_service on the session loop, beside the session embed_service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from imagesearch_client import AsyncImageSearchClient, ImageSearchClient

from embed_service.app import EmbedApp
from search_service.app import SearchApp
from tests.pinecone_standin import PineconeStandIn
from tests.stack import AnyClient, InThread, search_settings

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
