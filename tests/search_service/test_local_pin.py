"""SEARCH_VECTORS_MEMORY=pinned: the live shard's vector files are locked in memory by the
service (the kernel's own count, VmLck, says so), one shard at a time, and a refused lock
leaves a store that serves as cold does."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from search_service.domain import ModelInfo, Record
from search_service.stores.local.pin import VECTOR_FILES, PinnedVectors
from search_service.stores.local.store import LocalStore
from tests.support.stores import unit

MODEL = ModelInfo("test/model", 512, "p1nned")


def locked_kib() -> int:
    found = re.search(r"VmLck:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert found, "the kernel reports no VmLck"
    return int(found.group(1))


def vector_file_kib(shard_dir: Path) -> int:
    """What mlock locks for the shard's vector files: whole pages."""
    return sum(-(-p.stat().st_size // 4096) * 4 for p in shard_dir.glob(VECTOR_FILES))


async def new_store(data_dir: Path) -> LocalStore:
    """A new store whose every 200 unindexed vectors start a background build."""
    store = LocalStore(data_dir, index_threshold=200)
    await store.open()
    await store.bind(MODEL)
    return store


async def fill(store: LocalStore, vectors: np.ndarray, start: int = 0) -> None:
    for i in range(0, len(vectors), 100):
        await store.upsert("", [Record(f"r{start + j}", vectors[j], {}) for j in range(i, i + 100)])
    await store.wait_for_index_build()


async def test_the_live_shards_vectors_are_locked_one_shard_at_a_time(tmp_path: Path) -> None:
    before = locked_kib()
    store = await new_store(tmp_path)
    assert locked_kib() == before, "a new store has no built segment to lock"

    vectors = unit(np.random.default_rng(0), 600, MODEL.dimension)
    await fill(store, vectors[:300])
    first = tmp_path / "local" / store._shard_name
    indexed = store.index_status()[0]
    assert indexed >= 200
    assert vector_file_kib(first) >= indexed * 2  # 2 KiB a vector
    assert locked_kib() - before == vector_file_kib(first)

    # The next build swaps in a new shard: its files are locked, the old one's let go.
    await fill(store, vectors[300:], start=300)
    second = tmp_path / "local" / store._shard_name
    assert second != first
    assert not first.exists()
    indexed = store.index_status()[0]
    assert indexed >= 500
    assert locked_kib() - before == vector_file_kib(second) >= indexed * 2
    (hit,) = await store.query(
        "", vectors[450], top_k=1, condition=None, include_values=True, include_metadata=False
    )
    assert hit.id == "r450"
    assert hit.values is not None
    assert np.allclose(hit.values, vectors[450], atol=1e-6)
    await store.close()
    assert locked_kib() == before

    reopened = LocalStore(tmp_path)
    await reopened.open()
    assert locked_kib() - before == vector_file_kib(second)
    await reopened.close()
    assert locked_kib() == before

    cold = LocalStore(tmp_path, vectors_memory="cold")
    await cold.open()
    assert locked_kib() == before
    await cold.close()


async def test_vectors_over_the_lock_budget_are_left_unlocked_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Locked pages cannot be reclaimed: past its budget (half the machine's memory by
    default) a store is left as cold rather than starving the machine."""
    store = await new_store(tmp_path)
    await fill(store, unit(np.random.default_rng(2), 300, MODEL.dimension))
    shard_dir = tmp_path / "local" / store._shard_name
    size = vector_file_kib(shard_dir) * 1024
    await store.close()

    before = locked_kib()
    over = PinnedVectors(most=size // 2)
    assert over.pin(shard_dir) == 0
    assert locked_kib() == before
    assert any("not locking" in r.getMessage() for r in caplog.records)
    over.release()
    within = PinnedVectors(most=size)
    assert within.pin(shard_dir) > 0
    assert locked_kib() - before == vector_file_kib(shard_dir)
    within.release()
    assert locked_kib() == before


def vector_mappings(shard_dir: Path) -> tuple[int, int, list[set[str]]]:
    """Resident KiB summed over every mapping of the shard's vector files in this
    process (what its RSS counts), how many mappings there are, and the VmFlags of the
    locked ones."""
    files = {str(p) for p in shard_dir.glob(VECTOR_FILES)}
    text = Path("/proc/self/smaps").read_text()
    resident = count = 0
    locked = []
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        header, _, rest = block.partition("\n")
        if header.split(maxsplit=5)[-1] in files:
            count += 1
            found = re.search(r"^Rss:\s+(\d+) kB", rest, re.MULTILINE)
            resident += int(found.group(1)) if found else 0
            flags = re.search(r"^VmFlags:(.*)$", rest, re.MULTILINE)
            if flags and "lo" in flags.group(1).split():
                locked.append(set(flags.group(1).split()))
    return resident, count, locked


async def test_locked_vectors_count_once_in_the_rss(tmp_path: Path) -> None:
    """The lock is taken on Qdrant's own random-access mapping of the vectors where it
    has one, so RSS counts them once, queries and all; a shard Qdrant has not opened is
    mapped by the pin itself, and that mapping goes at release."""
    store = await new_store(tmp_path)
    vectors = unit(np.random.default_rng(3), 300, MODEL.dimension)
    await fill(store, vectors)
    shard_dir = tmp_path / "local" / store._shard_name
    size_kib = vector_file_kib(shard_dir)
    assert size_kib >= 400
    resident, mappings, locked = vector_mappings(shard_dir)
    assert resident == size_kib
    # Qdrant's random-access mapping, its advice (rr: MADV_RANDOM) kept after locking.
    assert locked
    assert all("rr" in flags for flags in locked)
    for i in range(0, 300, 10):
        (hit,) = await store.query(
            "", vectors[i], top_k=1, condition=None, include_values=True, include_metadata=False
        )
        assert hit.id == f"r{i}"
    resident, still, _ = vector_mappings(shard_dir)
    assert still == mappings
    # Not twice: beyond the locked pages, only what Qdrant reads through its sequential
    # mapping of each file (here one fault, which the kernel maps as 64 KiB around it).
    files = len(list(shard_dir.glob(VECTOR_FILES)))
    assert size_kib <= resident <= size_kib + 256 * files
    await store.close()
    assert vector_mappings(shard_dir)[:2] == (0, 0)

    before = locked_kib()
    pins = PinnedVectors()
    assert pins.pin(shard_dir) == sum(p.stat().st_size for p in shard_dir.glob(VECTOR_FILES))
    assert locked_kib() - before == size_kib
    assert vector_mappings(shard_dir)[:2] == (size_kib, files)
    pins.release()
    assert vector_mappings(shard_dir)[:2] == (0, 0)
    assert locked_kib() == before


REFUSED = """
import asyncio, logging, re, sys
from pathlib import Path
import numpy as np
from search_service.stores.local.store import LocalStore

logging.basicConfig(level=logging.WARNING, format="%(message)s")

async def main() -> None:
    store = LocalStore(Path(sys.argv[1]))
    await store.open()
    lock = re.search(r"VmLck:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)
    query = np.asarray([float(x) for x in sys.argv[2].split(",")], dtype=np.float32)
    (hit,) = await store.query(
        "", query, top_k=1, condition=None, include_values=False, include_metadata=False
    )
    print(f"locked {lock} kB; nearest {hit.id}")
    await store.close()

asyncio.run(main())
"""


@pytest.mark.skipif(not Path("/usr/bin/setpriv").exists(), reason="needs util-linux setpriv")
async def test_a_refused_lock_is_logged_once_and_the_store_serves_unlocked(
    tmp_path: Path,
) -> None:
    store = await new_store(tmp_path)
    vectors = unit(np.random.default_rng(1), 300, MODEL.dimension)
    await fill(store, vectors)
    await store.close()

    # No CAP_IPC_LOCK (which root has) and a lock limit of 0: mlock is refused.
    query = ",".join(f"{x:.9g}" for x in vectors[123])
    run = await asyncio.to_thread(
        subprocess.run,
        ["setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "prlimit",
         "--memlock=0:0", sys.executable, "-c", textwrap.dedent(REFUSED), str(tmp_path), query],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "locked 0 kB; nearest r123" in run.stdout
    warnings = [line for line in run.stderr.splitlines() if "cannot lock" in line]
    assert len(warnings) == 1, run.stderr
    assert "RLIMIT_MEMLOCK 0 / 0" in warnings[0]
    assert "SEARCH_VECTORS_MEMORY=cached" in warnings[0]
