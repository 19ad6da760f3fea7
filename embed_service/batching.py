"""Dynamic batching: items from many concurrent callers share one forward pass.

One worker task per lane (see lanes.py) takes the first waiting item, then gathers
more until the batch is full or `max_wait_s` has passed since that first item, and
runs the batch on a lane: alone on every thread when nothing else waits, else side
by side with the other lanes' batches. While batches run, the next ones fill up, so
under load batches are full and waiting costs nothing. Items whose caller went away
are dropped before the forward pass.

A failing batch fails only its own items. Should the worker itself ever die, that is
logged, every queued item fails at once with `BatcherStopped`, and so does every
later `submit`: no caller waits for a worker that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from embed_service.errors import BatcherStopped
from embed_service.lanes import Lanes

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]


@dataclass(slots=True)
class BatchStats:
    """What the batcher ran: how many batches of each size."""

    sizes: Counter[int] = field(default_factory=Counter)
    busy_s: float = 0.0  # time spent in run_batch, summed over lanes

    @property
    def batches(self) -> int:
        return sum(self.sizes.values())

    @property
    def items(self) -> int:
        return sum(size * count for size, count in self.sizes.items())


class DynamicBatcher(Generic[In, Out]):
    """Gathers items into batches of at most `max_batch` and runs `run_batch` on them."""

    def __init__(
        self,
        run_batch: Callable[[list[In]], Sequence[Out]],
        *,
        lanes: Lanes,
        max_batch: int,
        max_wait_s: float,
        name: str,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._lanes = lanes
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._name = name
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._dead: BatcherStopped | None = None
        self._running: dict[int, list[_Pending[In, Out]]] = {}
        self.stats = BatchStats()

    @property
    def waiting(self) -> int:
        """Items queued for a forward pass."""
        return self._queue.qsize()

    async def start(self) -> None:
        if not self._workers:
            self._dead = None
            for index in range(self._lanes.count):
                worker = asyncio.create_task(self._work(index), name=f"batcher-{self._name}")
                worker.add_done_callback(self._on_worker_exit)
                self._workers.append(worker)

    def _on_worker_exit(self, worker: asyncio.Task[None]) -> None:
        if self._dead is not None:
            return  # the first worker to end has failed everything already
        if worker.cancelled():
            self._dead = BatcherStopped(f"the {self._name} batcher was stopped")
        else:
            log.error(
                "the %s batcher's worker died; failing every waiting and later call",
                self._name,
                exc_info=worker.exception(),
            )
            self._dead = BatcherStopped(f"the {self._name} batcher failed; restart the service")
        self._fail_queued(self._dead)

    def _fail_queued(self, error: BaseException) -> None:
        """Fails the batch in hand and everything waiting behind it."""
        waiting = [entry for batch in self._running.values() for entry in batch]
        self._running = {}
        while not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for entry in waiting:
            if not entry.future.done():
                entry.future.set_exception(error)

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            # A worker that died has been logged already (_on_worker_exit).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker
        self._workers = []
        self._fail_queued(BatcherStopped(f"the {self._name} batcher was stopped"))

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Runs every item through a batch, possibly shared with other callers."""
        if self._dead is not None:
            raise self._dead
        if not self._workers:
            raise BatcherStopped(f"the {self._name} batcher is not started")
        loop = asyncio.get_running_loop()
        pending = [_Pending[In, Out](item, loop.create_future()) for item in items]
        for entry in pending:
            self._queue.put_nowait(entry)
        try:
            return list(await asyncio.gather(*(entry.future for entry in pending)))
        except BaseException:
            # The caller is gone (cancelled) or one item failed: drop what has not run.
            for entry in pending:
                entry.future.cancel()
            raise

    async def _gather(self) -> list[_Pending[In, Out]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self._max_wait_s
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _work(self, index: int) -> None:
        while True:
            live = [entry for entry in await self._gather() if not entry.future.done()]
            if not live:
                continue
            self._running[index] = live
            items = [entry.item for entry in live]
            try:
                results, seconds = await self._lanes.run(functools.partial(self._timed, items))
            except Exception as exc:
                log.exception("batch of %d failed in %s", len(live), self._name)
                for entry in live:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                self._running.pop(index, None)
                continue
            self.stats.sizes[len(live)] += 1
            self.stats.busy_s += seconds
            if self._on_batch is not None:
                self._on_batch(len(live))
            self._resolve(live, results)
            self._running.pop(index, None)

    def _timed(self, items: list[In]) -> tuple[Sequence[Out], float]:
        # Timed on the lane's thread: the pass itself, not the wait for a lane.
        started = time.perf_counter()
        return self._run_batch(items), time.perf_counter() - started

    def _resolve(self, live: list[_Pending[In, Out]], results: Sequence[Out]) -> None:
        """Hands each caller its result; a mismatch fails the batch, not the worker."""
        if len(results) != len(live):
            log.error("%s: a batch of %d gave %d results", self._name, len(live), len(results))
            error = RuntimeError(f"the {self._name} model returned the wrong number of results")
            for entry in live:
                if not entry.future.done():
                    entry.future.set_exception(error)
            return
        for entry, result in zip(live, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
