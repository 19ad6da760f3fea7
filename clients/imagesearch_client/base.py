"""What the sync and async clients share besides messages.py: their options, written once as
typed keyword arguments, and their connection. Each client only adds how it sends."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, TypedDict, TypeVar

from imagesearch.v1 import search_service_pb2_grpc as pb_grpc

from imagesearch_client import messages as m

Channel = TypeVar("Channel")


class QueryOptions(TypedDict, total=False):
    """A query: exactly one of image, text, id or vector, or several `examples`; and how to
    answer it (refinements: diversity, collapse_above, autocut; see docs/api.md)."""

    image: bytes | None
    text: str | None
    id: str | None
    vector: Sequence[float] | None
    examples: Sequence[m.Example]
    diversity: float  # 0: off; up to 1
    collapse_above: float  # 0: off
    autocut: int  # 0: off
    top_k: int  # 10
    filter: Mapping[str, Any] | None
    namespace: str
    include_metadata: bool  # True
    include_values: bool
    min_score: float | None


class ListOptions(TypedDict, total=False):
    """A listing: the records of `namespace` whose id starts with `prefix`."""

    namespace: str
    prefix: str
    page_size: int  # 100
    include_metadata: bool
    include_values: bool


class PageOptions(ListOptions, total=False):
    page_token: str  # "" starts the listing


class DuplicatesOptions(TypedDict, total=False):
    """Groups of records at least `min_score` similar, among those matching `filter`."""

    min_score: float  # 0.95
    namespace: str
    filter: Mapping[str, Any] | None


class DeleteOptions(TypedDict, total=False):
    """By ids, by metadata filter, or everything in the namespace."""

    ids: Sequence[str] | None
    filter: Mapping[str, Any] | None
    delete_all: bool
    namespace: str


class ClientBase(Generic[Channel]):
    """The target, deadline, credentials and token of a client, and its stub."""

    def __init__(
        self,
        target: str | None,
        *,
        timeout_s: float,
        tls_ca: str | Path | None,
        tls_cert: str | Path | None,
        tls_key: str | Path | None,
        token: str | None,
        secure: Callable[..., Channel],
        insecure: Callable[..., Channel],
    ) -> None:
        """Raises SecurityConfigError when a TLS file cannot be used."""
        connection = m.connection(target, tls_ca, tls_cert, tls_key, token)
        self.target = connection.target
        self.timeout_s = timeout_s
        self._metadata = connection.metadata
        self._channel = (
            secure(self.target, connection.credentials, options=m.CHANNEL_OPTIONS)
            if connection.credentials is not None
            else insecure(self.target, options=m.CHANNEL_OPTIONS)
        )
        self._stub = pb_grpc.SearchServiceStub(self._channel)
