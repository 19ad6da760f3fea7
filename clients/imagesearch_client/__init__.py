"""The imagesearch client: a typed wrapper of SearchService and the `imagesearch` CLI."""

from imagesearch_client.aio import AsyncImageSearchClient
from imagesearch_client.client import ImageSearchClient
from imagesearch_client.errors import (
    FailedPrecondition,
    ImageSearchError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from imagesearch_client.messages import (
    DEFAULT_TARGET,
    DuplicateGroup,
    DuplicatesProgress,
    Example,
    FetchedRecord,
    ImageRecord,
    Match,
    Outcome,
    RecordPage,
    Stats,
    VectorRecord,
)

__all__ = [
    "DEFAULT_TARGET",
    "AsyncImageSearchClient",
    "DuplicateGroup",
    "DuplicatesProgress",
    "Example",
    "FailedPrecondition",
    "FetchedRecord",
    "ImageRecord",
    "ImageSearchClient",
    "ImageSearchError",
    "InvalidArgument",
    "Match",
    "NotFound",
    "Outcome",
    "PermissionDenied",
    "RecordPage",
    "ResourceExhausted",
    "Stats",
    "Unauthenticated",
    "Unavailable",
    "VectorRecord",
]
