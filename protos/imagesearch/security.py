"""TLS and tokens as a client of the project uses them, on gRPC's own means:
`channel_credentials` (TLS, or mutual TLS) and `token_metadata`. PEM files are checked when a
process starts (with Python's `ssl`, which names what is wrong, where gRPC only says it
could not connect): a missing, unreadable or mismatched file is `SecurityConfigError`,
naming the variable and the file. The servers' side (token checks, server TLS) is
`imagesearch_serving.auth`; it uses the checks here. Tokens never appear in a log line or
an error.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


class SecurityConfigError(Exception):
    """A TLS or token setting cannot be used; the message names the variable and file."""


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with every call."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def read_pem(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(
            f"{variable}={path} cannot be read ({exc.strerror or exc})"
        ) from exc


def check_pair(cert: Path, key: Path, cert_var: str, key_var: str) -> None:
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise SecurityConfigError(
            f"{cert_var}={cert} and {key_var}={key} are not a PEM certificate and its "
            f"private key ({exc.reason or exc})"
        ) from exc


def check_ca(ca: Path, variable: str) -> None:
    try:
        ssl.create_default_context().load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise SecurityConfigError(
            f"{variable}={ca} is not a PEM CA bundle ({exc.reason or exc})"
        ) from exc


def channel_credentials(
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    *,
    names: tuple[str, str, str],
) -> grpc.ChannelCredentials | None:
    """TLS for a channel: trust `ca`, present `cert`/`key` (mTLS); None for plaintext.

    `names` are the variables (CA, cert, key) to name in errors.
    """
    ca_var, cert_var, key_var = names
    if ca is None:
        if cert is not None or key is not None:
            raise SecurityConfigError(f"{cert_var}/{key_var} need {ca_var}: set it too")
        return None
    roots = read_pem(ca, ca_var)
    check_ca(ca, ca_var)
    if (cert is None) != (key is None):
        raise SecurityConfigError(f"set both {cert_var} and {key_var}, or neither")
    chain = private = None
    if cert is not None and key is not None:
        chain, private = read_pem(cert, cert_var), read_pem(key, key_var)
        check_pair(cert, key, cert_var, key_var)
    return grpc.ssl_channel_credentials(roots, private, chain)
