"""Errors of search_service.

    SearchError                    base of everything this service raises
    ├── InvalidArgument            bad input -> INVALID_ARGUMENT (with a field violation)
    │   ├── InvalidFilter            a filter outside Pinecone's filter language
    │   ├── InvalidMetadata          metadata outside Pinecone's value rules
    │   ├── InvalidId                an id outside 1-512 ASCII characters
    │   ├── InvalidNamespace         a namespace outside 0-512 ASCII characters
    │   ├── InvalidVector            a vector of the wrong dimension, or all zeros
    │   └── ImageRejected            embed_service could not embed one image (its reason)
    ├── NotFound                   an id that is not stored -> NOT_FOUND
    ├── ModelMismatch              the store was filled by another model -> FAILED_PRECONDITION
    ├── StoreMisconfigured         the store cannot serve this model at all; stops the service
    ├── Overloaded                 a dependency is at capacity -> RESOURCE_EXHAUSTED
    ├── ReplyTooLarge              the answer would not fit in one reply -> RESOURCE_EXHAUSTED
    ├── Unavailable                a dependency cannot be reached -> UNAVAILABLE
    │   └── EmbedUnavailable         embed_service is down or not ready
    ├── EmbedFailed                embed_service answered with an error of its own -> INTERNAL
    ├── Unauthenticated            the store refused the credentials -> UNAUTHENTICATED
    └── PermissionDenied           the credentials may not do this -> PERMISSION_DENIED

The mapping to gRPC status codes lives in one place, `server.py`.
"""

from __future__ import annotations


class SearchError(Exception):
    """Base of every error this service raises; `reason` may be set per instance."""

    reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason


class InvalidArgument(SearchError):
    """Bad input; `field` names where it is (for BadRequest field violations)."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, field: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.field = field


class InvalidFilter(InvalidArgument):
    reason = "INVALID_FILTER"


class InvalidMetadata(InvalidArgument):
    reason = "INVALID_METADATA"


class InvalidId(InvalidArgument):
    reason = "INVALID_ID"


class InvalidNamespace(InvalidArgument):
    reason = "INVALID_NAMESPACE"


class InvalidVector(InvalidArgument):
    reason = "INVALID_VECTOR"


class ImageRejected(InvalidArgument):
    """One image embed_service refused; `reason` is embed_service's (IMAGE_UNREADABLE...)."""

    def __init__(self, message: str, *, field: str, reason: str) -> None:
        super().__init__(message, field=field, reason=reason)


class NotFound(SearchError):
    reason = "NOT_FOUND"


class ModelMismatch(SearchError):
    reason = "MODEL_MISMATCH"


class StoreMisconfigured(SearchError):
    """The configured store can never serve the running model (metric, dimension, key)."""

    reason = "STORE_MISCONFIGURED"


class Overloaded(SearchError):
    reason = "OVERLOADED"


class ReplyTooLarge(SearchError):
    """The records asked for would exceed the reply size; found out before they are all read."""

    reason = "REPLY_TOO_LARGE"


class Unavailable(SearchError):
    reason = "UNAVAILABLE"


class EmbedUnavailable(Unavailable):
    reason = "EMBED_UNAVAILABLE"


class EmbedFailed(SearchError):
    """embed_service failed a call in a way that is not the caller's doing."""

    reason = "EMBED_FAILED"


class Unauthenticated(SearchError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(SearchError):
    reason = "PERMISSION_DENIED"
