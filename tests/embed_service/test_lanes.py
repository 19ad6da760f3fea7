"""Lanes: a pass alone gets every thread, a backlog runs side by side, never both at once;
and the vectors do not depend on which."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from embed_service.lanes import Lanes
from tests.support.imagegen import encode, picture
from tests.support.stack import embed_settings, serving_embed


class Recorder:
    """Stands in for the runtime's set_lanes and records what ran, on which shape."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: list[int] = []  # shapes of the passes running now
        self.passes: list[tuple[int, int]] = []  # (shape, passes running beside it)
        self.wide_threads: set[int] = set()
        self.applied: list[tuple[int, int]] = []  # (shape, passes running meanwhile)
        self.lanes: Lanes | None = None

    def set_lanes(self, shape: int) -> None:
        with self.lock:
            self.applied.append((shape, len(self.active)))

    def work(self, seconds: float = 0.02) -> int:
        assert self.lanes is not None
        shape = self.lanes.shape
        with self.lock:
            self.active.append(shape)
            beside = len(self.active) - 1
        time.sleep(seconds)
        with self.lock:
            self.active.remove(shape)
            self.passes.append((shape, beside))
            if shape == 1:
                self.wide_threads.add(threading.get_ident())
        return shape


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[Lanes, Recorder]]:
    recorder = Recorder()
    queued = [0]
    lanes = Lanes(2, recorder.set_lanes, backlog=lambda: queued[0], idle_s=0.05)
    recorder.lanes = lanes
    await lanes.prepare()
    yield lanes, recorder
    await lanes.stop()


async def test_a_pass_alone_gets_every_thread(recorded: tuple[Lanes, Recorder]) -> None:
    lanes, recorder = recorded
    assert [await lanes.run(recorder.work) for _ in range(3)] == [1, 1, 1]
    assert lanes.switches == 0  # prepare() ends wide: no switch for a lone pass


async def test_a_backlog_runs_side_by_side_on_narrow_lanes(
    recorded: tuple[Lanes, Recorder],
) -> None:
    lanes, recorder = recorded
    both_in = threading.Barrier(2, timeout=5)

    def meet() -> int:
        both_in.wait()  # returns only if the two passes really run at the same time
        return recorder.work()

    lanes.backlog = lambda: 1  # the second batch is still queued when the first starts
    assert list(await asyncio.gather(lanes.run(meet), lanes.run(meet))) == [2, 2]
    # A lone pass right after: still narrow, as the wide kernels would need rebuilding.
    lanes.backlog = lambda: 0
    assert await lanes.run(recorder.work) == 2
    # Once idle, the lanes go wide again by themselves, and a lone pass runs wide.
    await asyncio.wait_for(lanes.rest(), 5)
    assert lanes.shape == 1
    assert await lanes.run(recorder.work) == 1
    assert lanes.switches == 2


async def test_a_wide_pass_never_overlaps_runs_on_one_thread_and_switches_at_rest(
    recorded: tuple[Lanes, Recorder],
) -> None:
    lanes, recorder = recorded
    # Bursts and lone passes in turn, so the shape changes many times.
    for burst in (1, 5, 1, 2, 7, 1, 3):
        lanes.backlog = lambda burst=burst: burst - 1  # type: ignore[misc]
        await asyncio.gather(*(lanes.run(recorder.work) for _ in range(burst)))
    assert len(recorder.passes) == 20
    assert all(beside == 0 for shape, beside in recorder.passes if shape == 1)
    assert all(beside <= 1 for _, beside in recorder.passes)
    # prepare()'s two and one per switch, each on both threads, never beside a pass.
    assert len(recorder.applied) == 2 * (2 + lanes.switches)
    assert all(running == 0 for _, running in recorder.applied)
    assert {shape for shape, _ in recorder.passes} == {1, 2}
    # One thread runs every wide pass, so the OpenMP runtime keeps one team, not one per lane.
    assert len(recorder.wide_threads) == 1


async def test_a_queue_behind_a_lone_pass_makes_it_narrow(
    recorded: tuple[Lanes, Recorder],
) -> None:
    lanes, recorder = recorded
    lanes.backlog = lambda: 5  # items waiting for the next batch
    assert await lanes.run(recorder.work) == 2


async def test_a_cancelled_caller_keeps_its_lane_until_the_pass_ends(
    recorded: tuple[Lanes, Recorder],
) -> None:
    lanes, recorder = recorded
    release, started = threading.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold() -> bool:
        loop.call_soon_threadsafe(started.set)
        return release.wait(5)

    caller = asyncio.create_task(lanes.run(hold))
    await asyncio.wait_for(started.wait(), 5)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert lanes.running == 1  # its thread is still busy
    release.set()
    # The next lone pass waits for that lane, then runs wide.
    assert await asyncio.wait_for(lanes.run(recorder.work), 5) == 1
    assert lanes.running == 0


