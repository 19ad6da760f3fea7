"""The gallery in a real browser: Debian's Chromium driven by Playwright, servers on the
session loop (embed_service, search_service, the gallery), nothing off this machine.

Without /usr/bin/chromium these tests are skipped with how to install it; CI sets
IMAGESEARCH_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from imagesearch_client import AsyncImageSearchClient
from imagesearch_client.web import WebApp, WebSettings

from search_service.app import SearchApp
from tests.support.fixtures import StartSearch

CHROMIUM = Path(os.environ.get("IMAGESEARCH_CHROMIUM", "/usr/bin/chromium"))
HEADLESS_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"

StartWeb = Callable[..., Awaitable[WebApp]]


def require_browser() -> None:
    if CHROMIUM.exists():
        return
    why = (
        f"no browser at {CHROMIUM}: install Debian's chromium (`sudo apt-get install -y "
        "chromium`) to run the gallery's browser tests"
    )
    if os.environ.get("IMAGESEARCH_REQUIRE_BROWSER"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=HEADLESS_FLAGS
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: object) -> AsyncIterator[object]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    page = await context.new_page()
    yield page
    await context.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    from tests.support.imagegen import image_folder

    folder = image_folder(tmp_path / "photos")
    (folder / "red" / "broken.jpg").write_bytes(b"this is not a JPEG")
    return folder


@pytest.fixture
async def start_web(root: Path) -> AsyncIterator[StartWeb]:
    """Starts galleries on free loopback ports; all stop at the end."""
    apps: list[WebApp] = []

    async def start(search: SearchApp, **overrides: object) -> WebApp:
        values: dict[str, object] = {"root": root, "addr": "127.0.0.1:0", **overrides}
        token = values.pop("token", None)
        settings = WebSettings(**values)  # type: ignore[arg-type]
        client = AsyncImageSearchClient(search.address, timeout_s=30, token=token)  # type: ignore[arg-type]
        app = WebApp(settings, client)
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in apps:
        await app.stop()


@pytest.fixture
async def gallery(start_search_app: StartSearch, start_web: StartWeb) -> WebApp:
    search = await start_search_app()
    return await start_web(search)


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"
