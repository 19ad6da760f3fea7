"""Hostile and unlucky callers, against both services run as processes with tokens on.

Each test has a stranger (no token, a read-only token, a client that gives up) try to
take what other callers need, and asserts the precise status the stranger gets and that
an authenticated caller is served meanwhile, in about its usual time.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imagesearch.limits import MAX_TEXT_CHARS
from imagesearch.status import reason_of, status_from_error
from imagesearch.v1 import embed_service_pb2 as embed_pb
from imagesearch.v1 import embed_service_pb2_grpc as embed_grpc
from imagesearch.v1 import search_service_pb2 as search_pb
from imagesearch.v1 import search_service_pb2_grpc as search_grpc

from tests.support.stack import files_of, service_process, status_mb, struct

TOKEN = "rw-token-of-the-hostile-suite"
READ_TOKEN = "ro-token-of-the-hostile-suite"
EMBED_TOKEN = "embed-token-of-the-hostile-suite"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
READ_AUTH = (("authorization", f"Bearer {READ_TOKEN}"),)
EMBED_AUTH = (("authorization", f"Bearer {EMBED_TOKEN}"),)
WATCHERS = 40  # more than the RPC budget (16) and the watcher budget (32) together
SEARCH_PIDS: dict[str, int] = {}


@contextmanager
def stack(clip_dir: Path, data_dir: Path, **extra: str) -> Iterator[tuple[str, str]]:
    """embed_service and search_service as processes, tokens on; yields their addresses
    (search_service's process id is SEARCH_PIDS[its address])."""
    embed_env = {
        "EMBED_MODEL": str(clip_dir),
        "EMBED_ADDR": "127.0.0.1:0",
        "EMBED_PRECISION": "fp32",
        "EMBED_TOKENS": EMBED_TOKEN,
        **{k: v for k, v in extra.items() if k.startswith("EMBED_")},
    }
    with service_process("embed_service", embed_env, ready="embed_service ready") as (_, embed):
        search_env = {
            "SEARCH_ADDR": "127.0.0.1:0",
            "EMBED_TARGET": embed,
            "EMBED_TOKEN": EMBED_TOKEN,
            "DATA_DIR": str(data_dir),
            "VECTOR_STORE": "local",
            "SEARCH_TOKENS": TOKEN,
            "SEARCH_READ_TOKENS": READ_TOKEN,
            **{k: v for k, v in extra.items() if k.startswith("SEARCH_")},
        }
        with service_process("search_service", search_env, ready="search_service ready") as (
            process,
            search,
        ):
            SEARCH_PIDS[search] = process.pid
            yield embed, search


def timed(call: Callable[[], object], times: int) -> list[float]:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


@contextmanager
def watchers(address: str, count: int) -> Iterator[list[str]]:
    """`count` health Watch streams without a token, each opened and read once; yields
    what each got first (SERVING, or the code that refused it); all stay open until the end."""
    with ExitStack() as open_streams:
        channels = [open_streams.enter_context(grpc.insecure_channel(address)) for _ in range(4)]
        outcomes = []
        for i in range(count):
            stub = health_pb2_grpc.HealthStub(channels[i % len(channels)])
            stream = stub.Watch(health_pb2.HealthCheckRequest())
            open_streams.callback(stream.cancel)
            try:
                first = next(stream)
                outcomes.append(health_pb2.HealthCheckResponse.ServingStatus.Name(first.status))
            except grpc.RpcError as error:
                outcomes.append(error.code().name)
        yield outcomes


def test_health_watchers_without_a_token_cannot_starve_either_service(
    clip_dir: Path, tmp_path: Path
) -> None:
    with stack(clip_dir, tmp_path / "data") as (embed, search):
        with grpc.insecure_channel(search) as channel, grpc.insecure_channel(embed) as direct:
            searcher = search_grpc.SearchServiceStub(channel)
            embedder = embed_grpc.EmbedServiceStub(direct)

            def stats() -> object:
                return searcher.DescribeStats(search_pb.DescribeStatsRequest(), metadata=AUTH)

            def text_query() -> object:  # search_service -> embed_service and back
                return searcher.Query(
                    search_pb.QueryRequest(text="a red square"), metadata=AUTH, timeout=10
                )

            def model_info() -> object:
                return embedder.GetModelInfo(
                    embed_pb.GetModelInfoRequest(), metadata=EMBED_AUTH, timeout=10
                )

            calls = (stats, text_query, model_info)
            usual = [statistics.median(timed(call, 10)) for call in calls]
            with watchers(search, WATCHERS) as on_search, watchers(embed, WATCHERS) as on_embed:
                # The watcher budget (32 by default) fills; the rest are refused. One of
                # embed_service's is search_service's own watch of its health.
                for outcomes, places in ((on_search, 32), (on_embed, 31)):
                    expected = ["SERVING"] * places + ["RESOURCE_EXHAUSTED"] * (WATCHERS - places)
                    assert outcomes == expected, outcomes
                meanwhile = [statistics.median(timed(call, 10)) for call in calls]
                # Health still answers probes while its Watch budget is full.
                check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert check.status == health_pb2.HealthCheckResponse.SERVING
        for before, during in zip(usual, meanwhile, strict=True):
            assert during <= 3 * before + 0.05, (usual, meanwhile)


def test_an_idle_stream_gives_its_place_back_and_abandoned_calls_take_none(
    clip_dir: Path, tmp_path: Path
) -> None:
    limit = 2
    settings = {"SEARCH_MAX_CONCURRENT_RPCS": str(limit), "SEARCH_STREAM_IDLE_S": "1"}
    with (
        stack(clip_dir, tmp_path / "data", **settings) as (_, search),
        grpc.insecure_channel(search) as channel,
    ):
        stub = search_grpc.SearchServiceStub(channel)
        never = threading.Event()

        def nothing() -> Iterator[search_pb.IngestImagesRequest]:
            never.wait(30)
            yield from ()

        idle = [stub.IngestImages(nothing(), metadata=AUTH) for _ in range(limit)]
        started = time.monotonic()
        for stream in idle:
            with pytest.raises(grpc.RpcError) as caught:
                next(stream)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert reason_of(status_from_error(caught.value)) == "STREAM_IDLE"
        assert time.monotonic() - started < 10
        never.set()
        # Clients that give up while their request is on its way take no place for good.
        big = search_pb.QueryRequest(text="x" * (4 * 2**20))
        for _ in range(20):
            with pytest.raises(grpc.RpcError):
                stub.Query(big, metadata=AUTH, timeout=0.005)
        for _ in range(2 * limit):
            reply = stub.DescribeStats(search_pb.DescribeStatsRequest(), metadata=AUTH)
            assert reply.store == "local"


def refused(call: Callable[[], Any]) -> tuple[str, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    status = status_from_error(caught.value)
    return caught.value.code().name, reason_of(status), caught.value.details() or ""


def test_texts_past_the_limit_are_refused_cheaply_and_a_maximal_one_costs_a_normal_ones_time(
    clip_dir: Path, tmp_path: Path
) -> None:
    big = [("grpc.max_send_message_length", 64 * 2**20)]
    with (
        stack(clip_dir, tmp_path / "data", EMBED_MAX_MESSAGE_MB="64") as (embed, search),
        grpc.insecure_channel(search) as channel,
        grpc.insecure_channel(embed, options=big) as direct,
    ):
        searcher = search_grpc.SearchServiceStub(channel)
        embedder = embed_grpc.EmbedServiceStub(direct)

        def embed_texts(*texts: str) -> embed_pb.EmbedTextsResponse:
            request = embed_pb.EmbedTextsRequest(texts=list(texts))
            reply: embed_pb.EmbedTextsResponse = embedder.EmbedTexts(
                request, metadata=EMBED_AUTH, timeout=30
            )
            return reply

        words = "a photo of a dog on a beach at sunset "
        maximal = (words * MAX_TEXT_CHARS)[:MAX_TEXT_CHARS]
        normal = timed(lambda: embed_texts("a photo of a dog"), 10)
        longest = timed(lambda: embed_texts(maximal), 10)
        assert statistics.median(longest) <= 2 * statistics.median(normal) + 0.01

        reply = embed_texts("a dog", maximal, maximal + "!", "x" * 26 * 2**20)
        assert [e.truncated for e in reply.embeddings[:2]] == [False, True]
        for bad in reply.embeddings[2:]:
            assert not bad.values
            assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "at most 4,096" in bad.error.message
        # The huge text cost its own request only: a short one is served at once after.
        assert timed(lambda: embed_texts("a cat"), 1)[0] < 1.0

        code, reason, message = refused(
            lambda: searcher.Query(
                search_pb.QueryRequest(text="y" * 3 * 2**20), metadata=READ_AUTH, timeout=10
            )
        )
        assert (code, reason) == ("INVALID_ARGUMENT", "TEXT_TOO_LONG")
        assert "text is 3,145,728 characters; at most 4,096" in message
        answer = searcher.Query(search_pb.QueryRequest(text=maximal), metadata=READ_AUTH)
        assert answer.matches == []


def unit_rows(count: int, dimension: int, seed: int) -> list[list[float]]:
    rows = np.random.default_rng(seed).standard_normal((count, dimension))
    unit: list[list[float]] = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).tolist()
    return unit


def test_queries_with_a_read_only_token_never_write_nor_hold_up_writers(
    clip_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with stack(clip_dir, data) as (_, search), grpc.insecure_channel(search) as channel:
        stub = search_grpc.SearchServiceStub(channel)
        dimension = stub.DescribeStats(search_pb.DescribeStatsRequest(), metadata=AUTH).dimension
        rows = unit_rows(400, dimension, 1)

        def upsert(first: int, count: int) -> None:
            records = [
                search_pb.VectorRecord(id=f"r{i}", values=rows[i], metadata=struct({"n": i}))
                for i in range(first, first + count)
            ]
            stub.UpsertVectors(search_pb.UpsertVectorsRequest(records=records), metadata=AUTH)

        upsert(0, 200)
        before = files_of(data)
        written = [200]

        def one_more() -> None:
            upsert(written[0], 1)
            written[0] += 1

        usual = statistics.median(timed(one_more, 10))
        stop = threading.Event()
        queried = []

        def hostile_reader() -> None:
            for q in range(20):
                keys = {f"k{q}_{j}": {"$eq": "x"} for j in range(50)}
                request = search_pb.QueryRequest(
                    vector=search_pb.QueryVector(values=rows[q]),
                    top_k=10,
                    filter=struct({"$or": [{k: v} for k, v in keys.items()]}),
                )
                queried.append(len(stub.Query(request, metadata=READ_AUTH).matches))
            stop.set()

        reader = threading.Thread(target=hostile_reader)
        reader.start()
        meanwhile = []
        while not stop.is_set():
            meanwhile.extend(timed(one_more, 1))
        reader.join()
        assert queried == [0] * 20  # no record has those keys
        assert statistics.median(meanwhile) <= 3 * usual + 0.05, (usual, meanwhile)
        after_writes = files_of(data)
        for _ in range(20):
            request = search_pb.QueryRequest(
                vector=search_pb.QueryVector(values=rows[0]),
                filter=struct({f"new{j}": {"$gt": 1} for j in range(50)}),
            )
            stub.Query(request, metadata=READ_AUTH)
        assert files_of(data) == after_writes
        assert len(after_writes) <= len(before) + 4  # the writers' WAL, not 1,000 indexes
        wanted = [f"r{i}" for i in range(written[0])]
        found = stub.Fetch(search_pb.FetchRequest(ids=wanted), metadata=READ_AUTH)
        assert [r.id for r in found.records] == wanted


def test_replies_that_cannot_fit_are_refused_before_they_are_built(
    clip_dir: Path, tmp_path: Path
) -> None:
    settings = {"SEARCH_MAX_MESSAGE_MB": "4"}
    with (
        stack(clip_dir, tmp_path / "data", **settings) as (_, search),
        grpc.insecure_channel(search) as channel,
    ):
        stub = search_grpc.SearchServiceStub(channel)
        dimension = stub.DescribeStats(search_pb.DescribeStatsRequest(), metadata=AUTH).dimension
        rows = unit_rows(2000, dimension, 2)
        big = struct({"text": "x" * 35_000})
        for first in range(0, 2000, 50):
            records = [
                search_pb.VectorRecord(id=f"r{i}", values=rows[i], metadata=big)
                for i in range(first, first + 50)
            ]
            stub.UpsertVectors(search_pb.UpsertVectorsRequest(records=records), metadata=AUTH)
        pid = SEARCH_PIDS[search]
        base = status_mb(pid, "VmHWM")
        query = search_pb.QueryRequest(
            vector=search_pb.QueryVector(values=rows[0]), top_k=2000, include_metadata=True,
            include_values=True,
        )  # fmt: skip
        for _ in range(8):
            code, reason, message = refused(lambda: stub.Query(query, metadata=READ_AUTH))
            assert (code, reason) == ("RESOURCE_EXHAUSTED", "REPLY_TOO_LARGE")
            assert "of the 2000 matches fit" in message
            code, reason, _ = refused(
                lambda: stub.Fetch(
                    search_pb.FetchRequest(ids=[f"r{i}" for i in range(1000)]), metadata=READ_AUTH
                )
            )
            assert (code, reason) == ("RESOURCE_EXHAUSTED", "REPLY_TOO_LARGE")
        grew = status_mb(pid, "VmHWM") - base
        assert grew <= 64, grew  # 8 whole replies would be 8 x 70 MB
        # A normal caller meanwhile: what fits is answered whole.
        fits = stub.Query(
            search_pb.QueryRequest(
                vector=search_pb.QueryVector(values=rows[0]), top_k=50, include_metadata=True
            ),
            metadata=READ_AUTH,
        )
        assert [m.id for m in fits.matches][:1] == ["r0"]
        assert len(fits.matches) == 50
