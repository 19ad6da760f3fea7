"""The one check between embed_service and the store: vectors are stored and compared only
with the model the store holds.

With several replicas behind EMBED_TARGET, one may run another model: its answer is
dropped (and its address logged) and the call made again, so its vectors are never
stored; REPLICA_ATTEMPTS answers of another model fail the call. A read never binds a
new store to a model (binding is a write: on Pinecone it creates the index).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from search_service.domain import Embedder, Embeddings, ModelInfo
from search_service.errors import EmbedUnavailable, ModelMismatch, SearchError, StoreMisconfigured
from search_service.stores.base import VectorStore

log = logging.getLogger(__name__)

T = TypeVar("T")

# Replicas of another model are skipped: the call is made again (round_robin picks the
# next replica) this many times in all before the call fails.
REPLICA_ATTEMPTS = 3
STARTUP_MODEL_TIMEOUT_S = 5.0


class ModelGuard:
    def __init__(self, store: VectorStore, embedder: Embedder) -> None:
        self._store = store
        self._embed = embedder
        # The model embed_service runs, as last seen; None until asked, and again
        # after embed_service was unreachable (it may come back with another model).
        self._running: ModelInfo | None = None

    async def connect(self) -> None:
        """Waits until embed_service serves, then checks its model against the store's."""
        await self._embed.wait_until_serving()
        self._running = await self._embed.model_info(STARTUP_MODEL_TIMEOUT_S)
        try:
            await self._store.bind(self._running)
        except StoreMisconfigured:
            raise
        except SearchError as exc:
            # Keep serving: reads and deletes work, writes and queries say what is wrong.
            log.error("%s", exc)

    async def embed(
        self, call: Callable[[], Awaitable[Embeddings]], *, write: bool = True
    ) -> Embeddings:
        """Embeds with `call`, keeping only an answer from the model the store holds. A read
        (`write=False`) of a store with no model yet takes the answer as it is (and finds
        nothing anyway)."""
        for _ in range(REPLICA_ATTEMPTS):
            embedded = await self._unless_down(call())
            held = self._store.model
            if held is None and not write:
                return embedded
            if held is None:  # a new store takes the model that answered
                await self._bind(embedded.fingerprint)
                held = self._store.model
            # Decided by the answer's own fingerprint: asking for model info would take
            # a round_robin turn of its own and could land on another replica.
            if held is not None and held.fingerprint == embedded.fingerprint:
                return embedded
            log.warning(
                "embed_service replica %s runs a model of fingerprint %s, not the store's %s "
                "(%s); its answer is dropped",
                embedded.replica,
                embedded.fingerprint,
                held.fingerprint if held else "?",
                held.model_id if held else "?",
            )
        # Every answer came from another model: the store's own check says which.
        await self._bind(embedded.fingerprint)
        raise ModelMismatch(
            f"embed_service answered {REPLICA_ATTEMPTS} times from replicas of another model "
            f"than the store holds ({held.model_id if held else '?'}); run every replica "
            "behind EMBED_TARGET with the store's model"
        )

    async def for_vectors(self, *, write: bool = True) -> ModelInfo:
        """The model given vectors must match; from the store's record when embed is down."""
        if self._running is None:
            try:
                self._running = await self._unless_down(self._embed.model_info())
            except EmbedUnavailable:
                if self._store.model is None:
                    raise
                return self._store.model
        if write or self._store.model is not None:
            await self._store.bind(self._running)
        return self._running

    async def _bind(self, fingerprint: str) -> None:
        """Binds (or checks) the store with the model that made `fingerprint`."""
        if self._running is None or self._running.fingerprint != fingerprint:
            self._running = await self._unless_down(self._embed.model_info())
        await self._store.bind(self._running)

    async def _unless_down(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except EmbedUnavailable:
            self._running = None
            raise
