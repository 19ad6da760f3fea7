"""Vector stores behind one Protocol (`base.VectorStore`); `make_store` picks one."""

from __future__ import annotations

from collections.abc import Callable

from search_service.config import SearchSettings
from search_service.stores.base import VectorStore


def make_store(
    settings: SearchSettings,
    *,
    on_index_build: Callable[[bool, float], None] | None = None,
    on_index_wait: Callable[[float], None] | None = None,
    on_store_error: Callable[[str], None] | None = None,
    on_store_retry: Callable[[], None] | None = None,
) -> VectorStore:
    """The store the settings ask for; each implementation is imported only when chosen."""
    match settings.store_kind:
        case "local":
            from search_service.stores.local.store import LocalStore

            return LocalStore(
                settings.data_dir,
                index_threshold=settings.index_threshold,
                max_unindexed=settings.index_max_unindexed,
                vectors_memory=settings.vectors_memory,
                on_build=on_index_build,
                on_wait=on_index_wait,
            )
        case "pinecone":
            from search_service.stores.pinecone.store import PineconeStore

            return PineconeStore.from_settings(
                settings, on_error=on_store_error, on_retry=on_store_retry
            )
        case other:
            raise ValueError(f"unknown VECTOR_STORE {other!r}; use local or pinecone")
