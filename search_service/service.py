"""What search_service does, free of gRPC: validate, embed, check the model, store, query.

Every request goes through `filters.py` (Pinecone's rules) before a store sees it, and
every write or query goes through `model_guard.py`, which keeps vectors of another model
than the store's out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from imagesearch.ids import content_id
from imagesearch.limits import MAX_TEXT_CHARS

from search_service.domain import (
    Embedded,
    Embedder,
    Listed,
    Record,
    ScoredRecord,
    StoreStats,
    Vector,
)
from search_service.errors import (
    ImageRejected,
    InvalidArgument,
    InvalidVector,
    ModelMismatch,
    NotFound,
    SearchError,
)
from search_service.filters import (
    Metadata,
    parse_filter,
    validate_id,
    validate_metadata,
    validate_namespace,
    validate_prefix,
)
from search_service.model_guard import ModelGuard
from search_service.paging import Listing
from search_service.stores.base import VectorStore

log = logging.getLogger(__name__)

MAX_IMAGES_PER_BATCH = 64
MAX_VECTORS_PER_BATCH = 1000
MAX_IDS = 1000
MAX_TOP_K = 10_000
DEFAULT_TOP_K = 10
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# A float32 vector rounded from a unit one has a norm within ~6e-8 of 1.
UNIT_TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class ImageItem:
    id: str
    image: bytes
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VectorItem:
    id: str
    values: Sequence[float]
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The id an item was stored under, or why it was not stored."""

    id: str
    error: SearchError | None = None


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """Exactly one of image, text, id, vector is set."""

    image: bytes | None = None
    text: str | None = None
    id: str | None = None
    vector: Sequence[float] | None = None
    top_k: int = 0
    filter: Mapping[str, Any] | None = None
    namespace: str = ""
    include_metadata: bool = False
    include_values: bool = False
    min_score: float | None = None


@dataclass(frozen=True, slots=True)
class ListingResult:
    """One page of ListRecords; `tokens[i]` continues the listing after `records[i]`."""

    records: list[Listed]
    tokens: list[str]


