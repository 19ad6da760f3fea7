"""The imagesearch client: a typed wrapper of SearchService and the `imagesearch` CLI."""

from imagesearch_client.client import (
    DEFAULT_TARGET,
    FetchedRecord,
    ImageRecord,
    ImageSearchClient,
    Match,
    Outcome,
    Stats,
    VectorRecord,
)
from imagesearch_client.errors import (
    FailedPrecondition,
    ImageSearchError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "DEFAULT_TARGET",
    "FailedPrecondition",
    "FetchedRecord",
    "ImageRecord",
    "ImageSearchClient",
    "ImageSearchError",
    "InvalidArgument",
    "Match",
    "NotFound",
    "Outcome",
    "ResourceExhausted",
    "Stats",
    "Unavailable",
    "VectorRecord",
]
