"""Records packed into Pinecone requests within its limits, and its answers read back."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from search_service.domain import ModelInfo, Record, ScoredRecord, Vector
from search_service.filters import Metadata
from search_service.paging import refused
from search_service.stores.base import check_reply, reply_bytes

TAG_MODEL = "imagesearch-model"
TAG_FINGERPRINT = "imagesearch-fingerprint"
MAX_UPSERT_RECORDS = 1000
# Pinecone's cap is 2 MB per request; the margin covers the envelope around the records.
MAX_UPSERT_BYTES = 2_000_000 - 16_000
MAX_IDS = 1000
# ids per fetch are bounded by URL length too: ids may be 512 characters long.
FETCH_URL_BUDGET = 6_000


def tags(model: ModelInfo) -> dict[str, str]:
    # Tag values are at most 120 printable ASCII characters; the fingerprint decides.
    shown = "".join(c if c.isascii() and c.isprintable() else "?" for c in model.model_id)
    return {TAG_MODEL: shown[-120:], TAG_FINGERPRINT: model.fingerprint}


def model_from_tags(tags: Mapping[str, str] | None, dimension: int) -> ModelInfo | None:
    if not tags or not tags.get(TAG_FINGERPRINT):
        return None
    return ModelInfo(
        model_id=tags.get(TAG_MODEL, "an unknown model"),
        dimension=dimension,
        fingerprint=tags[TAG_FINGERPRINT],
    )


def floats(vector: Vector) -> list[float]:
    # orjson writes each float32 in its shortest form, which parses back to the same
    # float32: about half the bytes of float64 reprs, so twice the records per request.
    floats: list[float] = orjson.loads(
        orjson.dumps(np.ascontiguousarray(vector, dtype=np.float32),
                     option=orjson.OPT_SERIALIZE_NUMPY)
    )  # fmt: skip
    return floats


def pack(records: Sequence[Record]) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Requests of at most MAX_UPSERT_RECORDS records and MAX_UPSERT_BYTES of JSON."""
    batch: list[tuple[int, dict[str, Any]]] = []
    size = 0
    for position, record in enumerate(records):
        body: dict[str, Any] = {"id": record.id, "values": floats(record.values)}
        if record.metadata:
            body["metadata"] = record.metadata
        record_size = len(orjson.dumps(body)) + 1
        if batch and (len(batch) == MAX_UPSERT_RECORDS or size + record_size > MAX_UPSERT_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((position, body))
        size += record_size
    if batch:
        yield batch


def fetch_chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    length = 0
    for record_id in ids:
        cost = len(record_id) * 3 + 5  # percent-encoded worst case, plus "&ids="
        if chunk and (len(chunk) == MAX_IDS or length + cost > FETCH_URL_BUDGET):
            yield chunk
            chunk, length = [], 0
        chunk.append(record_id)
        length += cost
    if chunk:
        yield chunk


def list_cursor(cursor: str) -> tuple[str | None, str]:
    try:
        token, after = json.loads(cursor)
        if (token is None or isinstance(token, str)) and isinstance(after, str):
            return token, after
    except (ValueError, TypeError):
        pass
    raise refused("does not continue a listing of this store")


def metadata(raw: Mapping[str, Any] | None) -> Metadata:
    # JSON may bring a whole number back as an int; metadata numbers are floats.
    return {
        key: float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        for key, value in (raw or {}).items()
    }


def check_size(
    records: Sequence[Record | ScoredRecord], max_bytes: int | None, *, what: str
) -> None:
    size = 0
    for sent, record in enumerate(records):
        size += reply_bytes(record.id, record.values, record.metadata)
        check_reply(size, max_bytes, sent=sent, asked=len(records), what=what)
