"""Exceptions of the client: every failed call becomes one, with the server's reason.

ImageSearchError          base; .code (e.g. "NOT_FOUND"), .reason, .message, .fields
├── InvalidArgument       the request was wrong; .fields says where
├── NotFound              an id that is not stored
├── FailedPrecondition    the store holds another model's vectors
├── ResourceExhausted     the service is at capacity; retry later
└── Unavailable           the service (or one it depends on) cannot be reached
"""

from __future__ import annotations

import grpc
from imagesearch.status import code_name, field_violations, reason_of, status_from_error


class ImageSearchError(Exception):
    code = "UNKNOWN"

    def __init__(
        self, message: str, *, code: str, reason: str = "", fields: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}" if not reason else f"{code} ({reason}): {message}")
        self.message = message
        self.code = code
        self.reason = reason or code
        self.fields = fields or {}


class InvalidArgument(ImageSearchError):
    pass


class NotFound(ImageSearchError):
    pass


class FailedPrecondition(ImageSearchError):
    pass


class ResourceExhausted(ImageSearchError):
    pass


class Unavailable(ImageSearchError):
    pass


_BY_CODE: dict[str, type[ImageSearchError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "FAILED_PRECONDITION": FailedPrecondition,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": Unavailable,
}


def from_rpc_error(error: grpc.RpcError, target: str) -> ImageSearchError:
    """The client exception for a failed call, with the rich status when there is one."""
    status = status_from_error(error)
    if status is not None:
        code, message, reason = code_name(status), status.message, reason_of(status)
        fields = field_violations(status)
    else:
        code = error.code().name
        message, reason, fields = error.details() or "", "", {}
        if code == "UNAVAILABLE":
            message = f"cannot reach search_service at {target} ({message}); is it running?"
    kind = _BY_CODE.get(code, ImageSearchError)
    return kind(message, code=code, reason=reason, fields=fields)
