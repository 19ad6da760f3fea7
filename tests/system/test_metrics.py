"""Prometheus /metrics of both services: counters rise by exactly the calls made.

Both services run with EMBED_/SEARCH_METRICS_ADDR and tokens; a known set of calls is
made and the scraped series are compared before and after. The endpoint must carry no
token, no record id and no metadata value.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch_client import ImageRecord, ImageSearchClient, InvalidArgument, VectorRecord
from imagesearch_serving.server import configure_logging
from prometheus_client.parser import text_string_to_metric_families

from embed_service.app import EmbedApp
from search_service.app import SearchApp
from tests.support.fixtures import on_pinecone
from tests.support.imagegen import encode, picture
from tests.support.pinecone_standin import PineconeStandIn
from tests.support.stack import InThread, search_settings, serving_embed

TOKEN = "metrics-test-token"
SEARCH = "imagesearch.v1.SearchService"
EMBED = "imagesearch.v1.EmbedService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(address: str) -> tuple[str, Samples]:
    async with httpx.AsyncClient() as http:
        reply = await http.get(f"http://{address}/metrics", timeout=10)
    reply.raise_for_status()
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return reply.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def handled(samples: Samples, service: str, method: str, code: str) -> float:
    return value(
        samples, "grpc_server_handled_total",
        grpc_type="unary", grpc_service=service, grpc_method=method, grpc_code=code,
    )  # fmt: skip


@pytest.fixture
async def watched(clip_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[EmbedApp, SearchApp]]:
    async with serving_embed(clip_dir, metrics_addr="127.0.0.1:0") as embed:
        search = SearchApp(search_settings(tmp_path / "data", embed.address,
                                           metrics_addr="127.0.0.1:0", tokens=TOKEN))  # fmt: skip
        await search.start()
        await search.wait_serving()
        yield embed, search
        await search.stop(0)


async def test_counters_rise_by_exactly_the_calls_made_with_their_codes(
    watched: tuple[EmbedApp, SearchApp],
) -> None:
    embed, search = watched
    assert embed.metrics_endpoint is not None
    assert search.metrics_endpoint is not None
    _, search_before = await scrape(search.metrics_endpoint.address)
    _, embed_before = await scrape(embed.metrics_endpoint.address)

    with ImageSearchClient(search.address, timeout_s=20, token=TOKEN) as sync_client:
        client = InThread(sync_client)
        for i in range(2):
            records = [VectorRecord(f"secret-id-{i}", [1.0, float(i)] + [0.0] * 62,
                                    {"label": "private-value"})]  # fmt: skip
            await client.upsert_vectors(records)
        for text in ("a red square", "a blue circle", "a green shape"):
            await client.query(text=text, top_k=1)
        with pytest.raises(InvalidArgument):
            await client.query(text="x", top_k=-1)
        await client.upsert_images([ImageRecord(image=b"not an image", id="bad-image")])
        await client.upsert_images([ImageRecord(image=encode(picture("red")), id="good-image")])
    async with grpc.aio.insecure_channel(search.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(f"/{SEARCH}/DescribeStats")(
                pb.DescribeStatsRequest().SerializeToString()
            )

    search_text, search_after = await scrape(search.metrics_endpoint.address)
    embed_text, embed_after = await scrape(embed.metrics_endpoint.address)

    def delta(after: Samples, before: Samples, service: str, method: str, code: str) -> float:
        return handled(after, service, method, code) - handled(before, service, method, code)

    assert delta(search_after, search_before, SEARCH, "UpsertVectors", "OK") == 2
    assert delta(search_after, search_before, SEARCH, "Query", "OK") == 3
    assert delta(search_after, search_before, SEARCH, "Query", "INVALID_ARGUMENT") == 1
    assert delta(search_after, search_before, SEARCH, "UpsertImages", "OK") == 2
    assert delta(search_after, search_before, SEARCH, "DescribeStats", "UNAUTHENTICATED") == 1
    started = value(search_after, "grpc_server_started_total", grpc_type="unary",
                    grpc_service=SEARCH, grpc_method="Query")  # fmt: skip
    assert started - value(search_before, "grpc_server_started_total", grpc_type="unary",
                           grpc_service=SEARCH, grpc_method="Query") == 4  # fmt: skip
    query_labels = {"grpc_type": "unary", "grpc_service": SEARCH, "grpc_method": "Query"}
    timed = ("grpc_server_handling_seconds_count", frozenset(query_labels.items()))
    assert search_after[timed] - search_before.get(timed, 0) == 4
    # search_service -> embed_service: three texts, two image batches.
    assert delta(embed_after, embed_before, EMBED, "EmbedTexts", "OK") == 3
    assert delta(embed_after, embed_before, EMBED, "EmbedImages", "OK") == 2
    latency = ("search_embed_call_seconds_count", frozenset({"method": "EmbedTexts"}.items()))
    assert search_after[latency] - search_before.get(latency, 0) == 3
    failures = ("embed_decode_failures_total", frozenset({"reason": "IMAGE_UNREADABLE"}.items()))
    assert embed_after[failures] - embed_before.get(failures, 0) == 1
    batches = ("embed_batch_items_count", frozenset({"kind": "texts"}.items()))
    assert embed_after[batches] - embed_before.get(batches, 0) == 3

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset(labels.items()))
        return embed_after[key] - embed_before.get(key, 0)

    # Three text passes; one image pass, as the unreadable image never reaches the model.
    assert grew("embed_forward_seconds_count", kind="texts") == 3
    assert grew("embed_forward_seconds_count", kind="images") == 1
    assert grew("embed_forward_seconds_sum", kind="images") > 0
    assert grew("embed_decode_seconds_count") == 2  # the good image and the bad one
    assert grew("embed_decode_seconds_sum") > 0
    info = embed.engine.info() if embed.engine else None
    assert info is not None
    model = {"model_id": info.model_id, "fingerprint": info.fingerprint, "device": "cpu"}
    assert value(embed_after, "embed_model_info", **model, runtime="torch", precision="fp32") == 1

    for text in (search_text, embed_text):
        assert TOKEN not in text
        assert "secret-id" not in text
        assert "private-value" not in text
        assert "good-image" not in text


async def test_vectors_per_namespace_are_refreshed_from_the_store(
    watched: tuple[EmbedApp, SearchApp],
) -> None:
    _, search = watched
    assert search.metrics_endpoint is not None
    with ImageSearchClient(search.address, timeout_s=20, token=TOKEN) as sync_client:
        records = [VectorRecord(f"v{i}", [1.0, float(i)] + [0.0] * 62) for i in range(5)]
        await InThread(sync_client).upsert_vectors(records)
        await InThread(sync_client).upsert_vectors(records[:2], namespace="other")
    deadline = time.monotonic() + 15  # refreshed every VECTOR_COUNT_EVERY_S
    while True:
        _, samples = await scrape(search.metrics_endpoint.address)
        counts = (value(samples, "search_vectors", namespace="__default__"),
                  value(samples, "search_vectors", namespace="other"))  # fmt: skip
        if counts == (5, 2) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert counts == (5, 2)
    # Far below SEARCH_INDEX_THRESHOLD: all 7 are searched exactly, and no build runs.
    assert value(samples, "search_index_unindexed_vectors") == 7
    assert value(samples, "search_index_building") == 0


async def test_store_errors_and_retries_are_counted(
    embed_app: EmbedApp, tmp_path: Path, standin: PineconeStandIn, backoff: list[float]
) -> None:
    settings = search_settings(
        tmp_path / "data", embed_app.address, metrics_addr="127.0.0.1:0", **on_pinecone(standin)
    )
    search = SearchApp(settings)
    await search.start()
    await search.wait_serving()
    try:
        assert search.metrics_endpoint is not None
        standin.fail("/query", 400, times=1)
        with (
            ImageSearchClient(search.address, timeout_s=20) as sync_client,
            pytest.raises(InvalidArgument),
        ):
            await InThread(sync_client).query(vector=[1.0] + [0.0] * 63)
        standin.fail("/query", 503, times=2)  # retried twice by the SDK, then answered
        with ImageSearchClient(search.address, timeout_s=20) as sync_client:
            assert await InThread(sync_client).query(vector=[1.0] + [0.0] * 63) == []
        _, samples = await scrape(search.metrics_endpoint.address)
        assert value(samples, "search_store_errors_total", kind="InvalidArgument") == 1
        assert value(samples, "search_store_retries_total") == 2
        assert len(backoff) == 2
    finally:
        await search.stop(0)


@pytest.mark.parametrize(
    ("module", "variable"),
    [
        ("embed_service", "EMBED_METRICS_ADDR"),
        ("search_service", "SEARCH_METRICS_ADDR"),
        ("embed_service", "EMBED_ADDR"),
        ("search_service", "SEARCH_ADDR"),
    ],
)
def test_a_port_in_use_stops_the_service_with_exit_2_and_no_traceback(
    clip_dir: Path, tmp_path: Path, module: str, variable: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        env = {
            **os.environ, "EMBED_MODEL": str(clip_dir), "EMBED_ADDR": "127.0.0.1:0",
            "SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": "127.0.0.1:1",
            "DATA_DIR": str(tmp_path / "data"), variable: busy,
        }  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", module], env=env, cwd=tmp_path, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr
    assert busy in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reply_to_a_caller_that_gave_up_is_one_debug_line_not_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging("INFO")
    cygrpc = logging.getLogger("grpc._cython.cygrpc")
    with caplog.at_level(logging.DEBUG):
        try:
            raise RuntimeError("Failed execute_batch")
        except RuntimeError:
            cygrpc.exception("ExecuteBatchError raised in core by servicer method [/x.Y/Z]")
        cygrpc.error("some other failure of the core")
    messages = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("grpc._cython.cygrpc", logging.ERROR, "some other failure of the core") in messages
    assert not [m for m in messages if m[0] == "grpc._cython.cygrpc" and "ExecuteBatch" in m[2]]
    assert any(m[1] == logging.DEBUG and "caller had already given up" in m[2] for m in messages)
