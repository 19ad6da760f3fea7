"""`make bench-search`: search_service query latency and `imagesearch index` throughput.

Real processes: embed_service (a ViT-B/32-sized CLIP with random weights, 512-d) and
search_service on the local store, measured over gRPC from the Python client.

1. Query-by-id latency (p50/p99) on N stored vectors (default 100k, 100 labels, so a
   label filter keeps ~1%), unfiltered and filtered, once background indexing is done.
2. `imagesearch export` and `imagesearch import` records/s: the N vectors (with their
   label metadata) to a Parquet file, then into a second search_service on a new store.
3. `imagesearch index` images/s on a folder of 640x480 JPEGs, next to embed_service's
   own images/s on the same images (8 concurrent callers, 8 images per request), as a
   ratio measured in the same run.

4. With --ingest (`make bench-search N=1000000`): the N vectors go through the service's
   UpsertVectors instead, while another caller queries by id; it reports the ingest rate,
   query latency during ingest, the time from the last upsert until everything is
   indexed, peak RSS of search_service and its index builder, then step 1 on that store.

    python -m tests.benchmarks.search [--vectors 100000] [--queries 500] [--images 96] [--ingest]
        [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from imagesearch.v1 import embed_service_pb2 as pb
from imagesearch.v1 import embed_service_pb2_grpc as pb_grpc
from imagesearch_client import Example, ImageSearchClient, VectorRecord

from embed_service import server
from embed_service.images import prepare
from embed_service.model import EmbeddingModel
from search_service.domain import ModelInfo, Record
from search_service.stores.local.builder import IDLE_BUILD_MIN, IDLE_BUILD_S
from search_service.stores.local.store import LocalStore
from tests.benchmarks.embed import CACHE, photos
from tests.support.pinecone_standin import PineconeStandIn
from tests.support.tiny_clip import build_clip

T = TypeVar("T")


def start(
    module: str,
    env: dict[str, str],
    log: Path,
    *,
    argv: tuple[str, ...] = (),
    name: str | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts `python -m module *argv`, logging to `log`; returns it and the address its
    "<name> listening on ADDRESS" line gives (name: the module's, unless given)."""
    name = name or module
    # Only what this process logs: an earlier one's "listening on" in the same log is not it.
    offset = log.stat().st_size if log.exists() else 0
    sink = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", module, *argv], env={**os.environ, **env}, stderr=sink,
        stdout=sink,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if found := re.search(rf"{name} listening on (\S+)", text):
            return process, found.group(1)
        if process.poll() is not None:
            raise SystemExit(f"{module} exited:\n{log.read_text()}")
        time.sleep(0.2)
    raise SystemExit(f"{module} did not start:\n{log.read_text()}")


def clustered_unit_vectors(n: int, dimension: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((256, dimension)).astype(np.float32)
    vectors = centres[rng.integers(0, 256, n)] + 0.6 * rng.standard_normal((n, dimension)).astype(
        np.float32
    )
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def with_duplicates(vectors: np.ndarray, share: float = 0.01, seed: int = 2) -> np.ndarray:
    """`share` of the records made near-copies (cosine ~0.99) of the record before them, so
    FindDuplicates has groups to find, as a real photo library has."""
    rng = np.random.default_rng(seed)
    n, dimension = vectors.shape
    copies = rng.choice(np.arange(1, n), size=int(n * share), replace=False)
    noisy = vectors[copies - 1] + 0.004 * rng.standard_normal((len(copies), dimension))
    vectors[copies] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return vectors


def peak_during(pid: int, work: Callable[[], T], field: str = "VmRSS") -> tuple[T, int, int]:
    """What `work` returns, and process `pid`'s `field` (see `memory`) before it and at its
    peak meanwhile."""
    before = memory([pid], field)
    peak = [before]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], memory([pid], field))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return work(), before, peak[0]
    finally:
        stop.set()
        watcher.join()


