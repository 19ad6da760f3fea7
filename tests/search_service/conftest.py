"""search_service on the session loop, beside the session embed_service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from imagesearch_client import ImageSearchClient

from embed_service.app import EmbedApp
from search_service.app import SearchApp
from tests.stack import InThread, search_settings

StartSearch = Callable[..., Awaitable[SearchApp]]


@pytest.fixture
async def start_search_app(embed_app: EmbedApp, tmp_path: Path) -> AsyncIterator[StartSearch]:
    """Starts search_service apps (default: a fresh DATA_DIR); all stop at the end."""
    apps: list[SearchApp] = []

    async def start(data_dir: Path | None = None, **overrides: object) -> SearchApp:
        target = str(overrides.pop("embed_target", embed_app.address))
        settings = search_settings(data_dir or tmp_path / "data", target, **overrides)
        app = SearchApp(settings)
        await app.start()
        apps.append(app)
        await app.wait_serving()
        return app

    yield start
    for app in apps:
        await app.stop(0)


@pytest.fixture
async def search_app(start_search_app: StartSearch) -> SearchApp:
    return await start_search_app()


@pytest.fixture
def client(search_app: SearchApp) -> Iterator[InThread]:
    with ImageSearchClient(search_app.address, timeout_s=30) as c:
        yield InThread(c)
