"""Errors of search_service.

    SearchError                    base of everything this service raises
    ├── InvalidArgument            bad input -> INVALID_ARGUMENT (with a field violation)
    │   ├── InvalidFilter            a filter outside Pinecone's filter language
    │   ├── InvalidMetadata          metadata outside Pinecone's value rules
    │   ├── InvalidId                an id outside 1-512 ASCII characters
    │   └── InvalidNamespace         a namespace outside 0-512 ASCII characters
    └── NotFound                   an id that is not stored -> NOT_FOUND

The mapping to gRPC status codes lives in one place, `server.py`.
"""

from __future__ import annotations


class SearchError(Exception):
    """Base of every error this service raises."""

    reason = "INTERNAL"


class InvalidArgument(SearchError):
    """Bad input; `field` names where it is (for BadRequest field violations)."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidFilter(InvalidArgument):
    reason = "INVALID_FILTER"


class InvalidMetadata(InvalidArgument):
    reason = "INVALID_METADATA"


class InvalidId(InvalidArgument):
    reason = "INVALID_ID"


class InvalidNamespace(InvalidArgument):
    reason = "INVALID_NAMESPACE"


class NotFound(SearchError):
    reason = "NOT_FOUND"