def scan_duplicates(client: ImageSearchClient) -> tuple[int, int, int]:
    """(groups, exact groups, records taking part) of FindDuplicates at 0.95."""
    groups, exact, total = 0, 0, 0
    for step in client.find_duplicates(min_score=0.95):
        groups += len(step.groups)
        exact += sum(g.exact for g in step.groups)
        total = step.total
    return groups, exact, total


def count_groups(client: ImageSearchClient) -> int:
    return scan_duplicates(client)[0]


def refinements(client: ImageSearchClient, ids: list[str], pid: int) -> None:
    """Several examples, diversity and collapse against a plain query by id in the same run;
    then FindDuplicates over the whole store, with search_service's peak RSS meanwhile."""

    def by_id(top_k: int, **options: Any) -> Callable[[int], object]:
        return lambda k: client.query(id=ids[k], top_k=top_k, **options)

    def by_three(k: int) -> object:
        a, b, c = ids[k], ids[(k + 1) % len(ids)], ids[(k + 2) % len(ids)]
        return client.query(examples=[Example(id=a), Example(id=b, weight=0.5),
                                      Example(id=c, weight=-0.3)], top_k=10)  # fmt: skip

    plain, three = interleaved([by_id(10), by_three], len(ids))
    twelve, varied, folded, tied = interleaved(
        [by_id(12), by_id(12, diversity=0.4), by_id(12, collapse_above=0.95),
         by_id(12, diversity=0.5)],
        len(ids),
    )  # fmt: skip
    p50 = statistics.median
    print(f"query by 3 examples (ids), top 10:    {percentiles(three)}; "
          f"{p50(three) / p50(plain):.2f}x a query by one id ({percentiles(plain)})")  # fmt: skip
    print(
        f"top 12 with diversity 0.4:            {percentiles(varied)}; "
        f"+{p50(varied) - p50(twelve):.2f} ms on plain top 12 ({percentiles(twelve)})"
    )
    print(f"top 12 with collapse_above 0.95:      {percentiles(folded)}; "
          f"+{p50(folded) - p50(twelve):.2f} ms on plain top 12")  # fmt: skip
    # By id at exactly 0.5 the candidates tie (docs/api.md): MMR over the pool's vectors.
    print(f"top 12 with diversity 0.5 (ties):     {percentiles(tied)}; "
          f"+{p50(tied) - p50(twelve):.2f} ms on plain top 12")  # fmt: skip
    started = time.perf_counter()
    # Anonymous memory: what the scan itself holds, apart from the store's mapped files,
    # whose pages the scan touches (and RSS counts) in proportion to the store.
    (groups, exact, total), before, peak = peak_during(
        pid, partial(scan_duplicates, client), "RssAnon"
    )
    print(f"FindDuplicates at 0.95 over {total:,} records: {time.perf_counter() - started:.0f} s, "
          f"{groups:,} groups ({exact:,} exact); search_service anonymous memory "
          f"{before / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB")  # fmt: skip


def duplicates_on_pinecone(embed_addr: str, log: Path, dimension: int) -> None:
    """FindDuplicates through search_service on the Pinecone stand-in, at two store sizes:
    the service's peak RSS should not grow with the store."""
    for size in (1500, 3000):  # the stand-in searches by brute force: small stores
        with PineconeStandIn() as standin:
            env = {"SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed_addr,
                   "VECTOR_STORE": "pinecone", "PINECONE_API_KEY": standin.api_key,
                   "PINECONE_HOST": standin.url, "PINECONE_INDEX": "bench"}  # fmt: skip
            process, address = start("search_service", env, log)
            try:
                vectors = with_duplicates(clustered_unit_vectors(size, dimension, seed=size))
                with ImageSearchClient(address, timeout_s=600) as client:
                    client.wait_ready(300)
                    for i in range(0, size, 1000):
                        chunk = range(i, min(size, i + 1000))
                        client.upsert_vectors([VectorRecord(f"v{j}", vectors[j].tolist())
                                               for j in chunk])  # fmt: skip
                    started = time.perf_counter()
                    groups, before, peak = peak_during(process.pid, partial(count_groups, client))
                print(
                    f"FindDuplicates on the Pinecone stand-in, {size:,} records: "
                    f"{time.perf_counter() - started:.1f} s, {groups} groups; search_service "
                    f"RSS {before / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB"
                )
            finally:
                process.terminate()
                process.wait(60)


