"""The gallery in Chromium: Index, browse, click for similar, upload, text, filters,
the search_service-down banner, and what it refuses to serve."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from imagesearch_client import AsyncImageSearchClient, Example, VectorRecord
from imagesearch_client.web import WebApp, WebSettings
from imagesearch_client.web.config import WebConfigError
from PIL import Image
from playwright.async_api import Page, expect

from tests.support.fixtures import StartSearch
from tests.support.imagegen import encode, picture
from tests.support.stack import free_port
from tests.web.conftest import StartWeb, screenshot_path

WAIT_MS = 60_000


async def press_index(page: Page, web: WebApp, expected: str) -> None:
    """Presses Index on the browse page and returns once the job is done and, when it
    stored anything, once the page has reloaded itself: a goto racing that reload is
    aborted ("interrupted by another navigation")."""
    await page.goto(web.url)
    if "done: stored 0," in expected:
        await page.get_by_role("button", name=re.compile("Index")).click()
        await expect(page.locator("#index-text")).to_contain_text(expected, timeout=WAIT_MS)
        return
    async with page.expect_navigation(timeout=WAIT_MS):
        await page.get_by_role("button", name=re.compile("Index")).click()
        await expect(page.locator("#index-text")).to_contain_text(expected, timeout=WAIT_MS)
    await page.wait_for_load_state("load")


async def tiles(page: Page) -> list[tuple[str, str]]:
    """(alt, score text) of every tile, in page order."""
    found = await page.locator(".tile").evaluate_all(
        """els => els.map(e => [e.querySelector('img').alt,
                                (e.querySelector('.score') || {}).textContent || ''])"""
    )
    return [(alt, score) for alt, score in found]


async def test_index_shows_progress_to_the_end_lists_failures_and_adds_nothing_twice(
    page: Page, gallery: WebApp
) -> None:
    # The page works under its own Content-Security-Policy: nothing is blocked.
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
    await page.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    await press_index(page, gallery, "done: stored 12, already stored 0, failed 1")
    progress = page.locator("#index-progress")
    assert await progress.get_attribute("value") == await progress.get_attribute("max") == "13"
    await expect(page.locator("#index-failures")).to_contain_text(
        "red/broken.jpg: IMAGE_UNREADABLE"
    )
    await page.screenshot(path=screenshot_path("index-done"), full_page=True)
    # The page reloaded into the browse grid: every stored image, by id, with its label.
    await expect(page.locator(".tile img")).to_have_count(12, timeout=WAIT_MS)
    hover = await page.locator(".tile").first.get_attribute("title")
    assert re.fullmatch(r"(red|green|blue) · \w+/\w+-\d\.(png|jpg)", hover or "")
    await page.screenshot(path=screenshot_path("browse"), full_page=True)
    await press_index(page, gallery, "done: stored 0, already stored 12, failed 1")
    async with AsyncImageSearchClient(gallery.client.target) as client:
        assert (await client.stats()).total == 12
    assert await page.evaluate("window.__violations") == []
    blocked = [line for line in console if "Content Security Policy" in line or "Refused" in line]
    assert not blocked, console
    assert not [line for line in console if line.startswith("pageerror")], console


async def test_a_click_shows_the_image_first_at_1000_then_the_clients_own_ranking(
    page: Page, gallery: WebApp
) -> None:
    await press_index(page, gallery, "done: stored 12")
    await expect(page.locator(".tile img")).to_have_count(12, timeout=WAIT_MS)
    first = await page.locator(".tile img").first.get_attribute("alt")
    assert first
    await page.locator(".tile img").first.click()
    await expect(page).to_have_url(re.compile(rf"\?similar={first}"))
    shown = await tiles(page)
    assert shown[0] == (first, "1.000")
    scores = [float(score) for _, score in shown]
    assert scores == sorted(scores, reverse=True)
    async with AsyncImageSearchClient(gallery.client.target) as client:
        own = await client.query(id=first, top_k=12)
    assert shown == [(m.id, f"{m.score:.3f}") for m in own]
    await page.screenshot(path=screenshot_path("similar"), full_page=True)

    await page.reload()
    assert await tiles(page) == shown
    second = shown[1][0]
    await page.locator(f'.tile img[alt="{second}"]').click()
    await expect(page).to_have_url(re.compile(rf"\?similar={second}"))
    assert (await tiles(page))[0] == (second, "1.000")
    await page.go_back()
    await expect(page).to_have_url(re.compile(rf"\?similar={first}"))
    assert await tiles(page) == shown


async def test_upload_text_and_label_filter_search_without_storing(
    page: Page, gallery: WebApp, tmp_path: Path
) -> None:
    await press_index(page, gallery, "done: stored 12")
    upload = tmp_path / "outside.png"
    upload.write_bytes(encode(picture("blue", shape=7), "PNG"))
    await page.locator('input[type="file"][accept="image/*"]').set_input_files(upload)
    await expect(page.locator("#heading")).to_contain_text("outside.png (not stored)")
    shown = await tiles(page)
    assert len(shown) == 12
    assert all(re.fullmatch(r"-?\d\.\d{3}", score) for _, score in shown)
    await page.screenshot(path=screenshot_path("upload"), full_page=True)

    await page.locator('input[type="search"]').fill("a blue square")
    await page.locator('input[type="search"]').press("Enter")
    await expect(page).to_have_url(re.compile(r"text=a\+blue\+square"))
    assert len(await tiles(page)) == 12
    await page.screenshot(path=screenshot_path("text"), full_page=True)

    await page.locator('input[name="label"]').fill("red")
    await page.locator('input[type="search"]').press("Enter")
    await expect(page).to_have_url(re.compile(r"label=red"))
    labels = await page.locator(".tile .label").all_inner_texts()
    assert labels == ["red"] * 4
    async with AsyncImageSearchClient(gallery.client.target) as client:
        assert (await client.stats()).total == 12  # the uploaded image was not stored


async def test_refused_uploads_say_why(
    page: Page, start_search_app: StartSearch, start_web: StartWeb, tmp_path: Path
) -> None:
    web = await start_web(await start_search_app(), max_upload_mb=1)
    await press_index(page, web, "done: stored 12")
    await page.goto(web.url + "?text=red")
    await expect(page.locator(".tile img")).to_have_count(12, timeout=WAIT_MS)
    not_image = tmp_path / "notes.png"
    not_image.write_bytes(b"plain text, not a picture")
    await page.locator("#upload").set_input_files(not_image)
    await expect(page.locator("#message")).to_contain_text("notes.png was refused")
    await expect(page.locator("#message")).to_contain_text("IMAGE_UNREADABLE")
    # The text search's results are gone: nothing on the page answers the refused upload.
    await expect(page.locator(".tile")).to_have_count(0)
    assert await page.locator("#heading").text_content() == ""
    big = tmp_path / "big.bmp"
    big.write_bytes(encode(picture("red", size=(800, 800)), "BMP"))  # ~1.9 MB
    await page.locator("#upload").set_input_files(big)
    await expect(page.locator("#message")).to_contain_text("at most 1 MB (WEB_MAX_UPLOAD_MB)")
    # The server holds the same line when the page's own check is bypassed.
    async with httpx.AsyncClient() as http:
        reply = await http.post(web.url + "api/query-image", content=big.read_bytes())
    assert reply.status_code == 413
    assert "WEB_MAX_UPLOAD_MB" in reply.json()["error"]


async def test_search_service_down_shows_a_banner_and_the_page_recovers(
    page: Page, start_search_app: StartSearch, start_web: StartWeb, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    search = await start_search_app(tmp_path / "data", addr=address)
    web = await start_web(search)
    await press_index(page, web, "done: stored 12")
    # The page reloads itself once the job is done; a goto racing that reload is aborted.
    await expect(page.locator(".tile img")).to_have_count(12, timeout=WAIT_MS)
    await search.stop(0)
    await page.goto(web.url)
    banner = page.locator("#banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text(f"search_service at {address} cannot be reached")
    await page.screenshot(path=screenshot_path("search-service-down"), full_page=True)
    await start_search_app(tmp_path / "data", addr=address)
    await expect(banner).to_be_hidden(timeout=WAIT_MS)
    await expect(page.locator(".tile img")).to_have_count(12, timeout=WAIT_MS)


async def test_files_outside_the_root_are_never_served(
    gallery: WebApp, root: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(picture("purple"), "PNG"))
    (root / "escape.png").symlink_to(secret)
    (root / "red" / "inner.png").symlink_to(root / "red" / "red-0.jpg")  # inside: fine
    async with httpx.AsyncClient(base_url=gallery.url) as http:
        ok = await http.get("thumb/red/red-0.jpg")
        assert ok.status_code == 200
        assert ok.headers["content-type"] == "image/jpeg"
        assert len(ok.content) < 8000
        assert (await http.get("thumb/red/inner.png")).status_code == 200
        for path in (
            "thumb/escape.png",
            "thumb/..%2Fsecret.png",
            "thumb/red/..%2F..%2Fsecret.png",
            "thumb/%2E%2E/secret.png",
            f"thumb/{secret}",
            "thumb/red/missing.png",
        ):
            reply = await http.get(path)
            assert reply.status_code == 404, path
            assert reply.headers["content-type"].startswith("text/plain"), path


async def test_thumbnails_are_upright_cifar_comes_from_the_archive_else_a_placeholder(
    page: Page, start_search_app: StartSearch, start_web: StartWeb, root: Path, tmp_path: Path
) -> None:
    from PIL import Image

    from tests.support.cifar import cifar10_archive

    rotated = picture("green", size=(200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees
    (root / "green" / "sideways.jpg").write_bytes(encode(rotated, "JPEG", exif=exif.tobytes()))
    archive = cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    search = await start_search_app()
    web = await start_web(search, cifar=(archive,))
    async with httpx.AsyncClient(base_url=web.url) as http:
        thumb = await http.get("thumb/green/sideways.jpg")
        assert Image.open(__import__("io").BytesIO(thumb.content)).size == (80, 160)
    from imagesearch_client.cli import run

    assert (
        await asyncio.to_thread(
            run, ["--target", search.address, "index-cifar", str(archive), "--quiet"]
        )
        == 0
    )
    async with AsyncImageSearchClient(search.address) as client:
        dimension = (await client.stats()).dimension
        await client.upsert_vectors([VectorRecord("no-image", [1.0] * dimension)])
    await page.goto(web.url)
    images = page.locator(".tile img")
    await expect(images.first).to_be_visible()
    await page.wait_for_function(
        "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    )
    sources: list[Any] = await images.evaluate_all(
        "els => els.map(e => [e.alt, new URL(e.src).pathname])"
    )
    by_id = dict(sources)
    assert by_id["no-image"] == "/static/placeholder.svg"
    cifar = [src for alt, src in sources if alt.startswith("CIFAR10.")]
    assert cifar
    assert all(src.startswith("/cifar/CIFAR10.") for src in cifar)


async def test_a_reachable_address_needs_a_password_and_the_page_asks_for_it(
    start_search_app: StartSearch, root: Path
) -> None:
    with pytest.raises(WebConfigError, match="WEB_PASSWORD"):
        WebSettings(root=root, addr="0.0.0.0:0").check()
    search = await start_search_app()
    web = WebApp(WebSettings(root=root, addr="127.0.0.1:0", password="s3cret"),
                 AsyncImageSearchClient(search.address))  # fmt: skip
    await web.start()
    try:
        async with httpx.AsyncClient(base_url=web.url) as http:
            assert (await http.get("")).status_code == 401
            assert (await http.get("", auth=("me", "wrong"))).status_code == 401
            reply = await http.get("", auth=("me", "s3cret"))
            assert reply.status_code == 200
            assert "<button" in reply.text
    finally:
        await web.stop()


async def test_with_tokens_the_gallery_sends_its_token_and_never_shows_it(
    page: Page, start_search_app: StartSearch, start_web: StartWeb
) -> None:
    token = "gallery-token-0123456789abcdef"
    search = await start_search_app(tokens=token)
    web = await start_web(search, token=token)
    await press_index(page, web, "done: stored 12")
    await expect(page.locator(".tile img")).to_have_count(12, timeout=WAIT_MS)
    assert token not in await page.content()
    async with httpx.AsyncClient(base_url=web.url) as http:
        for path in ("", "api/index", "api/health", "?text=red"):
            assert token not in (await http.get(path)).text


def test_the_process_refuses_a_reachable_address_without_a_password(root: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "WEB_PASSWORD"}
    done = subprocess.run(
        [sys.executable, "-m", "imagesearch_client.web", "--root", str(root),
         "--addr", "0.0.0.0:0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "set WEB_PASSWORD" in done.stderr
    assert "Traceback" not in done.stderr


SECURITY_HEADERS = ("content-security-policy", "x-content-type-options", "x-frame-options")


async def test_cross_site_writes_and_foreign_host_names_are_refused(
    start_search_app: StartSearch, start_web: StartWeb
) -> None:
    search = await start_search_app()
    web = await start_web(search, password="s3cret")
    auth = ("me", "s3cret")
    async with httpx.AsyncClient(base_url=web.url, auth=auth) as http:
        # Another site's page posting in a visitor's browser, basic auth and all.
        for headers in (
            {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "same-site"},
        ):
            reply = await http.post(
                "api/index?ns=attacker", content=b"x",
                headers={"Content-Type": "text/plain", **headers},
            )  # fmt: skip
            assert reply.status_code == 403, headers
            assert "another site" in reply.text
        assert (await http.get("api/index")).json()["running"] is False
        # A DNS-rebinding page reaches the gallery under the attacker's host name.
        for host in ("rebind.attacker.example", "rebind.attacker.example:80", "localhost.evil"):
            for path in ("", "api/index", "thumb/red/red-0.jpg", "api/health"):
                reply = await http.get(path, headers={"Host": host})
                assert reply.status_code == 421, (host, path)
                assert "WEB_ALLOWED_HOSTS" in reply.text
        # No redirect is ever built from the Host header.
        slashed = await http.get("api/index/", headers={"Host": "127.0.0.1"})
        assert slashed.status_code == 404
        assert "location" not in slashed.headers
        # The gallery's own page, and programs that send no browser headers, may write.
        port = web.url.rstrip("/").rsplit(":", 1)[1]
        for headers in (
            {"Sec-Fetch-Site": "same-origin", "Origin": web.url.rstrip("/")},
            {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
            {},
        ):
            reply = await http.post("api/index?ns=mine", headers=headers)
            assert reply.status_code == 202, headers
        for reply in (await http.get(""), await http.get("static/gallery.js"), slashed):
            for name in SECURITY_HEADERS:
                assert name in reply.headers, (reply.url, name)
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
        assert (await http.get("", headers={"Host": "[::1]:8080"})).status_code == 200
    async with AsyncImageSearchClient(search.address) as client:
        for _ in range(600):
            if not web.gallery.job.running:
                break
            await asyncio.sleep(0.05)
        namespaces = set((await client.stats()).namespaces)
    assert "attacker" not in namespaces
    assert "mine" in namespaces


async def test_wrong_passwords_are_answered_ever_more_slowly(
    start_search_app: StartSearch, start_web: StartWeb
) -> None:
    search = await start_search_app()
    web = await start_web(search, password="s3cret")
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=web.url) as http:
        waits = []
        for guess in ("a", "b"):
            began = loop.time()
            assert (await http.get("api/index", auth=("me", guess))).status_code == 401
            waits.append(loop.time() - began)
        # Guesses sent side by side from one address wait their turn.
        began = loop.time()
        answers = await asyncio.gather(*(http.get("api/index", auth=("me", g)) for g in ("e", "f")))
        together = loop.time() - began
        began = loop.time()
        right = await http.get("api/index", auth=("me", "s3cret"))
        assert right.status_code == 200
        assert loop.time() - began < 0.25  # the right password is never held back
    assert [a.status_code for a in answers] == [401, 401]
    assert waits[0] >= 0.25
    for before, after in itertools.pairwise(waits):
        assert after >= 1.8 * before, waits
    assert together >= 1.0 + 2.0 - 0.1, together  # one after the other, doubling


async def test_half_sent_requests_are_dropped_and_connections_are_capped(
    start_search_app: StartSearch, start_web: StartWeb
) -> None:
    search = await start_search_app()
    web = await start_web(search, max_connections=20, header_timeout_s=1.0)
    host, port = web.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    streams = []
    for _ in range(60):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
        await writer.drain()
        streams.append((reader, writer))
    began = loop.time()

    async def closed_after(reader: asyncio.StreamReader) -> float:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the gallery
        return loop.time() - began

    ended = await asyncio.gather(*(closed_after(reader) for reader, _ in streams))
    at_once = [t for t in ended if t < 0.5]
    late = [t for t in ended if t >= 0.5]
    assert len(at_once) >= 40, ended  # past the cap: closed on arrival
    assert late, ended
    assert all(t < 3.0 for t in late), ended  # the rest: at the header deadline
    for _, writer in streams:
        writer.close()
    async with httpx.AsyncClient(base_url=web.url) as http:
        assert (await http.get("api/index")).status_code == 200


async def test_the_index_job_skips_links_out_of_the_root_and_labels_stay_bounded(
    gallery: WebApp, root: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(picture("purple"), "PNG"))
    (root / "red" / "escape.png").symlink_to(secret)
    async with httpx.AsyncClient(base_url=gallery.url) as http:
        assert (await http.post("api/index")).status_code == 202
        for _ in range(1200):
            status = (await http.get("api/index")).json()
            if not status["running"]:
                break
            await asyncio.sleep(0.05)
        assert (status["total"], status["stored"]) == (13, 12)  # 12 images and broken.jpg
        for i in range(100):
            assert (await http.get(f"?ns=visitor-{i}")).status_code == 200
    async with AsyncImageSearchClient(gallery.client.target) as client:
        stored = [r.metadata["path"] async for page in client.iter_pages(include_metadata=True)
                  for r in page.records]  # fmt: skip
    assert "red/escape.png" not in stored
    assert len(gallery.gallery._labels) <= 64


async def test_a_gallery_without_the_token_says_which_variable_to_set(
    start_search_app: StartSearch, start_web: StartWeb
) -> None:
    search = await start_search_app(tokens="needed-token")
    web = await start_web(search)
    async with httpx.AsyncClient(base_url=web.url) as http:
        page = await http.get("")
        health = await http.get("api/health")
    assert "set IMAGESEARCH_TOKEN" in page.text
    assert "cannot be reached" not in page.text
    assert health.status_code == 503
    assert "set IMAGESEARCH_TOKEN" in health.json()["error"]


async def test_a_label_alone_browses_that_label_and_a_search_is_headed_by_its_image(
    page: Page, gallery: WebApp
) -> None:
    await press_index(page, gallery, "done: stored 12")
    await page.goto(gallery.url + "?label=red")
    await expect(page.locator("#heading")).to_have_text("4 images labelled “red”")
    await expect(page.locator(".tile img")).to_have_count(4)
    assert set(await page.locator(".tile .label").all_text_contents()) == {"red"}
    paths = await page.locator(".tile .path").all_text_contents()
    assert all(re.fullmatch(r"red/red-\d\.(png|jpg)", p) for p in paths), paths
    first = await page.locator(".tile img").first.get_attribute("alt")
    await page.locator(".tile img").first.click()
    await expect(page).to_have_url(re.compile(rf"\?similar={first}"))
    heading = await page.locator("#heading").text_content()
    assert heading is not None
    assert re.fullmatch(r"Most similar to red/red-\d\.(png|jpg)", heading), heading
    query = page.locator("#query img")
    await expect(query).to_have_attribute("alt", f"query: {first}")
    await page.wait_for_function("() => document.querySelector('#query img').naturalWidth > 0")
    await page.screenshot(path=screenshot_path("similar-headed"), full_page=True)


async def test_a_favicon_and_an_old_index_report_left_behind(gallery: WebApp, root: Path) -> None:
    async with httpx.AsyncClient(base_url=gallery.url) as http:
        icon = await http.get("favicon.ico")
        assert icon.status_code == 200
        assert icon.headers["content-type"].startswith("image/svg+xml")
        assert (await http.post("api/index")).status_code == 202
        for _ in range(1200):
            if not (await http.get("api/index")).json()["running"]:
                break
            await asyncio.sleep(0.05)
        assert "IMAGE_UNREADABLE" in (await http.get("")).text  # the page after the run
        gallery.gallery.job.finished -= 120  # two minutes on
        later = (await http.get("")).text
    assert "IMAGE_UNREADABLE" not in later
    assert '<script id="index-status" type="application/json">null</script>' in later


async def test_more_and_less_like_this_refine_a_search_the_url_keeps_and_walks_back(
    page: Page, gallery: WebApp
) -> None:
    await press_index(page, gallery, "done: stored 12")
    await page.goto(gallery.url)
    await expect(page.locator(".tile img")).to_have_count(12, timeout=WAIT_MS)
    first = await page.locator(".tile img").first.get_attribute("alt")
    await page.locator(".tile img").first.click()
    await expect(page).to_have_url(re.compile(rf"\?similar={first}"))
    await expect(page.locator(".tile a.more")).to_have_count(12)
    plain = await tiles(page)
    liked, disliked = plain[3][0], plain[1][0]
    await page.locator(".tile", has=page.locator(f'img[alt="{liked}"]')).locator("a.more").click()
    await expect(page).to_have_url(re.compile(rf"more={liked}"))
    await (
        page.locator(".tile", has=page.locator(f'img[alt="{disliked}"]')).locator("a.less").click()
    )
    await expect(page).to_have_url(re.compile(rf"more={liked}.*less={disliked}"))
    await expect(page.locator("#heading")).to_contain_text("1 more like, 1 less like")
    # The store's 12 less the three given as examples.
    await expect(page.locator(".tile a.more")).to_have_count(9)
    refined = await tiles(page)
    async with AsyncImageSearchClient(gallery.client.target) as client:
        examples = [Example(id=first), Example(id=liked), Example(id=disliked, weight=-0.5)]
        own = await client.query(examples=examples, top_k=12)
    assert refined == [(m.id, f"{m.score:.3f}") for m in own]
    assert {first, liked, disliked}.isdisjoint(alt for alt, _ in refined)
    await page.screenshot(path=screenshot_path("refined"), full_page=True)
    await page.go_back()
    await page.go_back()
    await expect(page).to_have_url(re.compile(rf"\?similar={first}$"))
    assert await tiles(page) == plain


async def test_hiding_near_duplicates_folds_them_under_the_kept_tile_and_the_page_lists_groups(
    page: Page, start_search_app: StartSearch, start_web: StartWeb, root: Path
) -> None:
    search = await start_search_app()
    web = await start_web(search)
    await press_index(page, web, "done: stored 12")
    # The same picture again as a PNG: an exact duplicate of a stored record.
    twin = root / "red" / "red-0-again.png"
    twin.write_bytes(encode(Image.open(root / "red" / "red-0.jpg"), "PNG"))
    await page.get_by_role("button", name=re.compile("Index")).click()
    await expect(page.locator("#index-text")).to_contain_text("stored 1", timeout=WAIT_MS)
    # The browse page reloads itself once the job has stored something.
    await expect(page.locator(".tile img")).to_have_count(13, timeout=WAIT_MS)
    await page.wait_for_load_state()
    original = await page.locator(".tile img").evaluate_all("els => els.map(e => e.alt)")
    await page.locator(".tile img[alt]").first.click()
    await expect(page.locator("#toggle-dedup")).to_be_visible()
    await page.locator("#toggle-dedup").click()
    await expect(page).to_have_url(re.compile(r"dedup=1"))
    await page.wait_for_load_state()
    folded = page.locator("details.similar")
    await expect(folded.first).to_contain_text(re.compile(r"\+\d+ similar"))
    await folded.first.locator("summary").click()
    await expect(folded.first.locator("img").first).to_be_visible()
    shown = [a for a, _ in await tiles(page)]
    hidden = await folded.locator("img").evaluate_all("els => els.map(e => e.alt)")
    assert len(original) == 13
    assert set(shown).isdisjoint(hidden)
    pair = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (twin, root / "red" / "red-0.jpg")}
    if pair & set(shown):  # the pair is among the results: one of the two is folded
        assert len(pair & set(shown)) == 1
        assert pair & set(hidden)
    await page.screenshot(path=screenshot_path("dedup"), full_page=True)
    await page.locator("#duplicates-link").click()
    await expect(page).to_have_url(re.compile(r"/duplicates$"))
    await expect(page.locator("#heading")).to_contain_text("groups of near-duplicates")
    await page.goto(f"{web.url}duplicates?min_score=0.9999")
    group = page.locator(".group")
    await expect(group).to_have_count(1, timeout=WAIT_MS)
    await expect(group).to_contain_text("2 exact duplicates")
    assert {a for a in await group.locator(".tile img").evaluate_all(
        "els => els.map(e => e.alt)")} == pair  # fmt: skip
    scores = await group.locator(".score").all_text_contents()
    assert scores[0] == "1.000"
    assert float(scores[1]) >= 0.9999 - 5e-4
    await page.screenshot(path=screenshot_path("duplicates"), full_page=True)
