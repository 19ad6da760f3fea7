"""Pinecone's errors as ours, and the SDK's retries counted."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pinecone.errors import (
    ApiError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    PaymentRequiredError,
    PineconeConnectionError,
    PineconeError,
    PineconeTimeoutError,
    PineconeTypeError,
    PineconeValueError,
    RateLimitError,
    ServiceError,
    UnauthorizedError,
)

from search_service.errors import (
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SearchError,
    Unauthenticated,
    Unavailable,
)


def domain_error(exc: PineconeError, *, index: str, redact: Callable[[str], str]) -> SearchError:
    """What an SDK error that survived the retries means to our caller."""
    status = getattr(exc, "status_code", None)
    detail = redact(str(getattr(exc, "message", None) or exc) or type(exc).__name__)
    where = f"Pinecone index {index!r}"
    if isinstance(exc, UnauthorizedError):
        return Unauthenticated(
            f"Pinecone refused the API key in PINECONE_API_KEY ({status}: {detail}); "
            "set it to a current key of the project that holds the index"
        )
    if isinstance(exc, ForbiddenError | PaymentRequiredError):
        return PermissionDenied(
            f"the API key in PINECONE_API_KEY may not do this on the {where} ({status}: {detail})"
        )
    if isinstance(exc, NotFoundError):
        return NotFound(f"{where}: {detail}")
    if isinstance(exc, PayloadTooLargeError):
        return InvalidArgument(f"Pinecone refused a request as too large: {detail}",
                               field="records")  # fmt: skip
    if isinstance(exc, RateLimitError | ServiceError):
        return Unavailable(
            f"Pinecone answered {status} after retries with backoff ({detail}); try again later"
        )
    if isinstance(exc, PineconeConnectionError | PineconeTimeoutError):
        return Unavailable(f"Pinecone cannot be reached after retries: {detail}")
    if isinstance(exc, PineconeValueError | PineconeTypeError) or (
        isinstance(exc, ApiError) and status in (400, 409, 422)
    ):
        return InvalidArgument(f"Pinecone refused the request: {detail}", field="request")
    return SearchError(f"Pinecone failed: {detail}")


class RetryCounter(logging.Filter):
    """Counts the SDK's retries from the debug line it logs for each (pinecone 10.2.0 has
    no retry hook), and keeps its debug lines out of the log unless it is at DEBUG."""

    SDK_LOGGER = "pinecone._internal.http_client"

    def __init__(self, on_retry: Callable[[], None]) -> None:
        super().__init__()
        self._on_retry = on_retry
        self._logger = logging.getLogger(self.SDK_LOGGER)
        self._level = self._logger.level

    def install(self) -> None:
        self._keep_debug = logging.getLogger().isEnabledFor(logging.DEBUG)
        self._logger.setLevel(logging.DEBUG)
        self._logger.addFilter(self)

    def remove(self) -> None:
        self._logger.removeFilter(self)
        self._logger.setLevel(self._level)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = str(record.msg)
        if "retrying" in message or message.startswith("Throttled response"):
            self._on_retry()
        return self._keep_debug
