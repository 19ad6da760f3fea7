"""The Index button's job: index --root as `imagesearch index --label-from-dir` does,
through the same pipeline (indexing.py), with progress the page polls."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagesearch_client.aio import AsyncImageSearchClient
from imagesearch_client.errors import ImageSearchError
from imagesearch_client.indexing import BATCH, Dedup, IndexReport, records, under
from imagesearch_client.messages import ImageRecord
from imagesearch_client.sources import SourceImage, folder_images, image_files

log = logging.getLogger(__name__)

SHOWN_FOR_S = 60.0


@dataclass
class IndexJob:
    """One run of the Index button; `status()` is what the page shows."""

    root: Path
    namespace: str = ""
    total: int = 0
    report: IndexReport = field(default_factory=IndexReport)
    running: bool = False
    error: str = ""
    started: float = 0.0
    finished: float = 0.0

    def recent(self) -> bool:
        """Running, or ended less than SHOWN_FOR_S ago: what a page load still reports
        (the reload at the end shows its failures; later pages need not)."""
        if not self.started:
            return False
        return self.running or time.monotonic() - self.finished < SHOWN_FOR_S

    def status(self) -> dict[str, Any]:
        elapsed = (self.finished or time.monotonic()) - self.started if self.started else 0.0
        done = self.report.done
        rate = done / elapsed if elapsed > 0 else 0.0
        left = max(self.total - done, 0)
        return {
            "running": self.running,
            "total": self.total,
            "done": done,
            "stored": self.report.stored,
            "skipped": self.report.skipped,
            "failed": len(self.report.failures),
            "failures": self.report.failures[:200],
            "rate": round(rate, 1),
            "eta_s": round(left / rate, 1) if rate > 0 and self.running else None,
            "elapsed_s": round(elapsed, 1),
            "error": self.error,
        }

    async def run(self, client: AsyncImageSearchClient) -> None:
        self.running, self.started, self.finished = True, time.monotonic(), 0.0
        self.report, self.error = IndexReport(), ""
        try:
            files = await asyncio.to_thread(image_files, self.root)
            self.total = len(files)
            sent: list[list[SourceImage]] = []

            async def requests() -> AsyncIterator[list[ImageRecord]]:
                async for batch in self._new_batches(client, files):
                    sent.append(batch)
                    yield records(batch)

            async for outcomes in client.ingest(requests(), namespace=self.namespace):
                self.report.count(sent.pop(0), outcomes)
        except ImageSearchError as exc:
            self.error = exc.message
            log.warning("indexing %s stopped: %s", self.root, exc)
        finally:
            self.running, self.finished = False, time.monotonic()

    async def _new_batches(
        self, client: AsyncImageSearchClient, files: list[Path]
    ) -> AsyncIterator[list[SourceImage]]:
        dedup = Dedup(self.report)
        images = folder_images(self.root, files, label_from_dir=True)
        while chunk := await asyncio.to_thread(_take, images, BATCH):
            found = await client.fetch([s.id for s in chunk], namespace=self.namespace)
            for batch in under(dedup.fresh(chunk, {r.id for r in found})):
                yield batch


def _take(images: Iterator[SourceImage], count: int) -> list[SourceImage]:
    """The next `count` images, read from disk (in a worker thread)."""
    return list(itertools.islice(images, count))
