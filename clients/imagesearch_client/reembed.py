"""`imagesearch reembed`: moves a store to a new model. Every record of the old stack's
store is embedded again by the new stack's model from its source image and stored there
with the same id, namespace and metadata; the old stack serves unchanged meanwhile.

Sources: a record's `path` under --root (as `imagesearch index` stored it; a file whose
bytes no longer match a content id is changed, not the indexed image), and CIFAR records
(CIFAR10.123) from --cifar archives, read in one pass after the files. A record with no
source is listed in the report, never dropped unsaid.

The new store is the journal: a record already there is not embedded again, so a run
that was interrupted picks up where it stopped. Memory: a page of records and a batch of
images at a time, and the ids of the CIFAR records that wait for the archive pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imagesearch.ids import content_id

from imagesearch_client.client import ImageSearchClient
from imagesearch_client.indexing import BATCH, records, under
from imagesearch_client.messages import FetchedRecord, ImageRecord, Stats, listed_name
from imagesearch_client.sources import CIFAR_ID, SourceImage, every_cifar_image, inside

PAGE = 64
CONTENT_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class ReembedReport:
    listed: int = 0
    reembedded: int = 0
    already: int = 0
    missing: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every listed record is in the new store."""
        return not (self.missing or self.failed)


@dataclass(frozen=True, slots=True)
class Sources:
    root: Path | None = None
    cifar: tuple[Path, ...] = ()


def reembed(
    old: ImageSearchClient,
    new: ImageSearchClient,
    *,
    namespaces: Sequence[str] | None,
    sources: Sources,
    progress: Callable[[int], object] = lambda n: None,
) -> ReembedReport:
    """Re-embeds the records of `namespaces` (None: all) of `old` into `new`."""
    report = ReembedReport()
    chosen = (
        list(namespaces)
        if namespaces is not None
        else sorted(listed_name(n) for n in old.stats().namespaces)
    )
    waiting: dict[str, set[str]] = {}  # namespace -> CIFAR ids for the archive pass
    for namespace in chosen:
        batches = _file_batches(old, new, namespace, sources, report, waiting, progress)
        _store(new, namespace, batches, report, progress)
    if any(waiting.values()):
        for namespace, batch in _cifar_batches(old, sources.cifar, waiting):
            _store(new, namespace, iter([batch]), report, progress)
    for namespace, ids in waiting.items():
        for record_id in sorted(ids):
            why = "a CIFAR record that no --cifar archive holds"
            report.missing.append({"namespace": namespace, "id": record_id, "why": why})
            progress(1)
    return report


def total(stats: Stats, namespaces: Sequence[str] | None) -> int:
    """The records a run over `namespaces` (None: all) lists, by the old store's stats."""
    counts = {listed_name(n): count for n, count in stats.namespaces.items()}
    if namespaces is None:
        return sum(counts.values())
    return sum(counts.get(n, 0) for n in namespaces)


def _file_batches(
    old: ImageSearchClient,
    new: ImageSearchClient,
    namespace: str,
    sources: Sources,
    report: ReembedReport,
    waiting: dict[str, set[str]],
    progress: Callable[[int], object],
) -> Iterator[list[SourceImage]]:
    """The records of `namespace` not in `new` yet whose file is found, in batches; CIFAR
    records go to `waiting`, records without a source to the report."""
    pages = old.iter_pages(namespace=namespace, include_metadata=True, page_size=PAGE)
    for page in pages:
        report.listed += len(page.records)
        done = {r.id for r in new.fetch(page.ids, namespace=namespace)}
        todo = []
        for record in page.records:
            if record.id in done:
                report.already += 1
                progress(1)
            elif sources.cifar and CIFAR_ID.match(record.id):
                waiting.setdefault(namespace, set()).add(record.id)
            elif (source := _file_of(record, sources.root, report, namespace)) is not None:
                todo.append(source)
            else:
                progress(1)
        yield from under(todo)


def _file_of(
    record: FetchedRecord, root: Path | None, report: ReembedReport, namespace: str
) -> SourceImage | None:
    path = record.metadata.get("path")
    why = ""
    if CIFAR_ID.match(record.id) and not path:
        why = "a CIFAR record, and no --cifar archive was given"
    elif not isinstance(path, str) or not path:
        why = "no path in its metadata"
    elif root is None:
        why = f"its path {path!r} needs --root"
    elif (file := inside(root, path)) is None:
        why = f"{path} is not an image file under {root}"
    else:
        data = file.read_bytes()
        if CONTENT_ID.match(record.id) and content_id(data) != record.id:
            why = f"{path} has changed since it was indexed (its bytes are another image)"
        else:
            return SourceImage(record.id, data, path, dict(record.metadata))
    report.missing.append({"namespace": namespace, "id": record.id, "why": why})
    return None


def _cifar_batches(
    old: ImageSearchClient, archives: Sequence[Path], waiting: dict[str, set[str]]
) -> Iterator[tuple[str, list[SourceImage]]]:
    """The waiting CIFAR records, read from the archives in one pass, with the metadata
    the old store holds for them (read batch by batch, as they are found)."""
    found: dict[str, list[SourceImage]] = {}
    for image in every_cifar_image(archives):
        for namespace, ids in waiting.items():
            if image.id in ids:
                ids.discard(image.id)
                batch = found.setdefault(namespace, [])
                batch.append(image)
                if len(batch) == BATCH:
                    yield namespace, _with_old_metadata(old, namespace, found.pop(namespace))
        if not any(waiting.values()):
            break
    for namespace, batch in found.items():
        yield namespace, _with_old_metadata(old, namespace, batch)


def _with_old_metadata(
    old: ImageSearchClient, namespace: str, batch: list[SourceImage]
) -> list[SourceImage]:
    stored = {r.id: r.metadata for r in old.fetch([s.id for s in batch], namespace=namespace)}
    return [
        SourceImage(s.id, s.image, s.name, stored[s.id]) for s in batch if s.id in stored
    ]  # a record deleted from the old store meanwhile is not brought back


def _store(
    new: ImageSearchClient,
    namespace: str,
    batches: Iterator[list[SourceImage]],
    report: ReembedReport,
    progress: Callable[[int], object],
) -> None:
    sent: dict[int, list[SourceImage]] = {}

    def requests() -> Iterator[list[ImageRecord]]:
        for n, batch in enumerate(batches):
            sent[n] = batch
            yield records(batch)

    for n, outcomes in enumerate(new.ingest(requests(), namespace=namespace)):
        for source, outcome in zip(sent.pop(n), outcomes, strict=True):
            if outcome.ok:
                report.reembedded += 1
            else:
                failure = {"reason": outcome.reason, "message": outcome.message}
                report.failed.append({"namespace": namespace, "id": source.id, **failure})
        progress(len(outcomes))
