"""The lock file that keeps a second process off an open local store."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from search_service.errors import StoreMisconfigured

LOCK_FILE = "lock"


class RootLock:
    """An exclusive flock on `root/lock`, with the holder's pid in it: a second service on
    the same DATA_DIR is told who has it, where Qdrant would only fail to open its WAL."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._fd: int | None = None

    def acquire(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise StoreMisconfigured(
                f"the local store in {self._root} is in use by another process"
                f"{f' (pid {holder})' if holder.isdigit() else ''}: stop it first, or point "
                "DATA_DIR at another directory. Nothing is wrong with the store itself"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor lets the flock go
            self._fd = None
