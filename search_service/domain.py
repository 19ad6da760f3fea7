"""What search_service works with, free of gRPC and of any store: the model a store holds,
records, what embed_service answers, and what the service needs of it (`Embedder`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from search_service.errors import ModelMismatch
from search_service.filters import Metadata

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model whose vectors a store holds."""

    model_id: str
    dimension: int
    fingerprint: str


def check_same_model(held: ModelInfo, running: ModelInfo, *, store: str, start_over: str) -> None:
    """Raises ModelMismatch unless `running` is the model whose vectors `store` holds."""
    if held.fingerprint != running.fingerprint:
        raise ModelMismatch(
            f"{store} holds vectors of {held.model_id} (fingerprint {held.fingerprint}), but "
            f"embed_service now runs {running.model_id} (fingerprint {running.fingerprint}); "
            f"run embed_service with the model {store} was filled with, or {start_over} and "
            "index again"
        )


@dataclass(frozen=True, slots=True)
class Record:
    id: str
    values: Vector
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScoredRecord:
    id: str
    score: float
    values: Vector | None
    metadata: Metadata | None
    # With collapse_above: the ids left out as near-duplicates of this one.
    collapsed_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Listed:
    """A record as a listing returns it: values and metadata only when asked for."""

    id: str
    values: Vector | None = None
    metadata: Metadata | None = None


@dataclass(frozen=True, slots=True)
class ListedPage:
    """One page of a listing.

    `resume[i]` is the store's cursor that continues the listing right after
    `records[i]` ("" when nothing follows), so a caller may hand out fewer records
    than it was given and still miss none.
    """

    records: list[Listed]
    resume: list[str]

    @property
    def cursor(self) -> str:
        """The cursor after the whole page; "" at the end."""
        return self.resume[-1] if self.resume else ""


@dataclass(frozen=True, slots=True)
class StoreStats:
    namespaces: dict[str, int]
    model: ModelInfo | None

    @property
    def total(self) -> int:
        return sum(self.namespaces.values())


@dataclass(frozen=True, slots=True)
class Embedded:
    """One input's vector, or why embed_service refused it (reason, message)."""

    vector: Vector | None
    reason: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Embeddings:
    """What one replica answered: its vectors, its model, and its address."""

    items: list[Embedded]
    fingerprint: str
    replica: str = ""


class Embedder(Protocol):
    """What the service needs from embed_service (`embed_client.EmbedClient` in production)."""

    target: str

    async def model_info(self, timeout_s: float | None = None) -> ModelInfo: ...

    async def wait_until_serving(self) -> None: ...

    async def embed_images(self, images: Sequence[bytes]) -> Embeddings: ...

    async def embed_text(self, text: str) -> Embeddings: ...
