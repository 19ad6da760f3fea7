"""Where forward passes run: one at a time on every thread, or several side by side.

On a 2-core AMX Xeon (ViT-B/32, batch 16, pre-decoded pixels), torch bf16 ran 86-111
images/s as one pass on 2 threads and 160-171 as two single-thread passes at once;
ONNX Runtime int8 104-110 against 117-122; fp32 about the same either way. Yet one
image alone takes 24 ms on 2 threads and 39 ms on 1. So a pass that would run alone
(no other batch waiting, nothing queued behind it) gets every thread, and a backlog
is split into passes of `threads / count` threads, run at once, one per lane.

Changing between the two changes the runtime's thread count. torch keeps that per
calling thread (and process-wide for MKL, and clears oneDNN's kernel cache with it),
so it is done on every lane's thread, and only while no pass runs. Under steady load
or at rest the shape does not change; it changes when the load does.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Lanes:
    """Runs forward passes on `count` threads, all of them wide (one pass) or narrow."""

    def __init__(
        self,
        count: int,
        set_lanes: Callable[[int], None],
        *,
        backlog: Callable[[], int] = lambda: 0,
        name: str = "model",
    ) -> None:
        if count < 1:
            raise ValueError("lanes: count must be at least 1")
        self.count = count
        self.backlog = backlog  # items queued behind the passes, read when one starts
        self.switches = 0  # changes of shape while serving
        self._set_lanes = set_lanes
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
        lane = self._free.pop()
        job = asyncio.ensure_future(self._switch_and_run(lane, chosen, work))
        # The lane is free only once its thread is: a cancelled caller does not free it.
        job.add_done_callback(functools.partial(self._release, lane))
        return await asyncio.shield(job)

    async def stop(self) -> None:
        """Waits for passes in flight, then ends the threads."""
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
            return 1 if alone else self.count
        if self._shape == self.count and self.count > 1 and forced in (None, self.count):
            return self.count
        return None  # a wide pass holds every thread

    async def _switch_and_run(self, lane: int, shape: int, work: Callable[[], T]) -> T:
        if shape != self._shape:
            self._switching = True
            try:
                await self._apply(shape)
                self.switches += 1
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

    def _wake(self) -> None:
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            if not waker.done():
                waker.set_result(None)
