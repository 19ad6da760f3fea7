"""Keeps the live shard's float32 vectors resident in memory, without a second copy.

Cold vectors are memory-mapped, and the kernel drops mapped file pages nobody touched
lately: under memory pressure anywhere, and on hosts that reclaim idle memory on their
own (DAMON pageout: this project's 2-core VMs page out whatever went untouched for a
minute). Every query then reads its candidates from disk, several times slower
(docs/local-store.md has the figures). Locking the
pages of each indexed segment's vector file (mlock on a read-only shared mapping) keeps
them in the page cache Qdrant's own mapping reads: the same pages, so no second copy, and
only in the serving process, never in the index builder. Where Qdrant has already mapped
a file for random access (it maps each twice: for random and for sequential reads), that
mapping is the one locked, so the vectors count once in the process's RSS, not once per
mapping; otherwise the file gets a read-only mapping of its own.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import re
import resource
from pathlib import Path

from search_service.stores.local.memory import physical_memory

log = logging.getLogger(__name__)

# What an indexed (non-appendable) segment keeps its float32 vectors in. The appendable
# segment's chunks grow with every write and were just written: they are left alone.
VECTOR_FILES = "segments/*/vector_storage/matrix.dat"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long
]  # fmt: skip
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.munlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FAILED = ctypes.c_void_p(-1).value
# Locked pages cannot be reclaimed: a store larger than this share of the machine's memory
# is left unlocked (as cold) rather than starving everything else, the OOM killer included.
MAX_LOCKED_SHARE = 0.5


class PinnedVectors:
    """The vector files of one shard, mapped read-only and locked (or, where the memory
    lock limit refuses, only read ahead, once)."""

    def __init__(self, most: int | None = None) -> None:
        """`most`: the bytes it may lock (default: MAX_LOCKED_SHARE of physical memory)."""
        self._most = int(physical_memory() * MAX_LOCKED_SHARE) if most is None else most
        # (address, size, ours): ours are unmapped at release, Qdrant's only unlocked.
        self._mappings: list[tuple[int, int, bool]] = []
        self.locked_bytes = 0
        self._warned = False

    def pin(self, shard_dir: Path) -> int:
        """Pins every vector file of `shard_dir`; returns the bytes locked. Call release()
        first when pinning another shard."""
        paths = sorted(shard_dir.glob(VECTOR_FILES))
        total = sum(p.stat().st_size for p in paths if p.exists())
        mapped = random_access_mappings() if paths else {}  # smaps is read once per pin
        if total > self._most:
            self._warn_once(
                "not locking the local store's vectors in memory: %.2f GiB is more than the "
                "%.2f GiB it may lock (by default half of this machine's memory); queries read "
                "them from disk when the kernel evicts them",
                total / 2**30,
                self._most / 2**30,
            )
            for path in paths:
                self._pin_file(path, mapped, lock=False)
            return 0
        for path in paths:
            self._pin_file(path, mapped)
        return self.locked_bytes

    def _pin_file(self, path: Path, mapped: Mappings, *, lock: bool = True) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:  # a segment removed meanwhile: nothing to keep
            log.debug("not pinning %s: %s", path, exc)
            return
        try:
            stat = os.fstat(fd)
            size = stat.st_size
            if size == 0:
                return
            address, length = mapped.get((stat.st_dev, stat.st_ino), (None, 0))
            ours = address is None or length < size
            if ours:
                address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        finally:
            os.close(fd)
        if address is None or address == _MAP_FAILED:
            log.warning("cannot map %s to keep it in memory: %s", path, _errno_text())
            return
        self._mappings.append((address, size, ours))
        # Locking faults every page in, and through Qdrant's random-access mapping (no
        # readahead) a file not cached yet, like a build's fresh copy, would be read 4 KiB
        # at a time, dozens of times slower. Normal advice while locking, then Qdrant's.
        if not ours:
            _libc.madvise(address, size, mmap.MADV_NORMAL)
        if lock and self._lock(address, size):
            self.locked_bytes += size
        else:
            _libc.madvise(address, size, mmap.MADV_WILLNEED)
        if not ours:
            _libc.madvise(address, size, mmap.MADV_RANDOM)

    def _lock(self, address: int, size: int) -> bool:
        if _libc.mlock(address, size) == 0:
            return True
        code = ctypes.get_errno()
        if code in (errno.ENOMEM, errno.EPERM) and _raise_lock_limit():
            if _libc.mlock(address, size) == 0:
                return True
            code = ctypes.get_errno()
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        self._warn_once(
            "cannot lock the local store's vectors in memory (%s; RLIMIT_MEMLOCK %s / %s "
            "bytes): the kernel may evict them and queries then read them from disk. "
            "Raise the limit (ulimit -l unlimited, or Docker's --ulimit memlock=-1), or "
            "set SEARCH_VECTORS_MEMORY=cached",
            os.strerror(code),
            _limit_text(soft),
            _limit_text(hard),
        )
        return False

    def _warn_once(self, message: str, *args: object) -> None:
        """One warning per store, not one per file or per index swap."""
        if not self._warned:
            self._warned = True
            log.warning(message, *args)

    def release(self) -> None:
        """Unlocks every file pinned (unmapping the pin's own mappings; Qdrant's stay as
        Qdrant has them); the pages stay cached until evicted."""
        for address, size, ours in self._mappings:
            if ours:
                _libc.munmap(address, size)
            else:  # Qdrant's own mapping: it unmaps it when it closes the shard
                _libc.munlock(address, size)
        self._mappings.clear()
        self.locked_bytes = 0


# (device, inode) -> (address, length) of a mapping from the file's start.
Mappings = dict[tuple[int, int], tuple[int, int]]
_MAPPING = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+) ", re.MULTILINE
)


def random_access_mappings() -> Mappings:
    """Mappings in this process from a file's start, advised for random reads (VmFlags
    "rr", MADV_RANDOM: how Qdrant maps the vectors a search reads), by file; {} where
    /proc/self/smaps cannot be read."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return {}
    found: Mappings = {}
    headers = list(_MAPPING.finditer(text))
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        start, end, offset, major, minor, inode = header.groups()
        if int(offset, 16) != 0 or inode == "0":
            continue
        block = text[header.end() : following.start() if following else len(text)]
        flags = re.search(r"^VmFlags:(.*)$", block, re.MULTILINE)
        if flags is None or "rr" not in flags.group(1).split():
            continue
        address, length = int(start, 16), int(end, 16) - int(start, 16)
        device = os.makedev(int(major, 16), int(minor, 16))
        found[(device, int(inode))] = (address, length)
    return found


def _raise_lock_limit() -> bool:
    """Raises the soft memory-lock limit to the hard one; True if that changed it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if soft == hard:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))
    except (OSError, ValueError):
        return False
    return True


def _limit_text(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def _errno_text() -> str:
    return os.strerror(ctypes.get_errno())
