"""Soak: 32 concurrent clients mix every call on one local store while index builds run.

search_service runs as its own process (so its open files and threads are its own),
with a low SEARCH_INDEX_THRESHOLD so background HNSW builds keep starting under the
load. Each client owns its ids, so the test knows exactly what must be stored at the
end. Some upserts are given deadlines of a few milliseconds, so they are cancelled
at every stage, inside the store's update too. Asserted: no status but OK (and NOT_FOUND
for ids a client deleted, DEADLINE_EXCEEDED for those calls), every acknowledged write
present with its vector and metadata, every write of a cancelled call that was ever seen
still there at the end (none is seen and then dropped by an index swap), deleted ones
gone, and no growth of the service's open files or threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from imagesearch.v1 import search_service_pb2 as pb
from imagesearch.v1 import search_service_pb2_grpc as pb_grpc

from embed_service.app import EmbedApp
from tests.support.imagegen import PALETTE, encode, picture
from tests.support.stack import embed_settings, service_process, struct

CLIENTS = 32
SOAK_S = 25.0
DIM = 64
COLOURS = list(PALETTE)


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def thread_names(pid: int) -> list[str]:
    return sorted(p.read_text().strip() for p in Path(f"/proc/{pid}/task").glob("*/comm"))


def threads(pid: int) -> int:
    found = re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    assert found
    return int(found.group(1))


@dataclass
class Client:
    number: int
    stub: pb_grpc.SearchServiceStub
    rng: random.Random
    stored: dict[str, tuple[np.ndarray | None, dict[str, Any]]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    calls: int = 0
    sequence: int = 0
    cancelled: int = 0
    # Records of cancelled calls not seen yet: applied or not, either is right.
    maybe: dict[str, tuple[np.ndarray, dict[str, Any]]] = field(default_factory=dict)

    def new_id(self, kind: str) -> str:
        self.sequence += 1
        return f"c{self.number}-{kind}{self.sequence}"

    def image(self) -> bytes:
        colour = self.rng.choice(COLOURS)
        shape = self.rng.randrange(6)
        size = (40 + self.rng.randrange(40), 40 + self.rng.randrange(30))
        return encode(picture(colour, shape=shape, size=size), "PNG")

    def metadata(self) -> dict[str, Any]:
        return {"client": float(self.number), "label": self.rng.choice(COLOURS), "n": 1.5}

    def acknowledge(self, rid: str, vector: np.ndarray | None, metadata: dict[str, Any]) -> None:
        self.stored[rid] = (vector, metadata)
        self.deleted.discard(rid)

    async def upsert_vectors(self, *, deadline_s: float | None = None) -> None:
        records, expected = [], {}
        for _ in range(self.rng.randrange(1, 30)):
            rid = self.new_id("v" if deadline_s is None else "x")
            vector = np.asarray([self.rng.gauss(0, 1) for _ in range(DIM)], dtype=np.float32)
            metadata = self.metadata()
            records.append(
                pb.VectorRecord(id=rid, values=vector.tolist(), metadata=struct(metadata))
            )
            expected[rid] = (vector / np.linalg.norm(vector), metadata)
        request = pb.UpsertVectorsRequest(records=records)
        failed: grpc.aio.AioRpcError | None = None
        try:
            reply = await self.stub.UpsertVectors(request, timeout=deadline_s)
        except grpc.aio.AioRpcError as error:
            failed = error
        if failed is not None:
            assert deadline_s is not None, failed
            assert failed.code() == grpc.StatusCode.DEADLINE_EXCEEDED, failed
            self.cancelled += 1
            self.maybe.update(expected)
            await self.settle()
            return
        for result in reply.results:
            assert not result.HasField("error"), result.error
            self.acknowledge(result.id, *expected[result.id])

    async def cancelled_upsert(self) -> None:
        await self.upsert_vectors(deadline_s=self.rng.uniform(0.001, 0.02))

    async def settle(self) -> None:
        """What of the cancelled calls' records is stored now must stay stored."""
        if self.maybe:
            found = await self.stub.Fetch(pb.FetchRequest(ids=list(self.maybe)[:1000]))
            for record in found.records:
                self.acknowledge(record.id, *self.maybe.pop(record.id))

    async def upsert_images(self) -> None:
        metadata = [self.metadata() for _ in range(2)]
        records = [
            pb.ImageRecord(id=self.new_id("i"), image=self.image(), metadata=struct(m))
            for m in metadata
        ]
        reply = await self.stub.UpsertImages(pb.UpsertImagesRequest(records=records))
        for result, md in zip(reply.results, metadata, strict=True):
            assert not result.HasField("error"), result.error
            self.acknowledge(result.id, None, md)

    async def ingest(self) -> None:
        batches = []
        for _ in range(2):
            metadata = [self.metadata() for _ in range(2)]
            records = [
                pb.ImageRecord(id=self.new_id("s"), image=self.image(), metadata=struct(m))
                for m in metadata
            ]
            batches.append((pb.IngestImagesRequest(records=records), metadata))
        replies = self.stub.IngestImages(iter([b for b, _ in batches]))
        answered = 0
        async for reply, (_, metadata) in _zip(replies, batches):
            for result, md in zip(reply.results, metadata, strict=True):
                assert not result.HasField("error"), result.error
                self.acknowledge(result.id, None, md)
            answered += 1
        assert answered == len(batches)

    async def query(self) -> None:
        kind = self.rng.choice(["image", "text", "id", "vector"])
        label_filter = struct({"label": {"$in": self.rng.sample(COLOURS, 2)}})
        if kind == "image":
            request = pb.QueryRequest(image=self.image(), top_k=5)
        elif kind == "text":
            request = pb.QueryRequest(text=f"a {self.rng.choice(COLOURS)} shape", top_k=5)
        elif kind == "id" and self.stored:
            rid = self.rng.choice(list(self.stored))
            request = pb.QueryRequest(id=rid, top_k=5, filter=struct({"client": self.number}))
            reply = await self.stub.Query(request)
            assert reply.matches
            assert reply.matches[0].id == rid
            return
        else:
            values = [self.rng.gauss(0, 1) for _ in range(DIM)]
            request = pb.QueryRequest(vector=pb.QueryVector(values=values), top_k=20)
        if self.rng.random() < 0.5:
            request.filter.CopyFrom(label_filter)
        await self.stub.Query(request)

    async def fetch(self) -> None:
        ids = self.rng.sample(list(self.stored), min(20, len(self.stored)))
        reply = await self.stub.Fetch(pb.FetchRequest(ids=ids))
        assert {r.id for r in reply.records} == set(ids)

    async def delete(self) -> None:
        if not self.stored:
            return
        ids = self.rng.sample(list(self.stored), min(3, len(self.stored)))
        await self.stub.Delete(pb.DeleteRequest(ids=pb.IdList(ids=ids)))
        for rid in ids:
            del self.stored[rid]
            self.deleted.add(rid)

    async def run(self, until: float) -> None:
        operations = [
            self.upsert_vectors, self.upsert_vectors, self.upsert_images, self.ingest,
            self.query, self.query, self.query, self.fetch, self.delete,
            self.cancelled_upsert,
        ]  # fmt: skip
        while time.monotonic() < until:
            operation = self.rng.choice(operations)
            if operation in (self.fetch, self.delete) and not self.stored:
                operation = self.upsert_vectors
            await operation()
            self.calls += 1


