"""Builds HNSW for a shard copy:
`python -m search_service.stores.local.build_child SHARD_DIR PARENT_PID [DIMENSION MEMORY]`.

Run by the local store in a child process, because Qdrant Edge's `optimize()` holds
the GIL for its whole run and would stall the serving process. With DIMENSION and
VECTORS_MEMORY (cold or cached) it opens the copy with `shard_config.build_config`, which
leaves the payload on disk; without, with the config the copy has. Exits 0 once the
optimized shard is flushed to disk and read into the page cache.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import qdrant_edge as qe

from search_service.stores.local.memory import physical_memory
from search_service.stores.local.shard_config import build_config

PR_SET_PDEATHSIG = 1
# The lowest CPU priority: the build takes only the cycles the service leaves, so on a
# machine both share, queries come first and the build still gets every idle core.
NICENESS = 19
# The copy is read ahead only while it is at most this share of the machine's memory:
# past that, reading it would evict more than it saves.
READ_AHEAD_SHARE = 0.5


def lower_priority() -> None:
    """Before any work, so every thread Qdrant starts for the build inherits it."""
    if hasattr(os, "nice"):  # not on Windows
        os.nice(max(0, NICENESS - os.nice(0)))


def die_with_parent(parent: int) -> None:
    """A build outliving a killed store would race the store's cleanup at its restart."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above took effect
        sys.exit(1)


def read_ahead(directory: Path, most: int) -> int:
    """Reads every file under `directory` into the page cache, start to end, unless they
    come to more than `most` bytes; returns the bytes read.

    Most of a built copy is not cached: the kernel copied the shard, and the build rewrites
    only the segments it merges. The service then loads it holding the GIL (every query
    waits) and pins its vectors holding the store's write lock (every writer waits). At
    300k vectors on the AMX Xeon (a script, a copy just made): load 0.62-0.72 s uncached,
    0.48-0.51 s cached; pinning 0.23-0.28 s against 0.02 s. Here, in the builder, the
    reading holds neither.

    sendfile to /dev/null fills the page cache without copying a byte to this process: at
    niceness 19 beside two busy cores, a 300k copy (0.9 GB) took 7 s, where read() into a
    buffer took 57-63 s, and POSIX_FADV_WILLNEED brought in only 18 % of it.
    """
    paths = [path for path in directory.rglob("*") if path.is_file()]
    if sum(path.stat().st_size for path in paths) > most:
        return 0
    done = 0
    with open(os.devnull, "wb") as sink:
        for path in paths:
            with path.open("rb") as source:
                size, offset = os.fstat(source.fileno()).st_size, 0
                while offset < size:
                    sent = os.sendfile(sink.fileno(), source.fileno(), offset, size - offset)
                    if not sent:  # the file shrank meanwhile
                        break
                    offset += sent
                done += offset
    return done


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 5):
        print(
            "usage: python -m search_service.stores.local.build_child SHARD_DIR PARENT_PID "
            "[DIMENSION VECTORS_MEMORY]",
            file=sys.stderr,
        )
        return 2
    lower_priority()
    die_with_parent(int(argv[2]))
    started = time.perf_counter()
    if len(argv) == 5:
        shard = qe.EdgeShard.load(argv[1], build_config(int(argv[3]), argv[4]))
    else:
        shard = qe.EdgeShard.load(argv[1])
    shard.optimize()
    shard.flush()
    info = shard.info()
    shard.close()
    built = time.perf_counter()
    try:
        read = read_ahead(Path(argv[1]), int(physical_memory() * READ_AHEAD_SHARE))
    except OSError as exc:  # only saves time: the service reads what it needs regardless
        print(f"build_child: the copy was not read ahead: {exc}", file=sys.stderr)
        read = 0
    print(
        f"build_child: {info.indexed_vectors_count}/{info.points_count} vectors indexed "
        f"in {built - started:.1f} s; {read / 2**30:.2f} GiB read ahead in "
        f"{time.perf_counter() - built:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
