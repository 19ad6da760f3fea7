"""The Pinecone store: a serverless index through the official SDK's asyncio client.

Only this package imports `pinecone` (errors.py: its errors as ours; packing.py: records
packed into requests within Pinecone's limits). The index is created on first use with the
dimension of the model embed_service runs and metric cosine; the model that fills it
is recorded in the index's tags (`imagesearch-model`, `imagesearch-fingerprint`), so
a service started later against another model is refused as the local store refuses
it. An existing index with another metric or dimension stops the service at start
(`StoreMisconfigured`).

Requests stay under Pinecone's limits: upserts are packed to at most 1000 records
and 2 MB of JSON and sent in parallel; fetches are split so the URL stays short.
The SDK retries 408/429/5xx and connection errors with backoff (3 retries, honouring
Retry-After); what still fails is translated to our errors here, with the API key
redacted from every message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from imagesearch.wire import DEFAULT_NAMESPACE
from pinecone import PineconeAsyncio, ServerlessSpec
from pinecone.errors import (
    ConflictError,
    PineconeError,
)

from search_service.domain import (
    Listed,
    ListedPage,
    ModelInfo,
    Record,
    ScoredRecord,
    StoreStats,
    Vector,
    check_same_model,
)
from search_service.errors import (
    ModelMismatch,
    NotFound,
    SearchError,
    StoreMisconfigured,
    Unavailable,
)
from search_service.filters import Condition, to_filter
from search_service.stores.pinecone import packing
from search_service.stores.pinecone.errors import RetryCounter, domain_error

if TYPE_CHECKING:
    from search_service.config import SearchSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

METRIC = "cosine"
UPSERT_CONCURRENCY = 8
# Query results are capped at 4 MB; above this estimate, values are fetched separately.
RESULT_VALUES_BUDGET = 3_000_000
# Pinecone lists at most 100 ids per call; always asking for 100 keeps the pages of
# one listing the same, so a cursor can point into the middle of one.
LIST_PAGE = 100
READY_POLL_FIRST_S = 0.1
READY_POLL_MAX_S = 5.0


class PineconeStore:
    """A VectorStore on one Pinecone serverless index."""

    name = "pinecone"

    def __init__(
        self,
        *,
        api_key: str,
        index_name: str,
        cloud: str = "aws",
        region: str = "us-east-1",
        host: str | None = None,
        ready_timeout_s: float = 300.0,
        request_timeout_s: float = 30.0,
        on_error: Callable[[str], None] | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        """`on_error(kind)` is told of every error Pinecone answers (kind: our class name),
        `on_retry()` of every retry the SDK makes."""
        self._on_error = on_error
        self._retries = RetryCounter(on_retry) if on_retry is not None else None
        self._api_key = api_key
        self._index_name = index_name
        self._cloud = cloud
        self._region = region
        self._host = host
        self._ready_timeout_s = ready_timeout_s
        self._request_timeout_s = request_timeout_s
        self._client: PineconeAsyncio | None = None
        self._index: Any = None
        self._dimension: int | None = None
        self._model: ModelInfo | None = None
        # Set when the index holds vectors whose model is not recorded in its tags.
        self._unknown_model: ModelMismatch | None = None
        self._bind_lock = asyncio.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: SearchSettings,
        *,
        on_error: Callable[[str], None] | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> PineconeStore:
        if settings.pinecone_api_key is None:
            raise StoreMisconfigured(
                "VECTOR_STORE=pinecone needs PINECONE_API_KEY (the key of your Pinecone project)"
            )
        return cls(
            api_key=settings.pinecone_api_key.get_secret_value(),
            index_name=settings.pinecone_index,
            cloud=settings.pinecone_cloud,
            region=settings.pinecone_region,
            host=settings.pinecone_host,
            ready_timeout_s=settings.pinecone_ready_timeout_s,
            on_error=on_error,
            on_retry=on_retry,
        )

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def model(self) -> ModelInfo | None:
        return self._model

    async def open(self) -> ModelInfo | None:
        if self._retries is not None:
            self._retries.install()
        self._client = PineconeAsyncio(
            api_key=self._api_key, host=self._host, timeout=self._request_timeout_s
        )
        described = await self._describe()
        if described is None:
            log.info("Pinecone index %r does not exist yet; it is created on first use",
                     self._index_name)  # fmt: skip
            return None
        await self._attach(described)
        if self._model is not None:
            log.info("Pinecone index %r holds vectors of %s", self._index_name,
                     self._model.model_id)  # fmt: skip
        return self._model

    async def bind(self, model: ModelInfo) -> None:
        if self._model is None:
            async with self._bind_lock:
                if self._model is None and self._unknown_model is None:
                    await self._bind_first(model)
        if self._unknown_model is not None:
            raise self._unknown_model
        assert self._model is not None
        check_same_model(
            self._model,
            model,
            store=f"the Pinecone index {self._index_name!r}",
            start_over="set PINECONE_INDEX to a new index name",
        )

    async def _bind_first(self, model: ModelInfo) -> None:
        if self._index is None:
            described = await self._create(model)
            await self._attach(described)
            return
        if self._dimension != model.dimension:
            raise StoreMisconfigured(
                f"the Pinecone index {self._index_name!r} has dimension {self._dimension}, "
                f"but {model.model_id} makes {model.dimension}-d vectors; set PINECONE_INDEX "
                "to a new index name (it is created for you) or delete that index"
            )
        stats = await self.stats()
        if stats.total:
            self._unknown_model = ModelMismatch(
                f"the Pinecone index {self._index_name!r} holds {stats.total} vectors with no "
                f"record of the model that made them (no {packing.TAG_FINGERPRINT} tag); set "
                "PINECONE_INDEX to a new index name, or empty that index"
            )
            return
        client = self._require_client()
        await self._call(client.configure_index(self._index_name, tags=packing.tags(model)))
        self._model = model
        log.info("Pinecone index %r adopted for %s", self._index_name, model.model_id)

    async def _create(self, model: ModelInfo) -> Any:
        client = self._require_client()
        log.info("creating Pinecone serverless index %r (%s %s, %d-d, %s)", self._index_name,
                 self._cloud, self._region, model.dimension, METRIC)  # fmt: skip
        try:
            return await client.create_index(
                name=self._index_name,
                spec=ServerlessSpec(cloud=self._cloud, region=self._region),
                dimension=model.dimension,
                metric=METRIC,
                tags=packing.tags(model),
                timeout=-1,  # the bounded wait is ours, in _attach
            )
        except ConflictError:
            # Another instance created it first; use it like any existing index.
            described = await self._describe()
            assert described is not None
            return described
        except PineconeError as exc:
            raise self._translate(exc) from None

    async def _attach(self, described: Any) -> None:
        """Checks the index's metric, waits until it is ready and opens its data plane."""
        if described.metric != METRIC:
            raise StoreMisconfigured(
                f"the Pinecone index {self._index_name!r} uses metric {described.metric}; "
                f"search_service needs {METRIC}. Set PINECONE_INDEX to a new index name "
                "(it is created for you) or delete that index"
            )
        described = await self._wait_ready(described)
        self._dimension = int(described.dimension)
        self._model = packing.model_from_tags(described.tags, self._dimension)
        self._index = self._require_client().IndexAsyncio(host=described.host)

    async def _wait_ready(self, described: Any) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ready_timeout_s
        delay = READY_POLL_FIRST_S
        while not described.status.ready:
            if loop.time() + delay > deadline:
                raise Unavailable(
                    f"the Pinecone index {self._index_name!r} is not ready after "
                    f"{self._ready_timeout_s:.0f} s (state {described.status.state}); "
                    "raise PINECONE_READY_TIMEOUT_S or check the index in the Pinecone console"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, READY_POLL_MAX_S)
            described = await self._describe()
            if described is None:
                raise NotFound(f"the Pinecone index {self._index_name!r} was deleted")
        return described

    async def _describe(self) -> Any:
        try:
            return await self._call(self._require_client().describe_index(self._index_name))
        except NotFound:
            return None

    async def close(self) -> None:
        if self._retries is not None:
            self._retries.remove()
        index, client = self._index, self._client
        self._index = self._client = None
        if index is not None:
            await index.close()
        if client is not None:
            await client.close()

    # --- writes --------------------------------------------------------------------

    async def upsert(self, namespace: str, records: Sequence[Record]) -> dict[int, SearchError]:
        index = self._require_index()
        batches = list(packing.pack(records))
        gate = asyncio.Semaphore(UPSERT_CONCURRENCY)

        async def send(batch: list[tuple[int, dict[str, Any]]]) -> None:
            async with gate:
                await self._call(
                    index.upsert(vectors=[body for _, body in batch], namespace=namespace)
                )

        outcomes = await asyncio.gather(*(send(b) for b in batches), return_exceptions=True)
        failures: dict[int, SearchError] = {}
        for batch, outcome in zip(batches, outcomes, strict=True):
            if isinstance(outcome, SearchError):
                log.warning("a batch of %d records was not stored: %s", len(batch), outcome)
                failures.update((position, outcome) for position, _ in batch)
            elif isinstance(outcome, BaseException):
                raise outcome
        if failures and len(failures) == len(records):
            # Nothing was stored: the call fails as a whole, with the first reason.
            raise next(iter(failures.values()))
        return failures

    async def delete_ids(self, namespace: str, ids: Sequence[str]) -> None:
        if self._index is not None:
            for start in range(0, len(ids), packing.MAX_IDS):
                chunk = list(ids[start : start + packing.MAX_IDS])
                await self._delete(ids=chunk, namespace=namespace)

    async def delete_where(self, namespace: str, condition: Condition) -> None:
        if self._index is not None:
            await self._delete(filter=to_filter(condition), namespace=namespace)

    async def delete_all(self, namespace: str) -> None:
        if self._index is not None:
            await self._delete(delete_all=True, namespace=namespace)

    async def _delete(self, **selector: Any) -> None:
        # Pinecone answers 404 for a namespace it does not have: nothing to delete.
        with suppress(NotFound):
            await self._call(self._require_index().delete(**selector))

    # --- reads ---------------------------------------------------------------------

    async def query(
        self,
        namespace: str,
        vector: Vector,
        *,
        top_k: int,
        condition: Condition | None,
        include_values: bool,
        include_metadata: bool,
        max_bytes: int | None = None,
    ) -> list[ScoredRecord]:
        if self._index is None:
            return []
        # Values of many wide vectors would break the 4 MB result cap: fetch them after.
        values_after = include_values and top_k * len(vector) * 12 > RESULT_VALUES_BUDGET
        found = await self._call(
            self._index.query(
                top_k=top_k,
                vector=packing.floats(vector),
                namespace=namespace,
                filter=to_filter(condition) if condition is not None else None,
                include_values=include_values and not values_after,
                include_metadata=include_metadata,
            )
        )
        matches = [
            ScoredRecord(
                id=m.id,
                score=float(m.score),
                values=np.asarray(m.values, dtype=np.float32) if include_values else None,
                metadata=packing.metadata(m.metadata) if include_metadata else None,
            )
            for m in found.matches
        ]
        # Pinecone caps a query's answer itself (4 MB); only the check is left to do here.
        packing.check_size(matches, max_bytes, what="matches")
        if values_after:
            ids = [m.id for m in matches]
            stored = {r.id: r.values for r in await self.fetch(namespace, ids, max_bytes=max_bytes)}
            matches = [
                ScoredRecord(m.id, m.score, stored[m.id], m.metadata)
                for m in matches
                if m.id in stored  # deleted between the query and the fetch
            ]
        return matches

    async def fetch(
        self, namespace: str, ids: Sequence[str], *, max_bytes: int | None = None
    ) -> list[Record]:
        if self._index is None or not ids:
            return []
        wanted = list(dict.fromkeys(ids))
        index = self._index
        answers = await asyncio.gather(
            *(
                self._call(index.fetch(ids=chunk, namespace=namespace))
                for chunk in packing.fetch_chunks(wanted)
            )
        )
        found = {key: v for answer in answers for key, v in answer.vectors.items()}
        records = [
            Record(
                id=i,
                values=np.asarray(found[i].values, dtype=np.float32),
                metadata=packing.metadata(found[i].metadata),
            )
            for i in wanted
            if i in found
        ]
        packing.check_size(records, max_bytes, what="records")
        return records

    async def list_page(
        self,
        namespace: str,
        prefix: str,
        *,
        limit: int,
        cursor: str,
        include_values: bool,
        include_metadata: bool,
    ) -> ListedPage:
        # A cursor is [Pinecone's token of a page, the last id taken from that page]: a
        # caller may stop anywhere in a page of 100, and the next call re-lists from that
        # token and skips ids up to the one taken. Pinecone lists ids in sorted order, so
        # that skips exactly what was taken, even after inserts pushed it to a later page.
        if self._index is None:
            return ListedPage([], [])
        token, after = packing.list_cursor(cursor) if cursor else (None, "")
        index = self._index
        ids: list[str] = []
        resume: list[str] = []
        while len(ids) < limit:
            answer = await self._call(
                index.list_paginated(
                    prefix=prefix or None,
                    limit=LIST_PAGE,
                    pagination_token=token,
                    namespace=namespace,
                )
            )
            listed = [item.id for item in answer.vectors if item.id and item.id > after]
            following = answer.pagination.next if answer.pagination else None
            taken = listed[: limit - len(ids)]
            for i, record_id in enumerate(taken):
                if i < len(listed) - 1:
                    resume.append(json.dumps([token, record_id]))
                else:
                    resume.append(json.dumps([following, ""]) if following else "")
            ids.extend(taken)
            if not following or len(taken) < len(listed):
                break
            token = following
        if not (include_values or include_metadata):
            return ListedPage([Listed(i) for i in ids], resume)
        found = {r.id: r for r in await self.fetch(namespace, ids)}
        # A record deleted between the list and the fetch is left out, with its cursor.
        kept = [(i, cursor) for i, cursor in zip(ids, resume, strict=True) if i in found]
        return ListedPage(
            [
                Listed(
                    i,
                    found[i].values if include_values else None,
                    found[i].metadata if include_metadata else None,
                )
                for i, _ in kept
            ],
            [cursor for _, cursor in kept],
        )

    async def stats(self) -> StoreStats:
        if self._index is None:
            return StoreStats(namespaces={}, model=self._model)
        described = await self._call(self._index.describe_index_stats())
        return StoreStats(
            namespaces={
                ("" if name == DEFAULT_NAMESPACE else name): int(summary.vector_count)
                for name, summary in described.namespaces.items()
                if summary.vector_count
            },
            model=self._model,
        )

    # --- errors --------------------------------------------------------------------

    async def _call(self, call: Awaitable[T]) -> T:
        """Awaits an SDK call; its errors become ours, with the API key redacted."""
        try:
            return await call
        except PineconeError as exc:
            raise self._translate(exc) from None

    def _translate(self, exc: PineconeError) -> SearchError:
        error = domain_error(exc, index=self._index_name, redact=self._redact)
        if self._on_error is not None:
            self._on_error(type(error).__name__)
        return error

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<PINECONE_API_KEY>") if self._api_key else text

    def _require_client(self) -> PineconeAsyncio:
        if self._client is None:
            raise RuntimeError("the Pinecone store is not open")
        return self._client

    def _require_index(self) -> Any:
        if self._index is None:
            raise RuntimeError("the Pinecone index is not bound to a model yet")
        return self._index
