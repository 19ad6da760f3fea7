"""Tokens and TLS on the servers' side: `read_tokens` (from a variable and/or a file),
`TokenAuth` (one interceptor that requires `authorization: Bearer <token>` on every RPC but
health) and `server_credentials` (TLS, or mutual TLS with a client CA). Settings that
cannot be used are `SecurityConfigError`, naming the variable and the file; tokens never
appear in a log line or an error.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc
from imagesearch.security import SecurityConfigError, check_ca, check_pair, read_pem

from imagesearch_serving.server import HEALTH_PREFIX, Continuation, refusal


def read_tokens(inline: str | None, file: Path | None, *, variable: str) -> frozenset[str]:
    """Tokens from a comma-separated value and/or a file of one token per line.

    A setting that is given but holds no token is an error, never "no auth": an empty
    secret (a template's `SEARCH_TOKENS=" , "`, an empty file) would open the service."""
    tokens = {t.strip() for t in (inline or "").split(",")} - {""}
    if inline is not None and not tokens:
        raise SecurityConfigError(
            f"{variable} is set but holds no token; give at least one, or unset it to "
            "serve without tokens"
        )
    if file is not None:
        try:
            found = {line.strip() for line in file.read_text().splitlines()} - {""}
        except OSError as exc:
            raise SecurityConfigError(
                f"{variable}_FILE={file} cannot be read ({exc.strerror or exc})"
            ) from exc
        if not found:
            raise SecurityConfigError(
                f"{variable}_FILE={file} holds no token; put one token per line, or unset it "
                "to serve without tokens"
            )
        tokens |= found
    return frozenset(tokens)


def _bearer(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _one_of(token: str, tokens: Iterable[str]) -> bool:
    """Compares with every token in constant time each, without stopping at a match."""
    given = token.encode()
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(given, candidate.encode())
    return found


class TokenAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Requires a bearer token on every RPC except grpc.health.v1.Health.

    `read_tokens` may call only `read_methods` (full method names); their writes get
    PERMISSION_DENIED. Refusals carry ErrorInfo reasons TOKEN_MISSING, TOKEN_INVALID
    or TOKEN_READ_ONLY and never echo the token.
    """

    def __init__(
        self,
        tokens: frozenset[str],
        *,
        read_tokens: frozenset[str] = frozenset(),
        read_methods: frozenset[str] = frozenset(),
    ) -> None:
        self._tokens = tokens
        self._read_tokens = read_tokens
        self._read_methods = read_methods

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = str(details.method)
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        token = _bearer(details.invocation_metadata)
        if token is None:
            return refusal(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "TOKEN_MISSING",
                "this service requires a token: send metadata 'authorization: Bearer <token>'",
            )
        if _one_of(token, self._tokens):
            return handler
        if _one_of(token, self._read_tokens):
            if method in self._read_methods:
                return handler
            return refusal(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                "TOKEN_READ_ONLY",
                f"the token is read-only; {method} needs a read-write token",
            )
        return refusal(
            handler,
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_INVALID",
            "the token is not one this service accepts",
        )


def server_credentials(
    cert: Path | None, key: Path | None, client_ca: Path | None, *, prefix: str
) -> grpc.ServerCredentials | None:
    """TLS for a server from <prefix>_TLS_CERT/_KEY, mutual with <prefix>_TLS_CLIENT_CA;
    None (plaintext) when none is set."""
    cert_var, key_var, ca_var = f"{prefix}_TLS_CERT", f"{prefix}_TLS_KEY", f"{prefix}_TLS_CLIENT_CA"
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityConfigError(
                f"{ca_var} is set, but TLS is not: set {cert_var} and {key_var}"
            )
        return None
    if cert is None or key is None:
        raise SecurityConfigError(f"set both {cert_var} and {key_var}, or neither")
    chain, private = read_pem(cert, cert_var), read_pem(key, key_var)
    check_pair(cert, key, cert_var, key_var)
    roots = None
    if client_ca is not None:
        roots = read_pem(client_ca, ca_var)
        check_ca(client_ca, ca_var)
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=roots, require_client_auth=roots is not None
    )
