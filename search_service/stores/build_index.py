"""`python -m search_service.stores.build_index SHARD_DIR PARENT_PID [DIMENSION VECTORS_MEMORY]`:
builds HNSW for a shard copy.

Run by the local store in a child process, because Qdrant Edge's `optimize()` holds
the GIL for its whole run and would stall the serving process. With DIMENSION and
VECTORS_MEMORY (cold or cached) it opens the copy with `local.build_config`, which
leaves the payload on disk; without, with the config the copy has. Exits 0 once the
optimized shard is flushed to disk.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

import qdrant_edge as qe

PR_SET_PDEATHSIG = 1
# The lowest CPU priority: the build takes only the cycles the service leaves, so on a
# machine both share, queries come first and the build still gets every idle core.
NICENESS = 19


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


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 5):
        print(
            "usage: python -m search_service.stores.build_index SHARD_DIR PARENT_PID "
            "[DIMENSION VECTORS_MEMORY]",
            file=sys.stderr,
        )
        return 2
    lower_priority()
    die_with_parent(int(argv[2]))
    started = time.perf_counter()
    if len(argv) == 5:
        from search_service.stores.local import build_config

        shard = qe.EdgeShard.load(argv[1], build_config(int(argv[3]), argv[4]))
    else:
        shard = qe.EdgeShard.load(argv[1])
    shard.optimize()
    shard.flush()
    info = shard.info()
    shard.close()
    print(
        f"build_index: {info.indexed_vectors_count}/{info.points_count} vectors indexed "
        f"in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