async def fill(
    data_dir: Path, model: ModelInfo, vectors: np.ndarray, threshold: int
) -> tuple[int, int, float]:
    """Stores n vectors as the service would, and waits for background indexing."""
    store = LocalStore(data_dir, index_threshold=threshold)
    await store.open()
    await store.bind(model)
    n = len(vectors)
    started = time.perf_counter()
    for i in range(0, n, 1000):
        await store.upsert(
            "",
            [
                Record(f"v{j}", vectors[j], {"label": f"l{j % 100}"})
                for j in range(i, min(n, i + 1000))
            ],
        )
    deadline = time.monotonic() + IDLE_BUILD_S + 900
    while True:  # the tail under the threshold is indexed IDLE_BUILD_S after the last write
        await store.wait_for_index_build()
        indexed, total = store.index_status()
        if total - indexed < IDLE_BUILD_MIN or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    elapsed = time.perf_counter() - started
    await store.close()
    return indexed, total, elapsed


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (the index builder)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def memory(pids: list[int], field: str = "VmRSS", source: str = "status") -> int:
    """Bytes of /proc/PID/`source` `field`, summed over `pids`. VmRSS counts a page once
    per mapping of it (Qdrant maps each vector file twice: for random and for sequential
    reads); Pss (source smaps_rollup) counts every resident page once across mappings and
    processes; RssAnon counts only anonymous memory, not mapped files the page cache holds."""
    total = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/{source}").read_text()
        except OSError:  # a builder that exited meanwhile
            continue
        found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
        total += int(found.group(1)) * 1024 if found else 0
    return total


def metrics(metrics_addr: str, *names: str) -> list[float]:
    """Samples' values from one scrape; a name may carry labels, as in name{kind="images"}."""
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
    values = []
    for name in names:
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
        values.append(float(found.group(1)) if found else float("nan"))
    return values


def metric(metrics_addr: str, name: str) -> float:
    return metrics(metrics_addr, name)[0]


def metrics_address(log: Path, offset: int) -> str:
    """The /metrics address a service logged after `offset` in `log`."""
    with log.open("rb") as f:
        f.seek(offset)
        found = re.search(r"metrics at http://(\S+)/metrics", f.read().decode())
    assert found, "the service logged no metrics address"
    return found.group(1)


# Each query by image by the services' own clocks: search_service's Query handler and
# its call to embed_service, embed_service's handler, its forward pass and its decode.
# (Prometheus writes labels in name order.)
SPLIT = (
    ("search", 'grpc_server_handling_seconds_sum{grpc_method="Query",'
     'grpc_service="imagesearch.v1.SearchService",grpc_type="unary"}'),
    ("search", 'search_embed_call_seconds_sum{method="EmbedImages"}'),
    ("embed", 'grpc_server_handling_seconds_sum{grpc_method="EmbedImages",'
     'grpc_service="imagesearch.v1.EmbedService",grpc_type="unary"}'),
    ("embed", 'embed_forward_seconds_sum{kind="images"}'),
    ("embed", "embed_decode_seconds_sum"),
)  # fmt: skip


def query_by_images(
    search_addr: str, scrape: dict[str, str], images: list[bytes]
) -> list[list[float]]:
    """Per query by image: [client's ms, then each SPLIT series' ms], the series read from
    both services' metrics (`scrape`: "search"/"embed" -> address) outside the timing."""

    def read() -> list[float]:
        """One scrape per service, its values put back in SPLIT's order."""
        values = {side: iter(metrics(address, *(n for s, n in SPLIT if s == side)))
                  for side, address in scrape.items()}  # fmt: skip
        return [next(values[side]) for side, _ in SPLIT]

    rows = []
    with ImageSearchClient(search_addr) as client:
        for data in images[:2]:
            client.query(image=data, top_k=10)
        for data in images * 3:
            before = read()
            t = time.perf_counter()
            client.query(image=data, top_k=10)
            total = (time.perf_counter() - t) * 1000
            after = read()
            rows.append([total, *((a - b) * 1000 for a, b in zip(after, before, strict=True))])
    return rows