async def _zip(replies: Any, batches: list[Any]) -> AsyncIterator[tuple[Any, Any]]:
    i = 0
    async for reply in replies:
        yield reply, batches[i]
        i += 1


async def check_everything_stored(clients: list[Client]) -> None:
    check = clients[0].stub
    for client in clients:
        await client.settle()
        ids = list(client.stored)
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            reply = await check.Fetch(pb.FetchRequest(ids=chunk))
            assert [r.id for r in reply.records] == chunk
            for got in reply.records:
                vector, metadata = client.stored[got.id]
                assert dict(got.metadata) == metadata
                if vector is not None:
                    assert np.allclose(got.values, vector, atol=1e-5)
        gone = await check.Fetch(pb.FetchRequest(ids=list(client.deleted)[:1000]))
        assert not gone.records
    stats = await check.DescribeStats(pb.DescribeStatsRequest())
    assert stats.total_vector_count == sum(len(c.stored) for c in clients)


async def test_32_clients_mixing_every_call_during_index_builds_lose_nothing_and_leak_nothing(
    clip_dir: Path, tmp_path: Path
) -> None:
    # An embed_service of its own, admitting every client at once.
    embed = EmbedApp(embed_settings(clip_dir, max_concurrent_rpcs=4 * CLIENTS))
    await embed.start()
    await embed.load()
    log = tmp_path / "search.log"
    env = {
        "SEARCH_ADDR": "127.0.0.1:0",
        "EMBED_TARGET": embed.address,
        "DATA_DIR": str(tmp_path / "data"),
        "VECTOR_STORE": "local",
        "SEARCH_INDEX_THRESHOLD": "400",
        "SEARCH_MAX_CONCURRENT_RPCS": str(4 * CLIENTS),
    }
    # Started off the loop: the embed_service it waits for is served by this loop.
    with contextlib.ExitStack() as running:
        process, address = await asyncio.to_thread(
            running.enter_context,
            service_process("search_service", env, ready="search_service ready", log=log),
        )
        try:
            channels = [grpc.aio.insecure_channel(address) for _ in range(CLIENTS)]
            clients = [
                Client(n, pb_grpc.SearchServiceStub(ch), random.Random(n))
                for n, ch in enumerate(channels)
            ]
            # Warm up every pool (decode threads, executors, channels) before the baseline.
            await asyncio.gather(*(c.run(time.monotonic() + 1.0) for c in clients))
            before = open_files(process.pid), threads(process.pid)
            names_before = thread_names(process.pid)

            await asyncio.gather(*(c.run(time.monotonic() + SOAK_S) for c in clients))

            await check_everything_stored(clients)
            after = open_files(process.pid), threads(process.pid)
            names_after = thread_names(process.pid)
            for channel in channels:
                await channel.close()
        finally:
            await asyncio.to_thread(running.close)
            await embed.stop(0)
    text = log.read_text()
    assert "HNSW index ready" in text, "no index build ran during the soak"
    assert "Traceback" not in text, text
    assert sum(c.calls for c in clients) > 1000
    assert sum(c.cancelled for c in clients) > 20
    # A build in progress holds a child's pipes and a waiter thread; allow one build's worth.
    assert after[0] <= before[0] + 6, (before, after)
    assert after[1] <= before[1] + 4, (before, after, names_before, names_after)