class SearchService:
    def __init__(
        self, store: VectorStore, embedder: Embedder, *, max_reply_bytes: int | None = None
    ) -> None:
        """`max_reply_bytes`: what a Query or Fetch answer may take (ReplyTooLarge past it)."""
        self.store = store
        self._embed = embedder
        self._max_reply_bytes = max_reply_bytes
        self._model = ModelGuard(store, embedder)

    async def open(self) -> None:
        await self.store.open()

    async def connect(self) -> None:
        """Waits until embed_service serves, then checks its model against the store's."""
        await self._model.connect()

    # --- writes --------------------------------------------------------------------

    async def upsert_images(self, namespace: str, items: Sequence[ImageItem]) -> list[ItemResult]:
        namespace = validate_namespace(namespace)
        _check_batch(len(items), MAX_IMAGES_PER_BATCH, "records")
        results: list[ItemResult] = []
        pending: list[tuple[int, str, Metadata]] = []
        for i, item in enumerate(items):
            try:
                record_id = validate_id(item.id, field=f"records[{i}].id") if item.id else None
                if not item.image:
                    raise ImageRejected(
                        "the image is empty", field=f"records[{i}].image", reason="IMAGE_EMPTY"
                    )
                metadata = validate_metadata(item.metadata, field=f"records[{i}].metadata")
            except SearchError as exc:
                results.append(ItemResult(item.id, exc))
                continue
            record_id = record_id or content_id(item.image)
            results.append(ItemResult(record_id))
            pending.append((i, record_id, metadata))
        if not pending:
            return results
        images = [items[i].image for i, _, _ in pending]
        embedded = await self._model.embed(lambda: self._embed.embed_images(images))
        records: list[tuple[int, Record]] = []
        for (i, record_id, metadata), out in zip(pending, embedded.items, strict=True):
            if out.vector is None:
                error = ImageRejected(out.message, field=f"records[{i}].image", reason=out.reason)
                results[i] = ItemResult(record_id, error)
            else:
                records.append((i, _record(record_id, out.vector, metadata)))
        await self._store(namespace, records, results)
        return results

    async def upsert_vectors(
        self, namespace: str, items: Sequence[VectorItem], *, model_fingerprint: str = ""
    ) -> list[ItemResult]:
        namespace = validate_namespace(namespace)
        _check_batch(len(items), MAX_VECTORS_PER_BATCH, "records")
        model = await self._model.for_vectors()
        if model_fingerprint and model_fingerprint != model.fingerprint:
            raise ModelMismatch(
                f"these vectors were made by a model of fingerprint {model_fingerprint}, but "
                f"the service runs {model.model_id} (fingerprint {model.fingerprint}); their "
                "scores would mean nothing next to this model's. Import them into a service "
                "that runs their model, or index the images again"
            )
        results: list[ItemResult] = []
        records: list[tuple[int, Record]] = []
        for i, item in enumerate(items):
            try:
                record_id = validate_id(item.id, field=f"records[{i}].id")
                vector = _unit_vector(item.values, model.dimension, f"records[{i}].values")
                metadata = validate_metadata(item.metadata, field=f"records[{i}].metadata")
            except SearchError as exc:
                results.append(ItemResult(item.id, exc))
                continue
            results.append(ItemResult(record_id))
            records.append((i, _record(record_id, vector, metadata)))
        await self._store(namespace, records, results)
        return results

    async def _store(
        self, namespace: str, records: Sequence[tuple[int, Record]], results: list[ItemResult]
    ) -> None:
        """Upserts `records` (result position, record); marks the ones not stored."""
        if not records:
            return
        failed = await self.store.upsert(namespace, [record for _, record in records])
        for position, error in failed.items():
            i, record = records[position]
            results[i] = ItemResult(record.id, error)

    async def delete(
        self,
        namespace: str,
        *,
        ids: Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        delete_all: bool = False,
    ) -> None:
        namespace = validate_namespace(namespace)
        if ids is not None:
            _check_batch(len(ids), MAX_IDS, "ids")
            await self.store.delete_ids(
                namespace, [validate_id(x, field=f"ids[{i}]") for i, x in enumerate(ids)]
            )
        elif filter is not None:
            condition = parse_filter(filter)
            if condition is None:
                raise InvalidArgument(
                    "filter is empty; to delete everything in a namespace, set delete_all",
                    field="filter",
                )
            await self.store.delete_where(namespace, condition)
        elif delete_all:
            await self.store.delete_all(namespace)
        else:
            raise InvalidArgument("set one of ids, filter or delete_all", field="selector")

    # --- reads ---------------------------------------------------------------------

    async def query(self, spec: QuerySpec) -> list[ScoredRecord]:
        namespace = validate_namespace(spec.namespace)
        top_k = spec.top_k or DEFAULT_TOP_K
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument(f"top_k is {top_k}; it must be 1-{MAX_TOP_K}", field="top_k")
        if spec.min_score is not None and not math.isfinite(spec.min_score):
            raise InvalidArgument(
                f"min_score is {spec.min_score}; it must be a finite number (scores are -1 to 1)",
                field="min_score",
            )
        condition = parse_filter(spec.filter)
        vector = await self._query_vector(spec, namespace)
        found = await self.store.query(
            namespace,
            vector,
            top_k=top_k,
            condition=condition,
            include_values=spec.include_values,
            include_metadata=spec.include_metadata,
            max_bytes=self._max_reply_bytes,
        )
        # Equal scores (the same vector under several ids) come in id order on every store.
        found.sort(key=lambda match: (-match.score, match.id))
        # Applied here, not by the store, so every store keeps exactly score >= min_score.
        if spec.min_score is not None:
            found = [m for m in found if m.score >= spec.min_score]
        return found

    async def fetch(self, namespace: str, ids: Sequence[str]) -> list[Record]:
        namespace = validate_namespace(namespace)
        _check_batch(len(ids), MAX_IDS, "ids")
        return await self.store.fetch(
            namespace,
            [validate_id(x, field=f"ids[{i}]") for i, x in enumerate(ids)],
            max_bytes=self._max_reply_bytes,
        )

    async def list_records(
        self,
        namespace: str,
        *,
        prefix: str = "",
        page_size: int = 0,
        page_token: str = "",
        include_metadata: bool = False,
        include_values: bool = False,
    ) -> ListingResult:
        namespace = validate_namespace(namespace)
        prefix = validate_prefix(prefix)
        page_size = page_size or DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                f"page_size is {page_size}; it must be 1-{MAX_PAGE_SIZE} (0 means "
                f"{DEFAULT_PAGE_SIZE})",
                field="page_size",
            )
        listing = Listing(self.store.name, namespace, prefix)
        page = await self.store.list_page(
            namespace,
            prefix,
            limit=page_size,
            cursor=listing.cursor(page_token),
            include_values=include_values,
            include_metadata=include_metadata,
        )
        return ListingResult(page.records, [listing.token(c) for c in page.resume])

    async def stats(self) -> StoreStats:
        return await self.store.stats()

    async def _query_vector(self, spec: QuerySpec, namespace: str) -> Vector:
        if spec.image is not None:
            if not spec.image:
                raise ImageRejected("the query image is empty", field="image", reason="IMAGE_EMPTY")
            image = spec.image
            embedded = await self._model.embed(
                lambda: self._embed.embed_images([image]), write=False
            )
            return _vector_or_error(embedded.items[0], "image")
        if spec.text is not None:
            text = spec.text
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidArgument(
                    f"text is {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are accepted "
                    "(the model reads only its first few hundred)",
                    field="text",
                    reason="TEXT_TOO_LONG",
                )
            embedded = await self._model.embed(lambda: self._embed.embed_text(text), write=False)
            return _vector_or_error(embedded.items[0], "text")
        if spec.id is not None:
            record_id = validate_id(spec.id)
            await self._model.for_vectors(write=False)
            found = await self.store.fetch(namespace, [record_id])
            if not found:
                raise NotFound(f"no record with id {record_id!r} in namespace {namespace!r}")
            return found[0].values
        if spec.vector is not None:
            model = await self._model.for_vectors(write=False)
            return _unit_vector(spec.vector, model.dimension, "vector.values")
        raise InvalidArgument("set one of image, text, id or vector", field="query")


