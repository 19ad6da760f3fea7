"""`make bench-tls`: what TLS and the token interceptor cost a query by id, in one run.

embed_service (tiny CLIP) and search_service run as processes; the same local store of
10k vectors is served in turn as plaintext, with tokens, with TLS, with TLS and tokens,
and with mutual TLS and tokens. Each is timed on the same queries by id, from the
Python client in this process, after a warm-up, in two passes (forward, then reverse
order) so drift of the machine cancels out. No index build runs meanwhile: 10k vectors
are searched exactly, and a build's child would compete for the cores.

    python -m tests.benchmarks.security [--vectors 10000] [--queries 1000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from imagesearch_client import ImageSearchClient, VectorRecord

from tests.support.certs import make_pki
from tests.support.stack import service_process
from tests.support.tiny_clip import build_clip

TOKEN = "bench-token"


def measure(
    env: dict[str, str], client_options: dict[str, object], asked: list[str]
) -> list[float]:
    """Milliseconds of each query by id against a search_service started with `env`."""
    with (
        service_process("search_service", env, ready="search_service ready") as (_, addr),
        ImageSearchClient(addr, **client_options) as client,  # type: ignore[arg-type]
    ):
        for rid in asked[:100]:  # warm-up: connection, handshake, caches
            client.query(id=rid, top_k=10)
        times = []
        for rid in asked:
            began = time.perf_counter()
            client.query(id=rid, top_k=10)
            times.append((time.perf_counter() - began) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=1_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    clip = build_clip(work / "clip")
    pki = make_pki(work / "pki")
    tls = {"SEARCH_TLS_CERT": str(pki.server.cert), "SEARCH_TLS_KEY": str(pki.server.key)}
    configs: dict[str, tuple[dict[str, str], dict[str, object]]] = {
        "plaintext": ({}, {}),
        "tokens": ({"SEARCH_TOKENS": TOKEN}, {"token": TOKEN}),
        "TLS": (tls, {"tls_ca": pki.ca}),
        "TLS + tokens": ({**tls, "SEARCH_TOKENS": TOKEN}, {"tls_ca": pki.ca, "token": TOKEN}),
        "mTLS + tokens": (
            {**tls, "SEARCH_TLS_CLIENT_CA": str(pki.ca), "SEARCH_TOKENS": TOKEN},
            {"tls_ca": pki.ca, "tls_cert": pki.client.cert, "tls_key": pki.client.key,
             "token": TOKEN},
        ),
    }  # fmt: skip
    embed_env = {"EMBED_MODEL": str(clip), "EMBED_ADDR": "127.0.0.1:0", "EMBED_PRECISION": "fp32"}
    with service_process("embed_service", embed_env, ready="embed_service ready") as (_, embed):
        base = {"SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed, "DATA_DIR": str(work / "data"),
                "VECTOR_STORE": "local", "SEARCH_INDEX_THRESHOLD": "1000000"}  # fmt: skip
        rng = random.Random(0)
        ids = [f"v{i}" for i in range(args.vectors)]
        with (
            service_process("search_service", base, ready="search_service ready") as (_, addr),
            ImageSearchClient(addr) as client,
        ):
            for start in range(0, args.vectors, 1000):
                records = [VectorRecord(i, [rng.gauss(0, 1) for _ in range(64)])
                               for i in ids[start : start + 1000]]  # fmt: skip
                client.upsert_vectors(records)
        asked = [rng.choice(ids) for _ in range(args.queries)]
        results: dict[str, list[float]] = {name: [] for name in configs}
        for order in (list(configs), list(reversed(configs))):
            for name in order:
                server_env, client_options = configs[name]
                results[name] += measure({**base, **server_env}, client_options, asked)
    plain = statistics.median(results["plaintext"])
    print(f"query by id, top 10, {args.vectors} vectors, 2 x {args.queries} queries per setup")
    for name, times in results.items():
        p50 = statistics.median(times)
        p99 = statistics.quantiles(times, n=100)[98]
        print(
            f"  {name:14s} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  p50 overhead {p50 - plain:+.3f} ms"
        )


if __name__ == "__main__":
    main()
