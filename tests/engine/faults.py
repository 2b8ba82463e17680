"""The one fake of the engine tests: a backend whose `run_async` wraps a real or simple model and injects faults.

It sits exactly at the backend boundary (a `LoadedModel`), so the scheduler under test is the real one. Delays
use `trio.sleep`, so with `MockClock(autojump_threshold=0)` every timing below is exact and instant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import numpy as np
import trio

from edgebox.engine.backends.base import LoadedModel
from edgebox.engine.scheduler import ModelQueue, QueueSettings
from edgebox.metrics import Metrics

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 1.50 GiB (GPU 0; 7.79 GiB total capacity)"


def echo_model(batch: np.ndarray) -> list[np.ndarray]:
    """A model whose outputs identify each input: its sum, and a copy of it."""
    return [batch.reshape(len(batch), -1).sum(axis=1), batch.copy()]


@dataclass(frozen=True)
class Call:
    at: float  # trio time the backend was called
    size: int  # batch size


class FaultyBackend:
    """Wraps `run`; set the attributes below to inject faults into the next calls."""

    def __init__(self, run: Callable[[np.ndarray], Sequence[np.ndarray]] = echo_model, *,
                 compute_s: float = 0.0, name: str = "fake-gpu", parallel: int = 1) -> None:
        self.inner = run
        self.compute_s = compute_s
        self.calls: list[Call] = []
        self.failures_left = 0  # the next N calls raise a generic error
        self.oom_above: int | None = None  # batches larger than this raise "CUDA out of memory"
        self.hang = False  # calls never return
        self.gate: trio.Event | None = None  # calls wait for it: a busy device
        self.model = LoadedModel(name, "FAKE:0", run=self._sync_run_is_not_used, run_async=self.run_async,
                                 parallel=parallel)

    async def run_async(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        self.calls.append(Call(trio.current_time(), len(batch)))
        if self.gate is not None:
            await self.gate.wait()
        if self.hang:
            await trio.sleep_forever()
        if self.compute_s:
            await trio.sleep(self.compute_s)
        if self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("injected backend failure")
        if self.oom_above is not None and len(batch) > self.oom_above:
            raise RuntimeError(OOM_MESSAGE)
        return self.inner(batch)

    @property
    def sizes(self) -> list[int]:
        return [c.size for c in self.calls]

    @property
    def times(self) -> list[float]:
        return [c.at for c in self.calls]

    @staticmethod
    def _sync_run_is_not_used(batch: np.ndarray) -> Sequence[np.ndarray]:
        raise AssertionError("the scheduler must call run_async when a model has one")


@asynccontextmanager
async def serving(model: LoadedModel, *, max_batch_size: int = 8, max_queue_delay_s: float = 0.1,
                  capacity: int = 64, timeout_s: float = 10.0,
                  metrics: Metrics | None = None) -> AsyncIterator[ModelQueue]:
    """A real ModelQueue for `model` with its batching loop running; stopped on exit."""
    settings = QueueSettings(max_batch_size, max_queue_delay_s, capacity, timeout_s)
    queue = ModelQueue("fake", model, settings, metrics or Metrics())
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.run)
        yield queue
        nursery.cancel_scope.cancel()


def frame(value: float, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """An input whose echo_model sum is value * its size."""
    return np.full(shape, value, dtype=np.float32)