def _check_batch(size: int, limit: int, field: str) -> None:
    if size > limit:
        raise InvalidArgument(f"{field} has {size} items; at most {limit} per request", field=field)


def _record(record_id: str, vector: Vector, metadata: Mapping[str, Any]) -> Record:
    return Record(id=record_id, values=vector, metadata=dict(metadata))


def _vector_or_error(out: Embedded, field: str) -> Vector:
    if out.vector is None:
        raise ImageRejected(out.message, field=field, reason=out.reason)
    vector: Vector = out.vector
    return vector


def _unit_vector(values: Sequence[float], dimension: int, field: str) -> Vector:
    """`values` scaled to unit length; any finite, non-zero vector is legal.

    Scaled by its largest component first, in float64, so neither squaring 1e30
    (overflow) nor squaring 1e-30 (underflow to zero) can spoil the norm.
    """
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (dimension,):
        raise InvalidVector(
            f"{field} has {vector.size} values; the model's vectors have {dimension}", field=field
        )
    if not np.isfinite(vector).all():
        bad = int(np.flatnonzero(~np.isfinite(vector))[0])
        raise InvalidVector(
            f"{field}[{bad}] is {vector[bad]}; every value must be finite", field=f"{field}[{bad}]"
        )
    largest = float(np.abs(vector).max())
    if largest == 0:
        raise InvalidVector(f"{field} is all zeros; it has no direction to search", field=field)
    if abs(float(np.linalg.norm(vector)) - 1.0) <= UNIT_TOLERANCE:
        # Already unit length as float32 allows (an exported or embedded vector): kept
        # bit for bit, since dividing again by a norm of 1 +- 1e-8 would move last bits.
        return np.asarray(values, dtype=np.float32)
    scaled = vector / largest
    unit: Vector = (scaled / np.linalg.norm(scaled)).astype(np.float32)
    return unit
