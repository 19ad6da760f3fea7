"""`imagesearch export` / `import`: a store's records to one Parquet file and back.

Moving from the embedded store to Pinecone (or back, or to another machine) costs no
embedding: the vectors travel with their ids, metadata and namespace, and the file says
which model made them, so they are only ever written beside that model's vectors.

The file (FORMAT 1) is plain Parquet, readable by pyarrow, pandas, DuckDB, Spark:

    namespace  string (dictionary-encoded)   "" is the default namespace
    id         string
    values     fixed_size_list<float32>[dimension]   the stored unit vector, bit for bit
    metadata   string                         the record's metadata as compact JSON

and, in the schema's key-value metadata under "imagesearch", a JSON object with
`format`, `model_id`, `model_fingerprint`, `dimension`, `store` and `namespaces`
(records per namespace when the export began). Metadata is JSON text rather than
columns because Pinecone's metadata has no schema: one key may hold a string in one
record and a number or a list in the next.

Both directions stream: an export holds one row group (ROW_GROUP rows) in memory, an
import one file batch plus the requests in flight, whatever the file's size. An import
can simply be run again after an interruption: upserts overwrite by id, so nothing is
skipped or duplicated (`--skip` starts later, at the row count it printed).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imagesearch_client.client import ImageSearchClient
from imagesearch_client.errors import FailedPrecondition
from imagesearch_client.messages import FetchedRecord, VectorRecord, listed_name, reported_name

FORMAT = 1
META_KEY = b"imagesearch"
ROW_GROUP = 10_000
# Rows an import reads from the file at a time.
READ_BATCH = 2_000
LIST_PAGE = 1000
# Per UpsertVectors request: the service takes 1000 records and 16 MiB by default.
UPSERT_RECORDS = 1000
UPSERT_BYTES = 4 * 1024 * 1024
IN_FLIGHT = 4

Progress = Callable[[int], object]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What an export file holds, from its footer."""

    model_id: str
    model_fingerprint: str
    dimension: int
    store: str
    namespaces: dict[str, int]
    rows: int


@dataclass
class ImportReport:
    """`resume_at`: every row before it was answered; `--skip` it to go on from there."""

    rows: int = 0
    stored: int = 0
    resume_at: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)


class ImportInterrupted(Exception):
    """An import stopped by an error; `report.resume_at` says where to go on."""

    def __init__(self, cause: BaseException, report: ImportReport) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.report = report


def schema(dimension: int, info: dict[str, Any] | None = None) -> pa.Schema:
    fields = [
        pa.field("namespace", pa.dictionary(pa.int32(), pa.string()), nullable=False),
        pa.field("id", pa.string(), nullable=False),
        pa.field("values", pa.list_(pa.float32(), dimension), nullable=False),
        pa.field("metadata", pa.string(), nullable=False),
    ]
    metadata = {META_KEY: json.dumps(info).encode()} if info is not None else None
    return pa.schema(fields, metadata=metadata)


# --- export --------------------------------------------------------------------------


def export_records(
    client: ImageSearchClient,
    out: Path,
    *,
    namespaces: Sequence[str] = (),
    progress: Progress | None = None,
    total: Callable[[int], None] | None = None,
) -> FileInfo:
    """Writes every record of `namespaces` (all when empty) to `out`, atomically.

    `total(n)` is told how many records to expect, `progress(k)` of each k written.
    """
    stats = client.stats()
    if not stats.model_fingerprint:
        raise ValueError(f"the store at {client.target} is empty: there is nothing to export")
    chosen = list(namespaces) or sorted(stats.namespaces)
    counts = {ns: stats.namespaces.get(reported_name(ns), 0) for ns in chosen}
    if total is not None:
        total(sum(counts.values()))
    info = {
        "format": FORMAT,
        "model_id": stats.model_id,
        "model_fingerprint": stats.model_fingerprint,
        "dimension": stats.dimension,
        "store": stats.store,
        "namespaces": counts,
    }
    table_schema = schema(stats.dimension, info)
    partial = out.with_name(out.name + ".partial")
    rows = 0
    try:
        with pq.ParquetWriter(partial, table_schema, compression="zstd") as writer:
            # Each page becomes Arrow columns at once (2 KB a record, not Python floats).
            buffer: list[pa.Table] = []
            buffered = 0
            for namespace in chosen:
                for page in client.iter_pages(
                    namespace=listed_name(namespace),
                    page_size=LIST_PAGE,
                    include_metadata=True,
                    include_values=True,
                ):
                    buffer.append(_table([(listed_name(namespace), r) for r in page.records],
                                         table_schema))  # fmt: skip
                    buffered += len(page.records)
                    if progress is not None:
                        progress(len(page.records))
                    if buffered >= ROW_GROUP:
                        writer.write_table(pa.concat_tables(buffer))
                        rows += buffered
                        buffer, buffered = [], 0
            if buffer:
                writer.write_table(pa.concat_tables(buffer))
                rows += buffered
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return FileInfo(
        stats.model_id, stats.model_fingerprint, stats.dimension, stats.store, counts, rows
    )


