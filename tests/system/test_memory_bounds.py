"""Both services keep memory bounded under more concurrent maximum-size calls than they admit.

Each service runs as its own process (so its RSS is its own) with a small
*_MAX_CONCURRENT_RPCS and 16 MiB messages; callers are threads with a connection
each, as separate clients are. Calls past the limit get RESOURCE_EXHAUSTED at once,
the peak RSS stays within the budget the README documents (limit x message size x the
copies each service holds: 2 for embed_service, 6 for search_service, which decodes and
forwards images), and the service answers normally right after.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from imagesearch.v1 import embed_service_pb2 as embed_pb
from imagesearch.v1 import embed_service_pb2_grpc as embed_grpc
from imagesearch.v1 import search_service_pb2 as search_pb
from imagesearch.v1 import search_service_pb2_grpc as search_grpc
from PIL import Image

from embed_service.app import EmbedApp
from tests.support.imagegen import encode, picture
from tests.support.stack import embed_settings, service_process, status_mb

LIMIT = 2
CALLERS = 12
MESSAGE_MB = 16
# embed_service holds each forward pass this long for company, so admitted calls are
# surely still in flight when the rest arrive, on a busy machine too.
HOLD_MS = 2000


def budget_mb(copies: int) -> int:
    """The documented budget, plus room for decoding and the allocator. One call more than
    LIMIT may be admitted: a call that ends frees its place for one arriving late."""
    return copies * (LIMIT + 1) * MESSAGE_MB + 128


LISTENING = re.compile(r"listening on (\S+)")


def noise_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def burst(address: str, call: Callable[[grpc.Channel], object]) -> list[tuple[str, float]]:
    """CALLERS calls at once, a connection each; (code, seconds) for each."""
    barrier = threading.Barrier(CALLERS)

    def one(_: int) -> tuple[str, float]:
        options = [("grpc.max_send_message_length", 64 * 2**20)]
        with grpc.insecure_channel(address, options=options) as channel:
            grpc.channel_ready_future(channel).result(10)
            barrier.wait()
            started = time.perf_counter()
            try:
                call(channel)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            return code, time.perf_counter() - started

    with ThreadPoolExecutor(CALLERS) as pool:
        return list(pool.map(one, range(CALLERS)))


def check(outcomes: list[tuple[str, float]], served: str) -> None:
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {served, "RESOURCE_EXHAUSTED"}, codes
    assert codes.count("RESOURCE_EXHAUSTED") >= CALLERS - LIMIT - 1, codes
    first_served = min(t for code, t in outcomes if code == served)
    last_refused = max(t for code, t in outcomes if code == "RESOURCE_EXHAUSTED")
    assert first_served >= HOLD_MS / 1000, outcomes
    assert last_refused < first_served, outcomes  # refused up front, not after waiting


def test_embed_service_refuses_calls_past_its_limit_and_stays_within_its_memory_budget(
    clip_dir: Path,
) -> None:
    env = {
        "EMBED_MODEL": str(clip_dir),
        "EMBED_ADDR": "127.0.0.1:0",
        "EMBED_PRECISION": "fp32",
        "EMBED_MAX_MESSAGE_MB": str(MESSAGE_MB),
        "EMBED_MAX_CONCURRENT_RPCS": str(LIMIT),
        "EMBED_BATCH_WAIT_MS": str(HOLD_MS),
        "EMBED_MODEL_BATCH_SIZE": "64",
    }
    image = noise_jpeg()
    request = embed_pb.EmbedImagesRequest(images=[image] * ((15 * 2**20) // len(image)))
    with service_process("embed_service", env, ready="embed_service ready") as (process, address):
        base = status_mb(process.pid, "VmRSS")
        outcomes = burst(
            address, lambda ch: embed_grpc.EmbedServiceStub(ch).EmbedImages(request, timeout=60)
        )
        check(outcomes, "OK")
        peak = status_mb(process.pid, "VmHWM")
        assert peak - base <= budget_mb(2), (base, peak)
        with grpc.insecure_channel(address) as channel:
            small = embed_pb.EmbedImagesRequest(images=[encode(picture("red"))])
            reply = embed_grpc.EmbedServiceStub(channel).EmbedImages(small, timeout=30)
        assert len(reply.embeddings[0].values) == 64


async def test_search_service_refuses_calls_past_its_limit_and_stays_within_its_memory_budget(
    clip_dir: Path, tmp_path: Path
) -> None:
    embed_app = EmbedApp(embed_settings(clip_dir, batch_wait_ms=HOLD_MS, model_batch_size=64))
    await embed_app.start()
    await embed_app.load()
    env = {
        "SEARCH_ADDR": "127.0.0.1:0",
        "EMBED_TARGET": embed_app.address,
        "DATA_DIR": str(tmp_path),
        "VECTOR_STORE": "local",
        "SEARCH_MAX_MESSAGE_MB": str(MESSAGE_MB),
        "SEARCH_MAX_CONCURRENT_RPCS": str(LIMIT),
    }
    # search_service holds and forwards all 15 MB of each; embed_service holds the
    # forward pass HOLD_MS, then answers the vector.
    image = noise_jpeg()
    request = search_pb.QueryRequest(image=image * ((15 * 2**20) // len(image)))

    def query(channel: grpc.Channel) -> object:
        return search_grpc.SearchServiceStub(channel).Query(request, timeout=60)

    def run() -> None:
        with service_process("search_service", env, ready="search_service ready") as (
            process,
            address,
        ):
            base = status_mb(process.pid, "VmRSS")
            check(burst(address, query), "OK")
            peak = status_mb(process.pid, "VmHWM")
            assert peak - base <= budget_mb(6), (base, peak)
            with grpc.insecure_channel(address) as channel:
                stats = search_grpc.SearchServiceStub(channel).DescribeStats(
                    search_pb.DescribeStatsRequest(), timeout=30
                )
            assert stats.store == "local"

    # The embed_service it calls runs on this loop: wait off it.
    try:
        await asyncio.to_thread(run)
    finally:
        await embed_app.stop(0)
