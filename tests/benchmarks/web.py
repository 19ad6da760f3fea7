"""`make bench-web`: the gallery's time to first results for a click, on N stored images.

Real processes: embed_service (the tiny test CLIP: a click queries by id and embeds
nothing, so the model's size does not enter), search_service on the local store, and the
gallery; N generated photos (default 10k, 10 labels) indexed through `imagesearch index`.
Chromium (Playwright) opens the gallery and clicks a tile of the answer, CLICKS times
(default 20), each time on a tile it has not clicked before: from the click to the new
page showing its k=12 results with every thumbnail loaded (first thumbnails are made
then, so this includes making them). Also the server's own render time of the same
page (GET over HTTP, no browser), for where the time goes.

    python -m tests.benchmarks.web [--images 10000] [--clicks 20]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from imagesearch_client import ImageSearchClient
from PIL import Image, ImageDraw

from tests.benchmarks.embed import CACHE
from tests.benchmarks.search import cli, start
from tests.support.tiny_clip import build_clip
from tests.web.conftest import CHROMIUM, HEADLESS_FLAGS

LOADED = """() => {
  const tiles = document.querySelectorAll('.tile');
  return tiles.length === 12 && tiles[0].querySelector('.score')?.textContent === '1.000'
    && [...document.images].every(i => i.complete && i.naturalWidth > 0);
}"""


def make_photos(folder: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    for n in range(count):
        label = f"label{n % 10}"
        (folder / label).mkdir(parents=True, exist_ok=True)
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        image = Image.new("RGB", (96, 72), colour)
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(0, 60, 2))
        draw.ellipse((x, y, x + 30, y + 24), fill=tuple(255 - c for c in colour))
        image.save(folder / label / f"photo-{n:05d}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    model_dir = build_clip(CACHE / "clip-tiny", size="tiny")
    work = Path(tempfile.mkdtemp(prefix="bench-web-"))
    log = work / "services.log"
    folder = work / "photos"
    make_photos(folder, args.images)
    processes = []
    try:
        embed, embed_addr = start(
            "embed_service", {"EMBED_MODEL": str(model_dir), "EMBED_ADDR": "127.0.0.1:0"}, log
        )
        processes.append(embed)
        search, search_addr = start(
            "search_service",
            {"SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed_addr,
             "DATA_DIR": str(work / "data"), "VECTOR_STORE": "local"},
            log,
        )  # fmt: skip
        processes.append(search)
        with ImageSearchClient(search_addr) as client:
            client.wait_ready(300)
            started = time.perf_counter()
            cli(search_addr, "index", str(folder), "--label-from-dir", "--quiet")
            stored = client.stats().total
        print(f"indexed {stored} images in {time.perf_counter() - started:.0f} s")
        web, url = start(
            "imagesearch_client.web", {"WEB_ADDR": "127.0.0.1:0"}, log,
            argv=("--root", str(folder), "--target", search_addr), name="imagesearch web",
        )  # fmt: skip
        processes.append(web)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=HEADLESS_FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            clicked: set[str] = set()
            took: list[float] = []
            for _ in range(args.clicks):
                alts = page.locator(".tile img").evaluate_all("els => els.map(e => e.alt)")
                target = next(a for a in alts if a not in clicked)
                clicked.add(target)
                begin = time.perf_counter()
                page.locator(f'.tile img[alt="{target}"]').click()
                page.wait_for_url(re.compile(rf"similar={target}"))
                page.wait_for_function(LOADED)
                took.append((time.perf_counter() - begin) * 1000)
            browser.close()
        render: list[float] = []
        for target in sorted(clicked):
            begin = time.perf_counter()
            with urllib.request.urlopen(f"{url}?similar={target}", timeout=30) as reply:
                reply.read()
            render.append((time.perf_counter() - begin) * 1000)
        print(
            f"click -> 12 results with thumbnails, {len(took)} clicks on {stored} images: "
            f"p50 {statistics.median(took):.0f} ms, max {max(took):.0f} ms"
        )
        print(f"server render of the same pages (HTTP, no browser): "
              f"p50 {statistics.median(render):.1f} ms")  # fmt: skip
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(60)


if __name__ == "__main__":
    main()