def _table(rows: list[tuple[str, FetchedRecord]], table_schema: pa.Schema) -> pa.Table:
    dimension = table_schema.field("values").type.list_size
    flat = np.asarray([r.values for _, r in rows], dtype=np.float32).reshape(-1)
    values = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dimension)
    return pa.Table.from_arrays(
        [
            pa.array([ns for ns, _ in rows], type=pa.string()).dictionary_encode(),
            pa.array([r.id for _, r in rows], type=pa.string()),
            values,
            pa.array([_json(r.metadata) for _, r in rows], type=pa.string()),
        ],
        schema=table_schema,
    )


# --- import --------------------------------------------------------------------------


def read_info(path: Path) -> FileInfo:
    """The footer of an export; ValueError when `path` is not one."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ValueError(f"{path} is not a readable Parquet file ({exc})") from None
    raw = (parquet.schema_arrow.metadata or {}).get(META_KEY)
    try:
        info = json.loads(raw) if raw is not None else None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ValueError
        return FileInfo(
            model_id=str(info["model_id"]),
            model_fingerprint=str(info["model_fingerprint"]),
            dimension=int(info["dimension"]),
            store=str(info["store"]),
            namespaces={str(k): int(v) for k, v in info["namespaces"].items()},
            rows=parquet.metadata.num_rows,
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ValueError(
            f"{path} is not an export of imagesearch (format {FORMAT}); make one with "
            "`imagesearch export`"
        ) from None


def import_records(
    client: ImageSearchClient,
    path: Path,
    *,
    skip: int = 0,
    progress: Progress | None = None,
) -> ImportReport:
    """Upserts every row of the export at `path` from row `skip` on.

    Raises FailedPrecondition, before anything is written, when the service runs
    another model than the one that made the file.
    """
    info = read_info(path)
    running = client.stats()
    if running.model_fingerprint and running.model_fingerprint != info.model_fingerprint:
        raise FailedPrecondition(
            f"{path} holds vectors of {info.model_id} (fingerprint {info.model_fingerprint}), "
            f"but {client.target} runs {running.model_id} (fingerprint "
            f"{running.model_fingerprint}); import it into a service that runs "
            f"{info.model_id}, or index the images again",
            code="FAILED_PRECONDITION",
            reason="MODEL_MISMATCH",
        )
    report = ImportReport(resume_at=skip)
    gate = threading.Semaphore(IN_FLIGHT)
    lock = threading.Lock()
    first_error: list[BaseException] = []
    # Requests finish out of order; the resume point only moves past answered ones.
    answered: dict[int, int] = {}
    pending: list[int] = []

    def send(namespace: str, records: list[VectorRecord], rows: int, start: int) -> None:
        try:
            outcomes = client.upsert_vectors(
                records, namespace=namespace, model_fingerprint=info.model_fingerprint
            )
            with lock:
                for outcome in outcomes:
                    if outcome.ok:
                        report.stored += 1
                    else:
                        report.failures.append(
                            {"namespace": namespace, "id": outcome.id, "reason": outcome.reason,
                             "message": outcome.message}
                        )  # fmt: skip
                report.rows += rows
                answered[start] = rows
                while pending and pending[0] in answered:
                    report.resume_at = pending[0] + answered.pop(pending.pop(0))
            if progress is not None:
                progress(rows)
        finally:
            gate.release()

    malformed: list[MalformedRow] = []
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        futures: list[Future[None]] = []
        start = skip
        try:
            for namespace, records in _requests(path, info.dimension, skip):
                gate.acquire()
                if first_error:
                    gate.release()
                    break
                with lock:
                    pending.append(start)
                future = pool.submit(send, namespace, records, len(records), start)
                future.add_done_callback(lambda f: first_error.extend(_error(f)))
                futures.append(future)
                futures = [f for f in futures if not f.done()]
                start += len(records)
        except MalformedRow as exc:
            malformed.append(exc)
        for future in futures:
            future.exception()
    if malformed and not first_error:
        first_error.append(malformed[0])
    if first_error:
        raise ImportInterrupted(first_error[0], report)
    return report


def _error(future: Future[None]) -> list[BaseException]:
    error = future.exception()
    return [error] if error is not None else []


class MalformedRow(ValueError):
    """A row of an import file that cannot be sent; every row before it was."""

    def __init__(self, path: Path, row: int, why: str) -> None:
        super().__init__(f"{path}: row {row} {why}")
        self.row = row


def _check_columns(path: Path, schema_arrow: pa.Schema, dimension: int) -> None:
    """ValueError naming the column when the file's columns are not an export's."""
    wanted = {
        "namespace": "string",
        "id": "string",
        "values": f"fixed_size_list<float>[{dimension}]",
        "metadata": "string",
    }
    for name, kind in wanted.items():
        index = schema_arrow.get_field_index(name)
        if index < 0:
            raise ValueError(f"{path} is not an export of imagesearch: it has no column {name!r}")
        found = schema_arrow.field(index).type
        if pa.types.is_dictionary(found):
            found = found.value_type
        ok = (
            pa.types.is_fixed_size_list(found)
            and found.list_size == dimension
            and pa.types.is_float32(found.value_type)
            if name == "values"
            else pa.types.is_string(found) or pa.types.is_large_string(found)
        )
        if not ok:
            raise ValueError(
                f"{path} is not an export of imagesearch: column {name!r} holds {found}, not {kind}"
            )


def _first_bad_row(chunk: pa.RecordBatch, dimension: int) -> tuple[int, str] | None:
    """(index in `chunk`, why) of its first row that cannot be sent as it is; None if none."""
    bad: list[tuple[int, str]] = []
    for name in ("namespace", "id", "metadata", "values"):
        nulls = chunk.column(name).is_null().to_numpy(zero_copy_only=False)
        if nulls.any():
            bad.append((int(np.flatnonzero(nulls)[0]), f"has no {name} (null)"))
    column = chunk.column("values")
    # flatten() leaves out the rows that are null whole: map what it holds back to rows.
    whole = np.flatnonzero(~column.is_null().to_numpy(zero_copy_only=False))
    missing = column.flatten().is_null().to_numpy(zero_copy_only=False)
    if missing.any():
        index = int(np.flatnonzero(missing)[0])
        bad.append((int(whole[index // dimension]), f"has a null in values[{index % dimension}]"))
    for i, text in enumerate(chunk.column("metadata").to_pylist()):
        if bad and i >= min(bad)[0]:
            break
        try:
            parsed = json.loads(text) if text is not None else {}
        except (ValueError, RecursionError):
            bad.append((i, "has metadata that is not JSON"))
            break
        if not isinstance(parsed, dict):
            bad.append((i, "has metadata that is not a JSON object"))
            break
    return min(bad) if bad else None


def _requests(path: Path, dimension: int, skip: int) -> Iterator[tuple[str, list[VectorRecord]]]:
    """(namespace, records) per UpsertVectors call, in file order, within its limits.

    Every row is checked before it is sent: at the first that cannot be (a null, metadata
    that is not a JSON object), the rows before it are sent and MalformedRow is raised."""
    parquet = pq.ParquetFile(path)
    _check_columns(path, parquet.schema_arrow, dimension)
    seen = 0
    namespace, batch, size = "", list[VectorRecord](), 0
    for chunk in parquet.iter_batches(batch_size=READ_BATCH):
        if seen + chunk.num_rows <= skip:
            seen += chunk.num_rows
            continue
        start = max(0, skip - seen)
        first_row = seen + start
        seen += chunk.num_rows
        chunk = chunk.slice(start)
        problem = _first_bad_row(chunk, dimension)
        if problem is not None:
            chunk = chunk.slice(0, problem[0])
        namespaces = chunk.column("namespace").to_pylist()
        ids = chunk.column("id").to_pylist()
        values = (
            chunk.column("values").flatten().to_numpy(zero_copy_only=False).reshape(-1, dimension)
        )
        metadata = chunk.column("metadata").to_pylist()
        for i, record_id in enumerate(ids):
            cost = len(record_id) + 5 * dimension + 2 * len(metadata[i]) + 64
            if batch and (
                namespaces[i] != namespace
                or len(batch) >= UPSERT_RECORDS
                or size + cost > UPSERT_BYTES
            ):
                yield namespace, batch
                batch, size = [], 0
            namespace = namespaces[i]
            batch.append(VectorRecord(record_id, values[i].tolist(), json.loads(metadata[i])))
            size += cost
        if problem is not None:
            if batch:
                yield namespace, batch
            raise MalformedRow(path, first_row + problem[0], problem[1])
    if batch:
        yield namespace, batch


def _json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