async def test_a_failing_pass_fails_its_caller_alone_and_frees_its_lane(
    recorded: tuple[Lanes, Recorder],
) -> None:
    lanes, recorder = recorded

    def broken() -> None:
        raise RuntimeError("the model broke")

    with pytest.raises(RuntimeError, match="the model broke"):
        await lanes.run(broken)
    assert lanes.running == 0
    assert await lanes.run(recorder.work) == 1


async def test_one_lane_runs_one_pass_at_a_time() -> None:
    recorder = Recorder()
    lanes = Lanes(1, recorder.set_lanes)
    recorder.lanes = lanes
    try:
        shapes = list(await asyncio.gather(*(lanes.run(recorder.work) for _ in range(4))))
    finally:
        await lanes.stop()
    assert shapes == [1, 1, 1, 1]
    assert all(beside == 0 for _, beside in recorder.passes)


def test_a_shape_other_than_wide_or_narrow_is_refused() -> None:
    lanes = Lanes(2, lambda shape: None)
    with pytest.raises(ValueError, match="shape must be 1 or 2"):
        asyncio.run(lanes.run(lambda: None, shape=3))


@pytest.mark.parametrize("backend", ["torch", "onnx"])
async def test_a_backlog_on_narrow_lanes_gives_each_image_its_own_vector(
    clip_dir: Path, backend: str
) -> None:
    import torch

    async with serving_embed(clip_dir, backend=backend, lanes=2, model_batch_size=4) as app:
        engine = app.engine
        assert engine is not None
        lanes = engine.lanes
        assert lanes.count == 2
        if backend == "torch":
            # What the runtime really runs on each shape, asked on a lane's own thread.
            assert await lanes.run(torch.get_num_threads, shape=2) == 1
            assert await lanes.run(torch.get_num_threads, shape=1) == 2
        images = [encode(picture(c, shape=i)) for i, c in enumerate(["red", "blue", "green"] * 4)]
        alone = [(await engine.embed_images([data]))[0].vector for data in images]
        text_wide = (await engine.embed_texts(["a red square"]))[0].vector
        switches = lanes.switches
        # One request of 12: three batches of 4 queued at once, so the lanes go narrow.
        together = [r.vector for r in await engine.embed_images(images)]
        assert lanes.switches > switches
        assert app.registry.get_sample_value("embed_lanes_shape") == 2
        assert app.registry.get_sample_value("embed_lane_switches_total") == lanes.switches
        # Right after the backlog a lone text pass runs narrow too: same vector.
        text_narrow = (await engine.embed_texts(["a red square"]))[0].vector
        assert lanes.shape == 2
        assert text_wide is not None
        assert text_narrow is not None
        assert np.allclose(text_wide, text_narrow, atol=1e-5)
        assert max(engine.image_batches.sizes) == 4
        for one, other in zip(alone, together, strict=True):
            assert one is not None
            assert other is not None
            assert np.allclose(one, other, atol=1e-5)
        assert len({round(float(v[0]), 6) for v in alone if v is not None}) > 3
        # Idle again: wide, with warm kernels, and the same vectors as before.
        await asyncio.wait_for(lanes.rest(), 30)
        assert lanes.shape == 1
        assert app.registry.get_sample_value("embed_lanes_shape") == 1
        again, first = (await engine.embed_images(images[:1]))[0].vector, alone[0]
        assert again is not None
        assert first is not None
        assert np.allclose(again, first, atol=1e-5)
        assert lanes.shape == 1


def test_embed_lanes_defaults_to_one_per_thread_on_cpu_and_one_on_cuda(clip_dir: Path) -> None:
    settings = embed_settings(clip_dir, threads=4)
    assert settings.lanes_for("cpu", "torch", "fp32") == 4
    assert settings.lanes_for("cpu", "onnx", "int8") == 4
    # Narrow ONNX Runtime fp32 sessions cost another copy of the weights for ~nothing.
    assert settings.lanes_for("cpu", "onnx", "fp32") == 1
    assert settings.lanes_for("cuda", "torch", "fp16") == 1
    assert embed_settings(clip_dir, threads=4, lanes=1).lanes_for("cpu", "torch", "bf16") == 1
    assert embed_settings(clip_dir, threads=4, lanes=2).lanes_for("cpu", "onnx", "fp32") == 2
    # More lanes than threads would leave a lane without one.
    assert embed_settings(clip_dir, threads=2, lanes=8).lanes_for("cpu", "torch", "fp32") == 2
