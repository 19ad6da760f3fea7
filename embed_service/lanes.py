"""Where forward passes run: one at a time on every thread, or several side by side.

On a 2-core AMX Xeon (ViT-B/32, batch 16, pre-decoded pixels), torch bf16 ran 86-111
images/s as one pass on 2 threads and 160-171 as two single-thread passes at once;
ONNX Runtime int8 104-110 against 117-122; fp32 about the same either way. Yet one
image alone takes 24 ms on 2 threads and 39 ms on 1. So a pass that would run alone
(no other batch waiting, nothing queued behind it) gets every thread, and a backlog
is split into passes of `threads / count` threads, run at once, one per lane.

Changing between the two changes the runtime's thread count. torch keeps that per
calling thread (and process-wide for MKL, and clears oneDNN's kernel cache with it),
so it is done on every lane's thread, and only while no pass runs. The first pass
after a change rebuilds those kernels: a lone image right after a burst took 47 ms
wide, against 38 ms narrow and 24-30 ms wide once warm (torch bf16, AMX). So a lone
pass right after a backlog stays narrow, and once the lanes have been idle for
`idle_s` they go wide again and run `warm` there, so the next lone query finds warm
kernels.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Lanes:
    """Runs forward passes on `count` threads, all of them wide (one pass) or narrow."""

    def __init__(
        self,
        count: int,
        set_lanes: Callable[[int], None],
        *,
        backlog: Callable[[], int] = lambda: 0,
        warm: Callable[[], object] = lambda: None,
        idle_s: float = 1.0,
        on_switch: Callable[[], None] = lambda: None,
        name: str = "model",
    ) -> None:
        if count < 1:
            raise ValueError("lanes: count must be at least 1")
        self.count = count
        self.backlog = backlog  # items queued behind the passes, read when one starts
        self.switches = 0  # changes of shape while serving
        self._set_lanes = set_lanes
        self._warm = warm
        self._on_switch = on_switch
        self._idle_s = idle_s
        self._idle: asyncio.TimerHandle | None = None
        self._stopped = False
        self._threads = [ThreadPoolExecutor(1, f"{name}-{i}") for i in range(count)]
        self._free = list(range(count))[::-1]
        self._shape = 1  # passes side by side the runtime is set up for: 1 or count
        self._switching = False
        self._waiting = 0
        self._wakers: list[asyncio.Future[None]] = []

    @property
    def shape(self) -> int:
        return self._shape

    @property
    def running(self) -> int:
        return self.count - len(self._free)

    async def prepare(self) -> None:
        """Sets the runtime up for both shapes once (ONNX Runtime builds its narrow
        sessions here), so the first backlog does not pay for it; ends wide."""
        if self.count > 1:
            await self._apply(self.count)
        await self._apply(1)

    async def run(self, work: Callable[[], T], *, shape: int | None = None) -> T:
        """Runs `work` on a lane thread. `shape` forces 1 (wide) or `count` (narrow);
        None decides: wide if nothing else runs or waits, else narrow."""
        if shape not in (None, 1, self.count):
            raise ValueError(f"lanes: shape must be 1 or {self.count}")
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            while (chosen := self._pick(shape)) is None:
                waker = loop.create_future()
                self._wakers.append(waker)
                await waker
        finally:
            self._waiting -= 1
        # Wide passes always run on lane 0: libgomp keeps a team of threads per thread
        # that ever ran one, and once it manages more threads than there are cores it
        # stops spinning between parallel regions, which makes a lone image much slower
        # (docs/performance.md): every lane wide in turn got there.
        lane = 0 if chosen == 1 else self._free[-1]
        self._free.remove(lane)
        job = asyncio.ensure_future(self._switch_and_run(lane, chosen, work))
        # The lane is free only once its thread is: a cancelled caller does not free it.
        job.add_done_callback(functools.partial(self._release, lane))
        return await asyncio.shield(job)

    async def rest(self) -> None:
        """Returns once no pass runs or waits and the lanes are wide again."""
        loop = asyncio.get_running_loop()
        while self.running or self._waiting or self._shape != 1:
            waker = loop.create_future()
            self._wakers.append(waker)
            await waker

    async def stop(self) -> None:
        """Waits for passes in flight, then ends the threads."""
        self._stopped = True
        if self._idle is not None:
            self._idle.cancel()
        for thread in self._threads:
            await asyncio.to_thread(thread.shutdown, wait=True)

    def _pick(self, forced: int | None) -> int | None:
        """The shape to start a pass in now, or None to wait."""
        if self._switching or not self._free:
            return None
        if self.running == 0:
            if forced is not None:
                return forced
            alone = self._waiting == 1 and self.backlog() == 0
            # Alone right after a backlog: narrow beats rebuilding the wide kernels now.
            return 1 if alone and self._shape == 1 else self.count
        if self._shape == self.count and self.count > 1 and forced in (None, self.count):
            return self.count
        return None  # a wide pass holds every thread

    async def _switch_and_run(self, lane: int, shape: int, work: Callable[[], T]) -> T:
        if shape != self._shape:
            self._switching = True
            try:
                await self._apply(shape)
                self.switches += 1
                self._on_switch()
            finally:
                self._switching = False
                self._wake()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads[lane], work)

    async def _apply(self, shape: int) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(thread, self._set_lanes, shape) for thread in self._threads)
        )
        self._shape = shape

    def _release(self, lane: int, job: asyncio.Future[object]) -> None:
        if not job.cancelled():
            job.exception()  # a caller that went away still had it logged by the batcher
        self._free.append(lane)
        self._wake()
        if self.running == 0 and self._shape != 1 and not self._stopped:
            if self._idle is not None:
                self._idle.cancel()
            self._idle = asyncio.get_running_loop().call_later(self._idle_s, self._widen)

    def _widen(self) -> None:
        self._idle = None
        if self.running == 0 and self._waiting == 0 and self._shape != 1 and not self._stopped:
            # Wide again while nothing runs, warmed, so a lone query does not pay for it.
            widen = asyncio.ensure_future(self.run(self._warm, shape=1))
            widen.add_done_callback(_log_failure)

    def _wake(self) -> None:
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            if not waker.done():
                waker.set_result(None)


def _log_failure(task: asyncio.Future[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("lanes: warming the wide pass failed", exc_info=task.exception())
