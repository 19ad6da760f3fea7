"""Background HNSW builds of the local store: copy, build in a child, replay, swap.

Qdrant Edge's `optimize()` holds the GIL for its whole run (minutes at 100k vectors), so
it never runs in the serving process. When enough unindexed points pile up, the live
shard is flushed and copied (writes wait for the copy, queries do not), a child process
(`build_child.py`) optimizes the copy, and every write made meanwhile is applied to the
live shard and kept in a replay log. When the child is done (it reads the copy into the
page cache last), the copy is loaded, the log replayed into it and the owner installs it
(store.json names it, atomically), all while writes wait; then the old shard is closed
once its last reader is gone and removed, while writes go on. Once store.json names the
new shard nothing may delete it: a stop or an error after that point only leaves the old
one behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import qdrant_edge as qe

from search_service.stores.local.sparse_copy import CopyStopped, copy_tree
from search_service.stores.local.tasks import uncancellable

log = logging.getLogger(__name__)

BUILDER = (sys.executable, "-m", "search_service.stores.local.build_child")
# When writes stop, the tail they leave under the threshold would be scanned exactly by
# every query for good: once no write has come for IDLE_BUILD_S, a build indexes a tail
# of IDLE_BUILD_MIN or more.
IDLE_BUILD_S = 30.0
IDLE_BUILD_MIN = 1000


class ShardOwner(Protocol):
    """What the builder needs from the store whose shard it rebuilds."""

    @property
    def root(self) -> Path: ...

    @property
    def write_lock(self) -> asyncio.Lock: ...

    @property
    def shard(self) -> qe.EdgeShard | None:
        """The live shard (None once closed)."""
        ...

    @property
    def shard_name(self) -> str: ...

    def named_in_meta(self) -> str | None:
        """The shard store.json names on disk now."""
        ...

    async def install(self, name: str, shard: qe.EdgeShard) -> qe.EdgeShard | None:
        """Makes `shard` (the directory `name`) current and returns the shard it replaces;
        called with write_lock held."""
        ...

    async def retire(self, name: str, shard: qe.EdgeShard | None) -> None:
        """Closes a replaced shard once no read uses it and removes its directory `name`;
        called once write_lock is released, so that writers do not wait for it."""
        ...


class IndexBuilder:
    """Runs at most one background build at a time for `owner`."""

    def __init__(
        self,
        owner: ShardOwner,
        *,
        threshold: int,
        on_build: Callable[[bool, float], None] | None = None,
        command: Sequence[str] = BUILDER,
        idle_s: float = IDLE_BUILD_S,
        idle_minimum: int = IDLE_BUILD_MIN,
        child_args: Callable[[], Sequence[str]] = tuple,
        serving_config: Callable[[], qe.EdgeConfig | None] = lambda: None,
    ) -> None:
        """`threshold`: unindexed points that start a build; `idle_minimum` of them do once
        no write has come for `idle_s`. `on_build(ok, seconds)` is told of every build
        that ends. `command` + [shard dir, parent pid, *child_args()] is the child; a built
        copy is loaded with `serving_config()` (None: the config it has on disk)."""
        self._owner = owner
        self._threshold = threshold
        self._idle_s = idle_s
        self._idle_minimum = idle_minimum
        self._idle: asyncio.TimerHandle | None = None
        self._on_build = on_build
        self._command = tuple(command)
        self._child_args = child_args
        self._serving_config = serving_config
        # Seconds the last swap held the write lock (writers waited at most that long).
        self._held = 0.0
        self._replay: list[qe.UpdateOperation] | None = None
        self._task: asyncio.Task[None] | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._floor = 0
        self._stopped = False
        # Points upserted since the last build began. Qdrant's indexed_vectors_count keeps
        # counting a point's old, overwritten version in the indexed segment, so overwrites
        # never show as unindexed there: without this count, re-upserting a store's records
        # would leave them all in the unindexed segment, searched by full scan, for good.
        self.pending = 0

    @property
    def running(self) -> bool:
        return self._task is not None

    def record(self, op: qe.UpdateOperation, *, upserted: int = 0) -> None:
        """Notes a write made to the live shard (`upserted` points), for the next build
        and, while one runs, for the shard being built."""
        self.pending += upserted
        if self._replay is not None:
            self._replay.append(op)

    def maybe_start(self) -> None:
        """Called after every write and build: starts a build if the tail calls for one,
        and (re)starts the wait for quiet that indexes a smaller one."""
        if not self._may_start():
            return
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self._idle_s, self._when_idle)
        self._start_from(self._threshold)

    def _when_idle(self) -> None:
        self._idle = None
        if self._may_start():
            self._start_from(self._idle_minimum)

    def _may_start(self) -> bool:
        return self._owner.shard is not None and not self._stopped and self._task is None

    def _start_from(self, minimum: int) -> None:
        gap = self._unindexed()
        if self.pending >= minimum or gap >= max(minimum, self._floor):
            self._task = asyncio.create_task(self._build(), name="local-index-build")

    async def wait(self) -> None:
        """Returns when no build is running (at once if none is)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def room(self, bound: int) -> float:
        """Waits while a build runs and the unindexed tail holds `bound` points or more;
        returns the seconds waited. Queries scan that tail point by point, so writers
        faster than the index must not grow it past what a scan answers in milliseconds.
        Never waits without a build running: a failed build leaves writes unthrottled."""
        loop = asyncio.get_running_loop()
        waited = 0.0
        while bound and self._task is not None and self._unindexed() >= bound:
            started = loop.time()
            # asyncio.wait, not the task itself: a build stopped meanwhile must not cancel
            # the write; it proceeds, unthrottled, into the store being closed.
            await asyncio.wait([self._task])
            waited += loop.time() - started
        return waited

    def _unindexed(self) -> int:
        shard = self._owner.shard
        if shard is None:
            return 0
        info = shard.info()
        return info.points_count - info.indexed_vectors_count

    async def stop(self) -> None:
        """Kills a running build (its copy is removed) and starts no more."""
        self._stopped = True
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None:
            if self._child is not None and self._child.returncode is None:
                self._child.kill()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _build(self) -> None:
        owner = self._owner
        source = _require(owner.shard)
        target = _next_name(owner.shard_name)
        loop = asyncio.get_running_loop()
        started = loop.time()
        taken = 0
        try:
            async with owner.write_lock:
                await asyncio.to_thread(source.flush)
                # A stop during the copy lets it end at the next file, and waits for that:
                # removed while the thread still wrote into it, the copy came back.
                stop = threading.Event()
                copying = asyncio.to_thread(
                    copy_tree, owner.root / owner.shard_name, owner.root / target, stop
                )
                try:
                    await uncancellable(copying, on_cancel=stop.set)
                except CopyStopped:
                    raise asyncio.CancelledError from None
                self._replay = []
                taken, self.pending = self.pending, 0
            copied = loop.time()
            log.info("building the HNSW index of %d vectors in the background (copied in %.1f s)",
                     source.info().points_count, copied - started)  # fmt: skip
            self._child = await asyncio.create_subprocess_exec(
                *self._command, str(owner.root / target), str(os.getpid()), *self._child_args()
            )
            if await self._child.wait() != 0:
                raise RuntimeError(f"the index builder exited with {self._child.returncode}")
            built = loop.time()
            indexed_before = source.info().indexed_vectors_count
            await uncancellable(self._switch_to(target))
            info = _require(owner.shard).info()
            # A build that indexed nothing new must not restart at once, forever.
            progressed = info.indexed_vectors_count > indexed_before
            unindexed = info.points_count - info.indexed_vectors_count
            self._floor = 0 if progressed else unindexed + self._threshold
            took = loop.time() - started
            log.info("HNSW index ready: %d of %d vectors indexed in %.1f s (copy %.1f, build "
                     "%.1f, swap %.2f, writes held %.2f)", info.indexed_vectors_count,
                     info.points_count, took, copied - started, built - copied,
                     loop.time() - built, self._held)  # fmt: skip
            if self._on_build is not None:
                self._on_build(True, took)
        except asyncio.CancelledError:
            self.pending += taken
            await asyncio.to_thread(self._discard, target)
            raise
        except Exception:
            log.exception("building the index failed; queries stay exact, will retry later")
            if self._on_build is not None:
                self._on_build(False, loop.time() - started)
            shard = owner.shard
            self._floor = (shard.info().points_count if shard else 0) + self._threshold
            # What it took stays unindexed and uncounted: the next try waits for the
            # floor, or for another threshold's worth of upserts, not at once, forever.
            await asyncio.to_thread(self._discard, target)
        finally:
            self._replay = None
            self._child = None
            self._task = None
        # Writes made during the build may already call for the next one.
        self.maybe_start()

    def _discard(self, name: str) -> None:
        """Removes an unfinished build's shard; never the one store.json names."""
        if name != self._owner.shard_name and self._owner.named_in_meta() != name:
            shutil.rmtree(self._owner.root / name, ignore_errors=True)

    async def _switch_to(self, target: str) -> None:
        """Loads the built copy, replays the writes made meanwhile, installs it, and then
        retires the shard it replaces.

        Runs to its end once begun (see `uncancellable`): a stop that lands between
        store.json naming `target` and the old shard being removed must not leave the
        store half-switched.
        """
        loop = asyncio.get_running_loop()
        async with self._owner.write_lock:
            taken = loop.time()
            replay = self._replay or []
            path = self._owner.root / target
            config = self._serving_config()
            old_name = self._owner.shard_name

            def load_and_replay() -> qe.EdgeShard:
                shard = qe.EdgeShard.load(str(path), config)
                for op in replay:
                    shard.update(op)
                shard.flush()
                return shard

            fresh = await asyncio.to_thread(load_and_replay)
            old = await self._owner.install(target, fresh)
            self._held = loop.time() - taken
        await self._owner.retire(old_name, old)


def _next_name(name: str) -> str:
    number = int(name.rsplit("-", 1)[1]) + 1
    return f"shard-{number:06d}"


def _require(shard: qe.EdgeShard | None) -> qe.EdgeShard:
    if shard is None:
        raise RuntimeError("the local store is not open")
    return shard
