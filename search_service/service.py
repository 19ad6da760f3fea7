"""What search_service does, free of gRPC: validate, embed, check the model, store, query.

Every request goes through `filters.py` (Pinecone's rules) before a store sees it, and
every write or query goes through `model_guard.py`, which keeps vectors of another model
than the store's out.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from imagesearch.ids import content_id

from search_service.domain import (
    Embedder,
    Listed,
    Record,
    ScoredRecord,
    StoreStats,
    Vector,
)
from search_service.duplicates import DuplicatesProgress, check_min_score, find_duplicates
from search_service.errors import (
    ImageRejected,
    InvalidArgument,
    ModelMismatch,
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
from search_service.query import Querying, QuerySpec, unit_vector
from search_service.stores.base import VectorStore

log = logging.getLogger(__name__)

MAX_IMAGES_PER_BATCH = 64
MAX_VECTORS_PER_BATCH = 1000
MAX_IDS = 1000
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


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
        self._querying = Querying(store, embedder, self._model, max_reply_bytes)

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
                vector = unit_vector(item.values, model.dimension, f"records[{i}].values")
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
        return await self._querying.query(spec)

    def find_duplicates(
        self, namespace: str, min_score: float, filter: Mapping[str, Any] | None
    ) -> AsyncIterator[DuplicatesProgress]:
        """Validated before the first message; then groups as they complete."""
        namespace = validate_namespace(namespace)
        condition = parse_filter(filter)
        return find_duplicates(self.store, namespace, check_min_score(min_score), condition)

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


def _check_batch(size: int, limit: int, field: str) -> None:
    if size > limit:
        raise InvalidArgument(f"{field} has {size} items; at most {limit} per request", field=field)


def _record(record_id: str, vector: Vector, metadata: Mapping[str, Any]) -> Record:
    return Record(id=record_id, values=vector, metadata=dict(metadata))
