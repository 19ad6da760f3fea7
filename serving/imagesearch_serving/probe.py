"""`python -m imagesearch_serving.probe ADDR`: a grpc_health_probe for container health checks.

Asks grpc.health.v1 whether ADDR serves (the whole server, or `--service NAME`).
Exit status: 0 SERVING, 1 answered but not serving, 2 no answer. Health needs no
token; `--tls-ca` (and `--tls-cert`/`--tls-key`) for a TLS port.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.security import SecurityConfigError, channel_credentials


def probe(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagesearch_serving.probe", description=__doc__
    )
    parser.add_argument("addr", help="host:port of embed_service or search_service")
    parser.add_argument("--service", default="", help="a service name; default: the server")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    parser.add_argument("--tls-ca", type=Path, help="CA bundle for a TLS port")
    parser.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    parser.add_argument("--tls-key", type=Path, help="its private key")
    args = parser.parse_args(argv)
    try:
        credentials = channel_credentials(
            args.tls_ca, args.tls_cert, args.tls_key, names=("--tls-ca", "--tls-cert", "--tls-key")
        )
    except SecurityConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    channel = (
        grpc.secure_channel(args.addr, credentials)
        if credentials is not None
        else grpc.insecure_channel(args.addr)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"{args.addr}: no answer ({error.code().name})", file=sys.stderr)
            return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.addr}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(probe())
