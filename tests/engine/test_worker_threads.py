"""The scheduler's worker-thread path (real backends): one execution at a time on the device, hung executions
time out, and shutdown waits for what is on the device. Real clock; no timing asserts beyond generous bounds."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import trio

from edgebox.engine.backends import LoadedModel
from edgebox.engine.scheduler import ModelQueue, QueueSettings
from edgebox.errors import InferenceTimeout
from edgebox.metrics import Metrics
from tests.engine.faults import echo_model


class ThreadModel:
    """A synchronous backend that records how many runs overlap and can be held (a hung device)."""

    def __init__(self, run_s: float = 0.01) -> None:
        self.run_s = run_s
        self.running = 0
        self.max_running = 0
        self.finished = 0
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()
        self.model = LoadedModel("fake-cpu", "CPU", run=self.run)

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.release.wait()
            time.sleep(self.run_s)
            return echo_model(batch)
        finally:
            with self._lock:
                self.running -= 1
                self.finished += 1


async def _sources(queue: ModelQueue, n: int, frames_each: int) -> None:
    async def source(i: int) -> None:
        for k in range(frames_each):
            sums, _ = await queue.infer(np.full((2,), i * 100 + k, np.float32), droppable=False)
            assert sums == pytest.approx(2 * (i * 100 + k))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(source, i)


async def test_batches_never_overlap_on_the_device():
    backend = ThreadModel(run_s=0.005)
    queue = ModelQueue("fake", backend.model, QueueSettings(4, 0.01, 64, 30.0), Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        await _sources(queue, 12, 10)
        nursery.cancel_scope.cancel()
    assert backend.max_running == 1
    assert backend.finished >= 30  # 120 frames in batches of at most 4


async def test_hung_device_times_out_every_frame_and_recovers_when_it_returns():
    backend = ThreadModel()
    backend.release.clear()
    queue = ModelQueue("fake", backend.model, QueueSettings(1, 0.0, 64, 0.3), Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        for _ in range(4):  # more than the pipeline holds: the rest wait for a worker thread, and time out too
            with pytest.raises(InferenceTimeout):
                await queue.infer(np.zeros(2, np.float32), droppable=False)
        backend.release.set()
        with trio.fail_after(10):
            while backend.running:
                await trio.sleep(0.01)
        sums, _ = await queue.infer(np.ones(2, np.float32), droppable=False)
        assert sums == pytest.approx(2)
        nursery.cancel_scope.cancel()


async def test_shutdown_waits_for_the_execution_on_the_device():
    backend = ThreadModel(run_s=0.3)
    queue = ModelQueue("fake", backend.model, QueueSettings(1, 0.0, 64, 30.0), Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        async with trio.open_nursery() as inner:
            inner.start_soon(_submit_one, queue)
            while backend.running == 0:
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()  # the engine stops while the backend is running
    assert backend.finished == 1 and backend.running == 0  # nothing left running in a native thread


async def _submit_one(queue: ModelQueue) -> None:
    await queue.infer(np.zeros(2, np.float32), droppable=False)