def probe(search_addr: str, pid: int, progress: Any, peak: Any, pss: Any, anon: Any,
          stop: Any, results: Any) -> None:  # fmt: skip
    """Every half second: the service tree's RSS, PSS and anonymous memory, and four
    queries by id among those written so far; sends [(written, ms)] when told to stop."""
    rng = np.random.default_rng(5)
    during = []
    with ImageSearchClient(search_addr) as client:
        while not stop.wait(0.5):
            tree = process_tree(pid)  # one walk of /proc for the three readings
            peak.value = max(peak.value, memory(tree))
            pss.value = max(pss.value, memory(tree, "Pss", "smaps_rollup"))
            anon.value = max(anon.value, memory(tree, "RssAnon"))
            written = progress.value
            if written < 1000:
                continue
            for i in rng.integers(0, written, 4):
                t = time.perf_counter()
                client.query(id=f"v{i}", top_k=10)
                during.append((written, (time.perf_counter() - t) * 1000))
    results.put(during)


def ingest(
    search: subprocess.Popen[bytes], search_addr: str, metrics_addr: str, vectors: np.ndarray
) -> None:  # fmt: skip
    """N vectors through UpsertVectors (1,000 per call) while another caller queries by id
    every half second; then waits until everything is indexed. Prints what it saw."""
    n = len(vectors)
    # The prober is a process of its own: in this one it would wait for the GIL behind
    # the upserts' encoding, and time that instead of the service.
    context = multiprocessing.get_context("spawn")  # gRPC does not survive a fork
    progress = context.Value("q", 0)
    peak = context.Value("q", 0)
    pss = context.Value("q", 0)
    anon = context.Value("q", 0)
    stop = context.Event()
    results = context.SimpleQueue()
    prober = context.Process(
        target=probe,
        args=(search_addr, search.pid, progress, peak, pss, anon, stop, results),
        daemon=True,
    )
    prober.start()
    started = time.perf_counter()
    with ImageSearchClient(search_addr) as client:
        for i in range(0, n, 1000):
            batch = [VectorRecord(f"v{j}", vectors[j], {"label": f"l{j % 100}"})
                     for j in range(i, min(n, i + 1000))]  # fmt: skip
            client.upsert_vectors(batch)
            written = progress.value = i + len(batch)
            if written % 100_000 == 0:
                rate = written / (time.perf_counter() - started)
                tail = metric(metrics_addr, "search_index_unindexed_vectors")
                print(f"  {written:>9,} upserted, {rate:,.0f} vectors/s, unindexed {tail:,.0f}, "
                      f"RSS {peak.value / 2**30:.2f} GiB peak so far", flush=True)  # fmt: skip
    ingest_s = time.perf_counter() - started
    last_upsert = time.perf_counter()
    print(f"ingest: {n:,} vectors through UpsertVectors in {ingest_s:.0f} s "
          f"({n / ingest_s:,.0f} vectors/s)")  # fmt: skip
    while True:
        time.sleep(2)
        unindexed = metric(metrics_addr, "search_index_unindexed_vectors")
        building = metric(metrics_addr, "search_index_building")
        if building == 0 and unindexed < IDLE_BUILD_MIN:
            break
    # The gauges refresh every 5 s: this is the moment within 5 s.
    print(
        f"indexed (unindexed tail {unindexed:,.0f} < {IDLE_BUILD_MIN:,}, no build running) "
        f"{time.perf_counter() - last_upsert:.0f} s after the last upsert"
    )
    stop.set()
    during: list[tuple[int, float]] = results.get()
    prober.join()
    peak_rss = peak.value
    ms = [m for _, m in during]
    worst = max(statistics.median([m for w, m in during if lo <= w < lo + n // 10] or [0])
                 for lo in range(0, n, n // 10))  # fmt: skip
    print(
        f"query by id during ingest: {percentiles(ms)}; worst p50 over any tenth of the "
        f"ingest {worst:.2f} ms ({len(ms)} queries)"
    )
    vector_bytes = vectors.nbytes
    print(
        f"peak RSS of search_service + index builder: {peak_rss / 2**30:.2f} GiB "
        f"({(peak_rss - vector_bytes) / 2**30:.2f} GiB beyond the {vector_bytes / 2**30:.2f} "
        f"GiB of float32 vectors); anonymous (not file-backed) {anon.value / 2**30:.2f} GiB"
    )
    # RSS counts a page once per mapping of it (libraries both processes map, a vector
    # page read through both of Qdrant's maps): PSS counts each resident page once.
    print(
        f"peak PSS of search_service + index builder: {pss.value / 2**30:.2f} GiB "
        f"({(pss.value - vector_bytes) / 2**30:.2f} GiB beyond the vectors)"
    )


def latencies(
    client: ImageSearchClient,
    ids: list[str],
    answers: dict[str, list[str]] | None = None,
    top_k: int = 10,
    **query: object,
) -> list[float]:
    out = []
    for record_id in ids:
        t = time.perf_counter()
        found = client.query(id=record_id, top_k=top_k, **query)  # type: ignore[arg-type]
        out.append((time.perf_counter() - t) * 1000)
        if answers is not None:
            answers[record_id] = [m.id for m in found]
    return out


def interleaved(calls: list[Callable[[int], object]], n: int) -> list[list[float]]:
    """Latencies of each of `calls` over arguments 0..n-1, the calls taken in turn for each
    argument: whatever slows the machine for a while slows them all alike. Each argument
    starts at another call, so the first to touch a neighbourhood (cold caches) varies."""
    out: list[list[float]] = [[] for _ in calls]
    for k in range(n):
        for v in range(k, k + len(calls)):
            t = time.perf_counter()
            calls[v % len(calls)](k)
            out[v % len(calls)].append((time.perf_counter() - t) * 1000)
    return out


def recall(answers: dict[str, list[str]], vectors: np.ndarray, label: str | None = None) -> float:
    """recall@10 of `answers` against brute force over `vectors` (ids v0..vN-1)."""
    keep = np.arange(len(vectors))
    if label is not None:
        keep = keep[keep % 100 == int(label[1:])]
    pool = vectors if label is None else vectors[keep]
    asked = list(answers)
    hits = 0
    for start in range(0, len(asked), 64):  # 64 queries per product: bounded memory
        chunk = asked[start : start + 64]
        queries = vectors[[int(record_id[1:]) for record_id in chunk]]
        scores = pool @ queries.T
        top = np.argpartition(-scores, 10, axis=0)[:10]
        for column, record_id in enumerate(chunk):
            best = keep[top[:, column]]
            hits += len({f"v{j}" for j in best} & set(answers[record_id]))
    return hits / (10 * len(answers))


# GetModelInfo's enums back to the names EMBED_BACKEND and EMBED_PRECISION take.
RUNTIMES = {number: name for name, number in server.RUNTIMES.items()}
PRECISIONS = {number: name for name, number in server.PRECISIONS.items()}


def one_image(
    model_dir: Path, info: pb.GetModelInfoResponse, images: list[bytes]
) -> tuple[float, float]:
    """Median ms of one image's bare forward, on the runtime and precision embed_service
    runs, and of its decode and preprocessing, measured in this process."""
    model = EmbeddingModel.load(str(model_dir), backend=RUNTIMES[info.runtime],  # type: ignore[arg-type]
                           precision=PRECISIONS[info.precision])  # type: ignore[arg-type]  # fmt: skip
    decode, forward = [], []
    for data in images * 2:
        t = time.perf_counter()
        pixels = prepare(data, model.preprocessing, max_pixels=10**8)[None]
        decode.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        model.embed_pixels(pixels)
        forward.append((time.perf_counter() - t) * 1000)
    return statistics.median(forward[2:]), statistics.median(decode[2:])


def percentiles(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"p50 {statistics.median(ms):.2f} ms, p99 {q[98]:.2f} ms"


def embed_rate(target: str, images: list[bytes], callers: int = 8, per_request: int = 8) -> float:
    requests = [images[i : i + per_request] for i in range(0, len(images), per_request)]
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.EmbedServiceStub(channel)
        stub.EmbedImages(pb.EmbedImagesRequest(images=images[:per_request]), timeout=300)
        started = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            list(
                pool.map(
                    lambda batch: stub.EmbedImages(
                        pb.EmbedImagesRequest(images=batch), timeout=300
                    ),
                    requests,
                )
            )
        return len(images) / (time.perf_counter() - started)


def cli(target: str, *args: str) -> float:
    """Runs `imagesearch --target TARGET ARGS...` to its end; returns its seconds."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "imagesearch_client.cli", "--target", target, *args],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--index-threshold", type=int, default=10_000)
    parser.add_argument(
        "--ingest", action="store_true",
        help="store the vectors through search_service's UpsertVectors, querying meanwhile, "
        "and report ingest rate, time until indexed and peak RSS (make bench-search N=...)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (stores, services.log)"
    )
    args = parser.parse_args()

    model_dir = build_clip(CACHE / "clip-base", size="base")
    work = Path(tempfile.mkdtemp(prefix="bench-search-"))
    log = work / "services.log"
    embed, embed_addr = start(
        "embed_service",
        {"EMBED_MODEL": str(model_dir), "EMBED_ADDR": "127.0.0.1:0",
         "EMBED_METRICS_ADDR": "127.0.0.1:0"},
        log,
    )  # fmt: skip
    embed_metrics = metrics_address(log, 0)
    search = None
    try:
        with ImageSearchClient(embed_addr) as health:
            health.wait_ready(300)  # any server's grpc.health.v1: SERVING once the model is up
        with grpc.insecure_channel(embed_addr) as channel:
            info = pb_grpc.EmbedServiceStub(channel).GetModelInfo(
                pb.GetModelInfoRequest(), timeout=300, wait_for_ready=True
            )
        model = ModelInfo(info.model_id, info.dimension, info.fingerprint)
        print(f"model: {model.model_id} ({model.dimension}-d); machine: {os.cpu_count()} cores")

        service_env = {"SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed_addr,
                       "DATA_DIR": str(work / "data"), "VECTOR_STORE": "local",
                       "SEARCH_INDEX_THRESHOLD": str(args.index_threshold),
                       "SEARCH_METRICS_ADDR": "127.0.0.1:0"}  # fmt: skip
        # 2 GiB at 1M: made once
        vectors = with_duplicates(clustered_unit_vectors(args.vectors, model.dimension))
        offset = log.stat().st_size
        if args.ingest:
            search, search_addr = start("search_service", service_env, log)
            with ImageSearchClient(search_addr) as client:
                client.wait_ready(300)
            ingest(search, search_addr, metrics_address(log, offset), vectors)
        else:
            indexed, total, elapsed = asyncio.run(
                fill(work / "data", model, vectors, args.index_threshold)
            )
            print(f"stored {total} vectors in {elapsed:.0f} s (HNSW-indexed: {indexed})")
            offset = log.stat().st_size
            search, search_addr = start("search_service", service_env, log)
        search_metrics = metrics_address(log, offset)
        rng = np.random.default_rng(1)
        ids = [f"v{i}" for i in rng.integers(0, args.vectors, args.queries)]
        with ImageSearchClient(search_addr) as client:
            client.wait_ready(300)
            latencies(client, ids[:20])  # warm-up
            plain_answers: dict[str, list[str]] = {}
            filtered_answers: dict[str, list[str]] = {}
            plain = latencies(client, ids, plain_answers)
            filtered = latencies(client, ids, filtered_answers, filter={"label": "l7"})
            hits = client.query(id=ids[0], top_k=10, filter={"label": "l7"})
            assert all(m.metadata["label"] == "l7" for m in hits)
        print(f"query by id, top 10, unfiltered:     {percentiles(plain)}, "
              f"recall@10 {recall(plain_answers, vectors):.4f}")  # fmt: skip
        print(f"query by id, top 10, label filter 1%: {percentiles(filtered)}, "
              f"recall@10 {recall(filtered_answers, vectors, 'l7'):.4f}")  # fmt: skip
        if not args.ingest:
            with ImageSearchClient(search_addr, timeout_s=600) as client:
                refinements(client, ids[:200], search.pid)
            duplicates_on_pinecone(embed_addr, log, model.dimension)
        outside = photos(12, seed=7)  # 640x480 JPEGs that are not in the store
        rows = query_by_images(search_addr, {"search": search_metrics, "embed": embed_metrics},
                               outside)  # fmt: skip
        by_image = [r[0] for r in rows]
        forward_ms, decode_ms = one_image(model_dir, info, outside)
        runs = f"{RUNTIMES[info.runtime]} {PRECISIONS[info.precision]}"
        print(f"query by a 640x480 JPEG, top 10:      {percentiles(by_image)}; one image's bare "
              f"forward ({runs}) {forward_ms:.2f} ms, its decode and preprocessing "
              f"{decode_ms:.2f} ms: p50 = forward + "
              f"{statistics.median(by_image) - forward_ms:.2f} ms")  # fmt: skip

        # A row: client, Query handler, embed call, EmbedImages handler, forward, decode.
        def mid(part: Callable[[list[float]], float]) -> float:
            return float(statistics.median(part(row) for row in rows))

        # By the services' own clocks: immune to the forward pass running at another
        # speed in embed_service than in this process.
        print(f"  per query, medians: forward in embed_service {mid(lambda r: r[4]):.2f} ms, "
              f"decode {mid(lambda r: r[5]):.2f} ms, the rest of embed_service's handler "
              f"{mid(lambda r: r[3] - r[4] - r[5]):.2f} ms, search_service to embed_service "
              f"and back {mid(lambda r: r[2] - r[3]):.2f} ms, search_service's own work (the "
              f"store's search) {mid(lambda r: r[1] - r[2]):.2f} ms, the client to "
              f"search_service and back {mid(lambda r: r[0] - r[1]):.2f} ms")  # fmt: skip

        if args.ingest:
            return
        export_file = work / "export.parquet"
        export_s = cli(search_addr, "export", str(export_file), "--quiet")
        size_mb = export_file.stat().st_size / 1e6
        print(f"imagesearch export: {args.vectors / export_s:,.0f} records/s "
              f"({args.vectors} in {export_s:.1f} s, {size_mb:.0f} MB)")  # fmt: skip
        fresh, fresh_addr = start(
            "search_service",
            {"SEARCH_ADDR": "127.0.0.1:0", "EMBED_TARGET": embed_addr,
             "DATA_DIR": str(work / "imported"), "VECTOR_STORE": "local"},
            log,
        )  # fmt: skip
        try:
            with ImageSearchClient(fresh_addr) as client:
                client.wait_ready(300)
                import_s = cli(fresh_addr, "import", str(export_file), "--quiet")
                assert client.stats().total == args.vectors
            print(f"imagesearch import: {args.vectors / import_s:,.0f} records/s "
                  f"({args.vectors} in {import_s:.1f} s, into a new local store)")  # fmt: skip
        finally:
            fresh.terminate()
            fresh.wait(60)

        folder = work / "photos"
        folder.mkdir()
        images = photos(args.images)
        for n, data in enumerate(images):
            (folder / f"photo-{n:04d}.jpg").write_bytes(data)
        service_rate = embed_rate(embed_addr, images)
        index_rate = args.images / cli(
            search_addr, "index", str(folder), "--quiet", "--namespace", "photos"
        )
        print(f"embed_service EmbedImages: {service_rate:.2f} images/s (8 callers x 8 images)")
        print(
            f"imagesearch index:         {index_rate:.2f} images/s "
            f"({index_rate / service_rate:.2f}x of embed_service)"
        )
    finally:
        for process in (search, embed):
            if process is not None:
                process.terminate()
                process.wait(60)
        if args.keep:
            print(f"kept {work} (stores and services.log)")
        else:  # the stores are 0.3 GB at 100k, 2.8 GB at 1M
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
