"""Rich error statuses shared by the services and the client.

Errors travel as `google.rpc.Status` with a `google.rpc.ErrorInfo` detail (AIP-193):
the per-item errors inside responses, and the call status itself through
grpcio-status. `reason` is a stable UPPER_SNAKE_CASE code a program can branch on;
`message` is for a person.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "imagesearch.v1"

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def make_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    *,
    metadata: Mapping[str, str] | None = None,
    field_violations: Sequence[tuple[str, str]] = (),
) -> status_pb2.Status:
    """Builds a google.rpc.Status carrying ErrorInfo and, for bad input, BadRequest."""
    details = []
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))
    packed = any_pb2.Any()
    packed.Pack(info)
    details.append(packed)
    if field_violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in field_violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    return status_pb2.Status(code=code.value[0], message=message, details=details)


def to_rpc_status(status: status_pb2.Status) -> grpc.Status:
    """Turns a google.rpc.Status into what `context.abort_with_status` sends."""
    return rpc_status.to_status(status)


def reason_of(status: status_pb2.Status) -> str:
    """The ErrorInfo reason of a status, or "" when it has none."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def field_violations(status: status_pb2.Status) -> dict[str, str]:
    """The BadRequest field violations of a status, field -> description, in order."""
    fields: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.update({v.field: v.description for v in bad.field_violations})
    return fields


def code_name(status: status_pb2.Status) -> str:
    """The canonical name of a status code, such as INVALID_ARGUMENT."""
    return str(code_pb2.Code.Name(status.code))


def status_from_error(error: grpc.aio.AioRpcError | grpc.RpcError) -> status_pb2.Status | None:
    """The rich status a failed call carried, if the server sent one."""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
        return status
    except ValueError:
        return None


ErrorTable = Mapping[type[Exception], grpc.StatusCode]


def status_for(exc: Exception, table: ErrorTable, logger: logging.Logger) -> status_pb2.Status:
    """The rich status of a domain exception, by the first class in `table` it is.

    The exception may carry `reason` (ErrorInfo reason) and `field` (a BadRequest field
    violation). Anything not in `table` is logged and becomes INTERNAL with no details:
    internal messages never reach the caller.
    """
    for kind, code in table.items():
        if isinstance(exc, kind):
            field = getattr(exc, "field", None)
            violations = [(field, str(exc))] if field else []
            reason = str(getattr(exc, "reason", code.name))
            return make_status(code, reason, str(exc), field_violations=violations)
    logger.exception("unexpected error", exc_info=exc)
    return make_status(
        grpc.StatusCode.INTERNAL, "INTERNAL", "internal error; the service log has details"
    )


def grpc_errors(table: ErrorTable, logger: logging.Logger) -> Callable[[Handler], Handler]:
    """Decorates servicer methods: domain exceptions become rich statuses, in one place.

    `table` maps exception classes (most specific first) to status codes; see `status_for`.
    """

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(self, request, context)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception as exc:
                await context.abort_with_status(to_rpc_status(status_for(exc, table, logger)))

        return wrapper  # type: ignore[return-value]

    return decorate
