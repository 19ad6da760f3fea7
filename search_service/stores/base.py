"""The contract every vector store implements (the records that cross it: `domain.py`).

Stores receive input that `filters.py` has already validated (ids, namespaces,
metadata, the parsed filter tree) and L2-normalized float32 vectors; they return
cosine scores, most similar first. Namespace "" is the default namespace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from search_service.domain import (
    ListedPage,
    ModelInfo,
    Record,
    ScoredRecord,
    StoreStats,
    Vector,
)
from search_service.errors import ReplyTooLarge, SearchError
from search_service.filters import Condition, Metadata, metadata_bytes


@runtime_checkable
class BuildsIndexes(Protocol):
    """What a store that indexes in the background (the local store) also offers: a change
    counter, so its exact count is taken only after a change, and its index's progress."""

    changes: int

    def index_status(self) -> tuple[int, int]:
        """(vectors in the index, vectors stored)."""
        ...

    @property
    def building(self) -> bool: ...


@runtime_checkable
class Diversifies(Protocol):
    """What a store that runs maximal marginal relevance itself (the local store) offers:
    the answer of `refine.diversify` over the same pool, without sending the pool's vectors
    across to Python."""

    async def query_diverse(
        self,
        namespace: str,
        vector: Vector,
        *,
        top_k: int,
        pool: int,
        lam: float,
        condition: Condition | None,
        min_score: float | None,
        leave_out: Sequence[str],
        include_values: bool,
        include_metadata: bool,
        max_bytes: int | None = None,
    ) -> list[ScoredRecord]:
        """`top_k` records picked by maximal marginal relevance (`lam` = lambda) among the
        best `pool` by score that match `condition`, score at least `min_score` and are not
        in `leave_out`; each with its cosine to `vector` as its score. ReplyTooLarge as
        `VectorStore.query`."""
        ...


class VectorStore(Protocol):
    """A persistent set of (id, vector, metadata) records in namespaces."""

    name: str

    async def open(self) -> ModelInfo | None:
        """Opens existing data; returns the model it was filled with, None if new."""
        ...

    async def bind(self, model: ModelInfo) -> None:
        """Records `model` for a new store; raises ModelMismatch if it holds another's."""
        ...

    @property
    def model(self) -> ModelInfo | None:
        """The model the store was filled with, once known."""
        ...

    async def upsert(self, namespace: str, records: Sequence[Record]) -> dict[int, SearchError]:
        """Stores the records durably before returning; same id overwrites.

        Returns the records that were not stored (position -> why); raises instead
        when none was.
        """
        ...

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
        """The `top_k` most similar records that match `condition`, best first.

        ReplyTooLarge once what is asked for passes `max_bytes` (see `reply_bytes`),
        found out as early as the store allows, not after reading every record."""
        ...

    async def fetch(
        self, namespace: str, ids: Sequence[str], *, max_bytes: int | None = None
    ) -> list[Record]:
        """The stored records among `ids`, in the order asked; missing ones are left out.
        ReplyTooLarge as `query`."""
        ...

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
        """Up to `limit` records whose id starts with `prefix`, from `cursor` ("" starts).

        The order is the store's own and fixed per record, so a record stored for the
        whole listing is listed exactly once. The page is empty only at the end.
        Raises InvalidArgument for a cursor this store did not make.
        """
        ...

    async def delete_ids(self, namespace: str, ids: Sequence[str]) -> None: ...

    async def delete_where(self, namespace: str, condition: Condition) -> None: ...

    async def delete_all(self, namespace: str) -> None: ...

    async def stats(self) -> StoreStats: ...

    async def close(self) -> None: ...


def reply_bytes(record_id: str, values: Vector | None, metadata: Metadata | None) -> int:
    """About what one record takes in a reply: its id, vector and metadata (as JSON)."""
    size = len(record_id) + 16
    if values is not None:
        size += 5 * len(values)
    if metadata is not None:
        size += metadata_bytes(metadata)
    return size


def check_reply(size: int, max_bytes: int | None, *, sent: int, asked: int, what: str) -> None:
    """ReplyTooLarge when `size` bytes (the first `sent` of `asked` records) pass `max_bytes`."""
    if max_bytes is not None and size > max_bytes:
        raise ReplyTooLarge(
            f"the reply would pass its limit of {max_bytes / 2**20:.1f} MiB "
            f"(SEARCH_MAX_MESSAGE_MB): only {sent} of the {asked} {what} fit; ask for fewer, "
            "or leave out metadata or values"
        )
