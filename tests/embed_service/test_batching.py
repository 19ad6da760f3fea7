"""The dynamic batcher when things go wrong: a bad batch fails alone, a dead worker fails fast."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from embed_service.batching import DynamicBatcher
from embed_service.errors import BatcherStopped
from embed_service.lanes import Lanes


def double_or_drop(items: list[int]) -> Sequence[int]:
    # A model that loses a result when it sees 13: its batch must fail, not the worker.
    return [i * 2 for i in items if i != 13]


@pytest.fixture(params=[1, 2], ids=["one lane", "two lanes"])
async def batcher(request: pytest.FixtureRequest) -> AsyncIterator[DynamicBatcher[int, int]]:
    lanes = Lanes(request.param, lambda shape: None)
    batcher = DynamicBatcher[int, int](
        double_or_drop, lanes=lanes, max_batch=4, max_wait_s=0.01, name="test"
    )
    await batcher.start()
    yield batcher
    await batcher.stop()
    await lanes.stop()


async def test_a_batch_with_the_wrong_number_of_results_fails_alone(
    batcher: DynamicBatcher[int, int],
) -> None:
    with pytest.raises(RuntimeError, match="wrong number of results"):
        await batcher.submit([1, 13])
    assert await batcher.submit([1, 2, 3]) == [2, 4, 6]


async def test_a_dead_worker_fails_queued_and_later_calls_at_once_and_is_logged(
    batcher: DynamicBatcher[int, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(*args: object) -> None:
        raise MemoryError("the worker itself failed")

    monkeypatch.setattr(batcher, "_resolve", explode)
    first = asyncio.create_task(batcher.submit([1]))
    # Queued behind the batch that kills the worker: must fail too, not wait forever.
    queued = asyncio.create_task(batcher.submit([2, 3, 4, 5, 6]))
    for task in (first, queued):
        with pytest.raises(BatcherStopped):
            await asyncio.wait_for(task, timeout=5)
    with pytest.raises(BatcherStopped, match="restart the service"):
        await asyncio.wait_for(batcher.submit([7]), timeout=1)
    assert any("worker died" in r.getMessage() and r.exc_info for r in caplog.records)
    assert all(r.levelno >= logging.ERROR for r in caplog.records if "worker died" in r.message)
