"""IndexBuilder on its own: a real Qdrant Edge shard and a minimal owner in place of
LocalStore, and the real child process (or one that fails or hangs)."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import mmap
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import qdrant_edge as qe

from search_service.stores.local import sparse_copy
from search_service.stores.local.build_child import read_ahead
from search_service.stores.local.builder import BUILDER, IndexBuilder
from search_service.stores.local.shard_config import shard_config
from search_service.stores.local.sparse_copy import CopyStopped, copy_tree

DIMENSION = 16
PAGE = os.sysconf("SC_PAGE_SIZE")


def shards(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def appears(path: Path, timeout_s: float = 30.0) -> None:
    """Returns once `path` exists (the builder has copied the shard: the child runs)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


class Owner:
    """Holds one shard as LocalStore does; `meta` stands for what store.json names."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.write_lock = asyncio.Lock()
        self.shard_name = "shard-000001"
        self.shard: qe.EdgeShard | None = qe.EdgeShard.create(
            str(root / self.shard_name), shard_config(DIMENSION, qe.Memory.Cold)
        )
        self.meta = self.shard_name
        self.installed: list[str] = []

    def named_in_meta(self) -> str | None:
        return self.meta

    async def install(self, name: str, shard: qe.EdgeShard) -> qe.EdgeShard | None:
        assert self.write_lock.locked(), "install runs under the write lock"
        old = self.shard
        self.meta, self.shard, self.shard_name = name, shard, name
        self.installed.append(name)
        return old

    async def retire(self, name: str, shard: qe.EdgeShard | None) -> None:
        assert not self.write_lock.locked(), "writers need not wait for the old shard"
        assert name != self.shard_name
        if shard is not None:
            shard.close()
        shutil.rmtree(self.root / name)

    def write(
        self, builder: IndexBuilder, count: int, seed: int, *, first: int | None = None
    ) -> None:
        """Upserts `count` points: new ids, or ids `first`.. again when given."""
        rng = np.random.default_rng(seed)
        ids = (
            [str(uuid.UUID(int=first + i + 1)) for i in range(count)]
            if first is not None
            else [str(uuid.uuid4()) for _ in range(count)]
        )
        op = qe.UpdateOperation.upsert_points(
            [
                qe.Point(point, rng.normal(size=DIMENSION).tolist(), {"n": i})
                for i, point in enumerate(ids)
            ]
        )
        assert self.shard is not None
        self.shard.update(op)
        builder.record(op, upserted=count)


async def test_a_build_indexes_a_copy_replays_the_writes_made_meanwhile_and_swaps(
    tmp_path: Path,
) -> None:
    owner = Owner(tmp_path)
    builds: list[bool] = []
    builder = IndexBuilder(owner, threshold=200, on_build=lambda ok, _: builds.append(ok))
    owner.write(builder, 150, seed=0)
    builder.maybe_start()
    assert not builder.running, "150 unindexed points are under the threshold"
    owner.write(builder, 150, seed=1)
    builder.maybe_start()
    assert builder.running
    owner.write(builder, 40, seed=2)  # while the child builds: kept for the replay
    await builder.wait()
    assert builds == [True]
    assert owner.installed == ["shard-000002"]
    assert not (tmp_path / "shard-000001").exists()
    assert owner.shard is not None
    info = owner.shard.info()
    assert info.points_count == 340
    assert info.indexed_vectors_count >= 300


async def test_a_failed_child_keeps_the_live_shard_removes_its_copy_and_does_not_loop(
    tmp_path: Path,
) -> None:
    owner = Owner(tmp_path)
    builds: list[bool] = []
    failing = (sys.executable, "-c", "import sys; sys.exit(3)")
    builder = IndexBuilder(owner, threshold=100, on_build=lambda ok, _: builds.append(ok),
                           command=failing)  # fmt: skip
    owner.write(builder, 120, seed=0)
    builder.maybe_start()
    await builder.wait()
    assert builds == [False]
    assert owner.installed == []
    assert owner.shard_name == "shard-000001"
    assert shards(tmp_path) == ["shard-000001"]
    builder.maybe_start()
    assert not builder.running, "no retry until another threshold's worth of writes"
    owner.write(builder, 100, seed=1)
    builder.maybe_start()
    assert builder.running
    await builder.wait()
    assert builds == [False, False]


async def test_stop_kills_a_running_child_and_leaves_only_the_live_shard(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    hanging = (sys.executable, "-c", "import time; time.sleep(120)")
    builder = IndexBuilder(owner, threshold=10, command=hanging)
    owner.write(builder, 20, seed=0)
    builder.maybe_start()
    await asyncio.to_thread(appears, tmp_path / "shard-000002")
    await asyncio.wait_for(builder.stop(), 10)
    assert not builder.running
    assert shards(tmp_path) == ["shard-000001"]
    owner.write(builder, 20, seed=1)
    builder.maybe_start()
    assert not builder.running, "a stopped builder starts nothing"


async def test_overwriting_indexed_points_starts_a_build(tmp_path: Path) -> None:
    """Qdrant counts an overwritten point as indexed still: the builder counts upserts."""
    owner = Owner(tmp_path)
    builder = IndexBuilder(owner, threshold=200)
    owner.write(builder, 300, seed=0, first=0)
    builder.maybe_start()
    await builder.wait()
    assert owner.shard is not None
    info = owner.shard.info()
    assert info.points_count - info.indexed_vectors_count < 200, "Qdrant sees no gap"
    owner.write(builder, 300, seed=1, first=0)  # the same 300 ids, new vectors
    assert owner.shard.info().points_count == 300
    builder.maybe_start()
    assert builder.running
    await builder.wait()
    assert owner.installed == ["shard-000002", "shard-000003"]


async def test_upserts_not_yet_indexed_are_remembered_across_a_restart(tmp_path: Path) -> None:
    from search_service.domain import ModelInfo, Record
    from search_service.stores.local.store import LocalStore

    model = ModelInfo("tests/tiny", DIMENSION, "f" * 32)

    def records(seed: int, count: int = 150) -> list[Record]:
        vectors = np.random.default_rng(seed).normal(size=(count, DIMENSION)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return [Record(f"r{i}", vectors[i]) for i in range(count)]

    store = LocalStore(tmp_path, index_threshold=200)
    await store.open()
    await store.bind(model)
    await store.upsert("", records(0))
    await store.upsert("", records(1))  # 300 upserts of 150 ids: a build
    assert store.building
    await store.wait_for_index_build()
    await store.upsert("", records(2))  # 150 overwrites: under the threshold
    assert not store.building
    await store.close()
    store = LocalStore(tmp_path, index_threshold=200)
    await store.open()
    await store.upsert("", records(3, count=60))  # 150 remembered + 60: a build
    assert store.building
    await store.wait_for_index_build()
    await store.close()


@pytest.mark.parametrize("in_kernel", [True, False], ids=["copy_file_range", "by hand"])
def test_copies_keep_sparse_files_sparse_and_every_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_kernel: bool
) -> None:
    if not in_kernel:  # a file system that refuses copy_file_range, as across devices

        def refused(*_: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refused, raising=False)
    source = tmp_path / "source"
    source.mkdir()
    with open(source / "holes", "wb") as f:
        f.seek(8 << 20)
        f.write(b"middle")
        f.seek(32 << 20)
        f.write(b"end")
    (source / "dense").write_bytes(bytes(range(256)) * 5000)
    copy_tree(source, tmp_path / "target")
    for name in ("holes", "dense"):
        assert (tmp_path / "target" / name).read_bytes() == (source / name).read_bytes()
    copied = (tmp_path / "target" / "holes").stat()
    assert copied.st_size == (32 << 20) + 3
    assert copied.st_blocks * 512 < 1 << 20, "the holes were filled in"


def test_a_stopped_copy_ends_before_its_next_file(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("a", "b", "c"):
        (source / name).write_bytes(name.encode() * 1000)
    copied: list[str] = []
    stop = threading.Event()
    copy_sparse = sparse_copy.copy_sparse

    def copy_then_stop(source_file: str, target_file: str) -> None:
        copied.append(Path(source_file).name)
        copy_sparse(source_file, target_file)
        stop.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sparse_copy, "copy_sparse", copy_then_stop)
        with pytest.raises(CopyStopped):
            copy_tree(source, tmp_path / "target", stop)
    assert len(copied) == 1
    assert [p.name for p in (tmp_path / "target").iterdir()] == copied


def whole_pages(size: int) -> int:
    return -(-size // PAGE) * PAGE


def cached_bytes_of(path: Path) -> int:
    """Bytes of a file in the page cache, whole pages (mincore on a copy-on-write mapping,
    which faults nothing in and writes nothing)."""
    size = path.stat().st_size
    if not size:
        return 0
    mincore = ctypes.CDLL(None, use_errno=True).mincore
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    flags = ctypes.create_string_buffer(-(-size // PAGE))
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        start = ctypes.c_char.from_buffer(m)
        code = mincore(ctypes.addressof(start), size, flags)
        del start  # the mapping cannot close while a ctypes object points into it
    assert code == 0, os.strerror(ctypes.get_errno())
    return sum(byte & 1 for byte in flags.raw) * PAGE


def cached_bytes(directory: Path) -> int:
    return sum(cached_bytes_of(p) for p in directory.rglob("*") if p.is_file())


def evict(directory: Path) -> int:
    """Drops the files under `directory` from the page cache; returns their size in whole
    pages."""
    total = 0
    for path in (p for p in directory.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        total += whole_pages(os.fstat(fd).st_size)
        os.close(fd)
    return total


def test_read_ahead_brings_a_directory_into_the_page_cache_within_its_budget(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(5)
    for name, size in [("a/matrix.dat", 3 << 20), ("b/c/links.bin", 1 << 20), ("empty", 0)]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(rng.bytes(size))
    pages = evict(tmp_path)
    assert cached_bytes(tmp_path) < pages // 4, "the kernel kept the evicted files cached"
    assert read_ahead(tmp_path, most=(4 << 20) - 1) == 0, "over its budget: nothing read"
    assert cached_bytes(tmp_path) < pages // 4
    assert read_ahead(tmp_path, most=4 << 20) == 4 << 20
    assert cached_bytes(tmp_path) == pages


async def test_the_builder_leaves_its_whole_copy_in_the_page_cache(tmp_path: Path) -> None:
    """The service loads and pins the built copy next, holding the GIL and the write lock:
    none of it, not even the indexed segment this build left as it was, may have to come
    from disk then."""
    owner = Owner(tmp_path)
    builder = IndexBuilder(owner, threshold=200)
    owner.write(builder, 300, seed=0)
    builder.maybe_start()
    await builder.wait()
    owner.write(builder, 300, seed=1)
    assert owner.shard is not None
    owner.shard.flush()
    copy = tmp_path / "copy"
    copy_tree(tmp_path / owner.shard_name, copy)
    pages = evict(copy)
    assert cached_bytes(copy) < pages // 4
    child = await asyncio.create_subprocess_exec(
        *BUILDER, str(copy), str(os.getpid()), stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await child.communicate()
    assert child.returncode == 0, stderr.decode()
    assert b"GiB read ahead" in stderr
    cached = {p: cached_bytes_of(p) for p in copy.rglob("*") if p.is_file()}
    uncached = {
        str(p.relative_to(copy)): (done, p.stat().st_size)
        for p, done in cached.items()
        if done != whole_pages(p.stat().st_size)
    }
    assert not uncached, (uncached, stderr.decode())


# The real builder, held back until a file named `gate` appears beside the shard copy.
GATED = (
    sys.executable,
    "-c",
    "import pathlib, sys, time\n"
    "from search_service.stores.local import build_child\n"
    "gate = pathlib.Path(sys.argv[1]).parent / 'gate'\n"
    "while not gate.exists(): time.sleep(0.01)\n"
    "sys.exit(build_child.main(['build_child', *sys.argv[1:]]))",
)


async def test_writers_wait_for_a_running_build_while_the_unindexed_tail_is_at_its_bound(
    tmp_path: Path,
) -> None:
    owner = Owner(tmp_path)
    builder = IndexBuilder(owner, threshold=100, command=GATED)
    owner.write(builder, 150, seed=0)
    assert await builder.room(100) == 0.0, "no build runs: nothing to wait for"
    builder.maybe_start()
    assert builder.running
    assert await builder.room(0) == 0.0, "0 is no bound"
    assert await builder.room(151) == 0.0, "150 unindexed is under a bound of 151"
    waiting = asyncio.create_task(builder.room(150))
    done, _ = await asyncio.wait([waiting], timeout=0.5)
    assert not done, "150 unindexed at a bound of 150: the writer waits for the build"
    (tmp_path / "gate").touch()
    waited = await asyncio.wait_for(waiting, 60)
    assert waited > 0.4
    assert not builder.running
    assert owner.shard is not None
    info = owner.shard.info()
    assert info.points_count - info.indexed_vectors_count < 100
    assert owner.installed == ["shard-000002"]


async def test_a_stopped_build_releases_its_waiting_writers(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    builder = IndexBuilder(owner, threshold=10, command=GATED)
    owner.write(builder, 20, seed=0)
    builder.maybe_start()
    waiting = asyncio.create_task(builder.room(10))
    await asyncio.to_thread(appears, tmp_path / "shard-000002")
    await asyncio.wait_for(builder.stop(), 10)
    assert await asyncio.wait_for(waiting, 10) > 0, "released, not cancelled"
    assert shards(tmp_path) == ["shard-000001"]


def test_the_builder_lowers_its_cpu_priority_before_it_builds(tmp_path: Path) -> None:
    """Queries come first: the build child runs at niceness 19 from its start, so every
    thread Qdrant starts for it inherits that and takes only the CPU the service leaves."""
    owner = Owner(tmp_path)
    builder = IndexBuilder(owner, threshold=10)
    owner.write(builder, 50, seed=0)
    assert owner.shard is not None
    owner.shard.flush()
    owner.shard.close()
    probe = (
        "import os, sys\n"
        "from search_service.stores.local import build_child\n"
        "before = os.nice(0)\n"
        "code = build_child.main(['build_child', sys.argv[1], str(os.getppid())])\n"
        "print(before, code, os.nice(0))"
    )
    shard = str(tmp_path / owner.shard_name)
    done = subprocess.run(
        [sys.executable, "-c", probe, shard], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    before, code, after = (int(x) for x in done.stdout.split())
    assert (code, after) == (0, 19), f"niceness {before} before the build"
    assert "50/50 vectors indexed" in done.stderr


async def test_a_tail_under_the_threshold_is_indexed_once_writes_stop(tmp_path: Path) -> None:
    owner = Owner(tmp_path)
    builder = IndexBuilder(owner, threshold=10_000, idle_s=0.3, idle_minimum=100)
    owner.write(builder, 150, seed=0)
    builder.maybe_start()
    assert not builder.running, "150 unindexed is under the threshold"
    for seed in (1, 2):  # each write restarts the wait for quiet
        await asyncio.sleep(0.2)
        owner.write(builder, 1, seed=seed)
        builder.maybe_start()
        assert not builder.running
    deadline = time.monotonic() + 60
    while not owner.installed:
        assert time.monotonic() < deadline, "the idle tail was never indexed"
        await asyncio.sleep(0.05)
    await builder.wait()
    assert owner.shard is not None
    info = owner.shard.info()
    assert (info.indexed_vectors_count, info.points_count) == (152, 152)

    small = Owner(tmp_path / "small")
    quiet = IndexBuilder(small, threshold=10_000, idle_s=0.1, idle_minimum=100)
    small.write(quiet, 99, seed=3)
    quiet.maybe_start()
    await asyncio.sleep(0.5)
    assert not quiet.running, "99 is under the idle minimum"
    assert small.installed == []
    await builder.stop()
    await quiet.stop()


# The real builder, then a copy of the config it left on the shard it built.
RECORDING = (
    sys.executable,
    "-c",
    "import pathlib, shutil, sys\n"
    "from search_service.stores.local import build_child\n"
    "code = build_child.main(['build_child', *sys.argv[1:]])\n"
    "shard = pathlib.Path(sys.argv[1])\n"
    "shutil.copy(shard / 'edge_config.json', shard.parent / 'built_config.json')\n"
    "sys.exit(code)",
)


async def test_the_builder_leaves_payloads_on_disk_and_the_swap_serves_them_cached(
    tmp_path: Path,
) -> None:
    owner = Owner(tmp_path)
    builder = IndexBuilder(
        owner,
        threshold=100,
        command=RECORDING,
        child_args=lambda: [str(DIMENSION), "cold"],
        serving_config=lambda: shard_config(DIMENSION, qe.Memory.Cold),
    )
    owner.write(builder, 150, seed=0)
    builder.maybe_start()
    await builder.wait()
    built = json.loads((tmp_path / "built_config.json").read_text())
    assert built["payload_memory"] == "cold"
    assert built["vectors"][""]["memory"] == "cold"
    assert owner.installed == ["shard-000002"]
    served = json.loads((tmp_path / "shard-000002" / "edge_config.json").read_text())
    assert served["payload_memory"] == "cached"
    assert owner.shard is not None
    info = owner.shard.info()
    assert info.points_count == 150
    assert info.indexed_vectors_count >= 150
