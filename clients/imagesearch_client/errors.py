"""Exceptions of the client: every failed call becomes one, with the server's reason.

ImageSearchError          base; .code (e.g. "NOT_FOUND"), .reason, .message, .fields
├── InvalidArgument       the request was wrong; .fields says where
├── NotFound              an id that is not stored
├── FailedPrecondition    the store holds another model's vectors
├── ResourceExhausted     the service is at capacity; retry later
├── Unauthenticated       no token, or one the service does not accept
├── PermissionDenied      a read-only token asked to write
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


class Unauthenticated(ImageSearchError):
    pass


class PermissionDenied(ImageSearchError):
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
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
}


# What a refusal for the caller's own settings asks the caller to change.
_ADVICE = {
    "TOKEN_MISSING": "search_service at {target} requires a token: set IMAGESEARCH_TOKEN "
    "(the CLI's --token, the clients' token=)",
    "TOKEN_INVALID": "search_service at {target} does not accept the token given: check "
    "IMAGESEARCH_TOKEN (the CLI's --token, the clients' token=)",
    "TOKEN_READ_ONLY": "{message}: the token given (IMAGESEARCH_TOKEN) is read-only",
}
# Words of gRPC's own error text when TLS, not the network, failed.
_TLS_WORDS = ("handshake", "certificate", "verification", "ssl", "tls")


def from_rpc_error(error: grpc.RpcError, target: str) -> ImageSearchError:
    """The client exception for a failed call, with the rich status when there is one.

    A refusal of the caller's own settings (a token missing, wrong or read-only, TLS that
    does not verify) says which variable to set, never just "cannot be reached"."""
    status = status_from_error(error)
    if status is not None:
        code, message, reason = code_name(status), status.message, reason_of(status)
        fields = field_violations(status)
    else:
        code = error.code().name
        message, reason, fields = error.details() or "", "", {}
        if code == "UNAVAILABLE":
            message = _unreachable(target, message)
    if reason in _ADVICE:
        message = _ADVICE[reason].format(target=target, message=message)
    kind = _BY_CODE.get(code, ImageSearchError)
    return kind(message, code=code, reason=reason, fields=fields)


def _unreachable(target: str, details: str) -> str:
    if any(word in details.lower() for word in _TLS_WORDS):
        return (
            f"TLS with search_service at {target} failed ({details}): set IMAGESEARCH_TLS_CA "
            "to the CA that signed its certificate, and IMAGESEARCH_TLS_CERT/_KEY if it asks "
            "for a client certificate"
        )
    return (
        f"cannot reach search_service at {target} ({details}); is it running? If it serves "
        "TLS, set IMAGESEARCH_TLS_CA"
    )
