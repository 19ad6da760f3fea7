"""The ingest pipeline of `imagesearch index` and of the web gallery's Index button.

Both read a source a chunk at a time, leave out what is stored already (or was seen
earlier in the same run), cut the rest into batches of bounded bytes and stream them
through IngestImages; the CLI drives it with the sync client, the gallery with the
async one, and both keep score in an IndexReport.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from imagesearch_client.messages import ImageRecord, Outcome
from imagesearch_client.sources import SourceImage

BATCH = 32
# Well under search_service's default message limit (16 MiB), however large the photos.
BATCH_BYTES = 8 * 1024 * 1024


@dataclass
class IndexReport:
    seen: int = 0
    stored: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        """Images dealt with: stored, already there, or failed."""
        return self.stored + self.skipped + len(self.failures)

    @property
    def failed_entirely(self) -> bool:
        """Nothing is in the store for all that was read (not a bad file or two)."""
        return bool(self.failures) and self.stored + self.skipped == 0

    def count(self, sources: Sequence[SourceImage], outcomes: Sequence[Outcome]) -> None:
        for source, outcome in zip(sources, outcomes, strict=True):
            if outcome.ok:
                self.stored += 1
            else:
                self.failures.append(
                    {"name": source.name, "reason": outcome.reason, "message": outcome.message}
                )


class Dedup:
    """Leaves out images that are stored already or were seen earlier in this run."""

    def __init__(self, report: IndexReport) -> None:
        self._report = report
        self._seen: set[str] = set()

    def fresh(self, chunk: Sequence[SourceImage], stored: set[str]) -> list[SourceImage]:
        self._report.seen += len(chunk)
        out = []
        for source in chunk:
            if source.id in stored or source.id in self._seen:
                self._report.skipped += 1
            else:
                self._seen.add(source.id)
                out.append(source)
        return out


def under(sources: list[SourceImage], limit: int = BATCH_BYTES) -> Iterator[list[SourceImage]]:
    """Consecutive runs of `sources` of at most `limit` bytes (an image over it goes alone)."""
    batch: list[SourceImage] = []
    size = 0
    for source in sources:
        if batch and size + len(source.image) > limit:
            yield batch
            batch, size = [], 0
        batch.append(source)
        size += len(source.image)
    if batch:
        yield batch


def records(batch: Sequence[SourceImage]) -> list[ImageRecord]:
    return [ImageRecord(image=s.image, id=s.id, metadata=s.metadata) for s in batch]
