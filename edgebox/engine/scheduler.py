"""The batching scheduler: one bounded queue per (model, backend), frames from every source batched together.

A queue flushes when it holds `max_batch_size` frames or its oldest frame has waited `max_queue_delay`.
Executions run off the trio thread, are retried with back-off, time out with INFERENCE_TIMEOUT, and halve the
batch on out-of-memory (growing it back later). Loading models and choosing backends is `engine.models`' job.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import outcome
import trio

from edgebox.engine.backends.base import LoadedModel, is_out_of_memory
from edgebox.errors import EdgeboxError, GpuOutOfMemory, InferenceTimeout, InternalError, ResourceExhausted
from edgebox.metrics import Metrics

log = logging.getLogger("edgebox.engine.scheduler")

RETRY_DELAYS_S = (0.1, 0.2, 0.4)  # REQ-003: at most 3 retries, exponential back-off
GROW_BACK_AFTER = 20  # successful executions at a reduced batch limit before doubling it again

class FrameDropped(EdgeboxError):
    """A camera frame was dropped by the queue's overflow policy (never sent to a client)."""

@dataclass(frozen=True)
class QueueSettings:
    max_batch_size: int
    max_queue_delay_s: float
    capacity: int
    timeout_s: float
    retry_delays_s: Sequence[float] = RETRY_DELAYS_S

@dataclass(eq=False)
class _Job:
    tensor: np.ndarray
    droppable: bool
    enqueued_at: float
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome | None = None
    abandoned: bool = False

    def finish(self, result: outcome.Outcome) -> None:
        if self.result is None:
            self.result = result
            self.done.set()

class ModelQueue:
    """Queue + batching loop for one loaded model; `run` must be started in a nursery before `infer`."""

    def __init__(self, model_name: str, model: LoadedModel, settings: QueueSettings, metrics: Metrics) -> None:
        self.model_name = model_name
        self.model = model
        self.settings = settings
        self.batch_limit = settings.max_batch_size
        self._metrics = metrics
        self._labels = {"model": model_name, "backend": model.backend}
        self._queue: collections.deque[_Job] = collections.deque()
        self._wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self._successes_at_reduced_limit = 0
        self._mean_execution_s = 0.05
        metrics.batch_limit.labels(**self._labels).set(self.batch_limit)
        metrics.backend_in_use.labels(model=model_name, backend=model.backend, device=model.device).set(1)

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def infer(self, tensor: np.ndarray, *, droppable: bool) -> list[np.ndarray]:
        """Queue one input (no batch axis) and wait for its outputs (batch axis removed).

        droppable=True marks camera frames: when the queue is full the oldest camera frame is dropped
        (FrameDropped) to make room. RPC frames are never dropped; the caller gets RESOURCE_EXHAUSTED instead.
        """
        if len(self._queue) >= self.settings.capacity:
            self._make_room(droppable)
        job = _Job(tensor, droppable, trio.current_time())
        self._queue.append(job)
        self._publish_depth()
        self._wakeup.set()
        try:
            with trio.move_on_at(job.enqueued_at + self.settings.timeout_s):
                await job.done.wait()
        finally:
            if job.result is None:
                job.abandoned = True
        if job.result is None:
            self._forget(job)
            raise InferenceTimeout(
                f"{self.model_name} on {self.model.backend} did not answer within {self.settings.timeout_s:g} s "
                f"({len(self._queue)} frames queued); lower the load or raise engine.inference_timeout_s")
        return job.result.unwrap()

    def _make_room(self, droppable: bool) -> None:
        victim = next((j for j in self._queue if j.droppable and not j.abandoned), None)
        if droppable and victim is not None:
            self._queue.remove(victim)
            victim.finish(outcome.Error(FrameDropped("dropped: scheduler queue full, a newer frame replaced it")))
            return
        if droppable:
            raise FrameDropped("dropped: scheduler queue full of client frames")
        retry = max(0.05, self._mean_execution_s * math.ceil(len(self._queue) / self.batch_limit))
        raise ResourceExhausted(
            f"the {self.model_name} queue on {self.model.backend} is full ({self.settings.capacity} frames)",
            retry_after_s=round(retry, 2))

    def _forget(self, job: _Job) -> None:
        try:
            self._queue.remove(job)
        except ValueError:
            pass
        self._publish_depth()

    def _publish_depth(self) -> None:
        self._metrics.queue_depth.labels(**self._labels).set(len(self._queue))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The batching loop: wait for work, gather a batch within the delay cap, execute, repeat."""
        task_status.started()
        while True:
            while not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            flush_at = self._queue[0].enqueued_at + self.settings.max_queue_delay_s
            while len(self._queue) < self.batch_limit and trio.current_time() < flush_at:
                self._wakeup = trio.Event()
                with trio.move_on_at(flush_at):
                    await self._wakeup.wait()
            batch = self._take_batch()
            self._publish_depth()
            if batch:
                await self._execute(batch)

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        shape = None
        while self._queue and len(batch) < self.batch_limit:
            job = self._queue[0]
            if job.abandoned:
                self._queue.popleft()
                continue
            if shape is not None and job.tensor.shape != shape:
                break  # inputs of another shape go in the next batch
            shape = job.tensor.shape
            batch.append(self._queue.popleft())
        return batch

    async def _execute(self, batch: list[_Job]) -> None:
        now = trio.current_time()
        for job in batch:
            self._metrics.infer_latency.labels(stage="queue").observe(now - job.enqueued_at)
        delays = list(self.settings.retry_delays_s)
        while True:
            started = trio.current_time()
            try:
                outputs = await self._run_backend(np.stack([j.tensor for j in batch]))
            except trio.TooSlowError:
                error = InferenceTimeout(f"{self.model.backend} execution of {self.model_name} exceeded "
                                         f"{self.settings.timeout_s:g} s")
                self._fail(batch, error)
                return
            except Exception as exc:
                if is_out_of_memory(exc) and len(batch) > 1:
                    await self._split_after_oom(batch, exc)
                    return
                if not delays:
                    self._fail(batch, self._final_error(exc))
                    return
                kind = "oom" if is_out_of_memory(exc) else "error"
                self._metrics.execution_retries.labels(**self._labels, kind=kind).inc()
                log.warning("%s on %s failed (%s: %s); retrying in %.0f ms", self.model_name, self.model.backend,
                            type(exc).__name__, exc, delays[0] * 1000)
                await trio.sleep(delays.pop(0))
                continue
            elapsed = trio.current_time() - started
            self._record_success(len(batch), elapsed)
            for i, job in enumerate(batch):
                job.finish(outcome.Value([out[i] for out in outputs]))
            return

    async def _run_backend(self, batch: np.ndarray) -> Sequence[np.ndarray]:
        with trio.fail_after(self.settings.timeout_s):
            if self.model.run_async is not None:
                return await self.model.run_async(batch)
            return await trio.to_thread.run_sync(
                _run_model, self.model, batch, abandon_on_cancel=True, limiter=self._limiter)

    async def _split_after_oom(self, batch: list[_Job], exc: BaseException) -> None:
        self.batch_limit = max(1, len(batch) // 2)
        self._successes_at_reduced_limit = 0
        self._metrics.batch_limit.labels(**self._labels).set(self.batch_limit)
        self._metrics.execution_retries.labels(**self._labels, kind="oom").inc()
        log.warning("%s on %s ran out of memory at batch %d (%s); batch limit is now %d", self.model_name,
                    self.model.backend, len(batch), exc, self.batch_limit)
        half = len(batch) // 2
        await self._execute(batch[:half])
        await self._execute(batch[half:])

    def _final_error(self, exc: BaseException) -> EdgeboxError:
        if is_out_of_memory(exc):
            return GpuOutOfMemory(f"{self.model.backend} is out of memory even at batch size 1 for "
                                  f"{self.model_name} ({exc}); free device memory or use a smaller model")
        return InternalError(f"{self.model.backend} failed to run {self.model_name} after "
                             f"{len(self.settings.retry_delays_s)} retries: {type(exc).__name__}: {exc}")

    def _fail(self, batch: list[_Job], error: EdgeboxError) -> None:
        log.error("%s", error.message)
        for job in batch:
            job.finish(outcome.Error(error))

    def _record_success(self, size: int, elapsed: float) -> None:
        self._mean_execution_s = 0.8 * self._mean_execution_s + 0.2 * elapsed
        self._metrics.executions.labels(**self._labels).inc()
        self._metrics.batch_size.labels(**self._labels).observe(size)
        self._metrics.infer_latency.labels(stage="compute").observe(elapsed)
        if self.batch_limit < self.settings.max_batch_size:
            self._successes_at_reduced_limit += 1
            if self._successes_at_reduced_limit >= GROW_BACK_AFTER:
                self.batch_limit = min(self.settings.max_batch_size, self.batch_limit * 2)
                self._successes_at_reduced_limit = 0
                self._metrics.batch_limit.labels(**self._labels).set(self.batch_limit)
                log.info("%s on %s: batch limit grown back to %d", self.model_name, self.model.backend,
                         self.batch_limit)

def _run_model(model: LoadedModel, batch: np.ndarray) -> Sequence[np.ndarray]:
    if model.supports_batch or len(batch) == 1:
        return model.run(batch)
    # The model takes batch 1 only: run the items one by one in this same thread, then stack per output.
    per_item = [model.run(batch[i:i + 1]) for i in range(len(batch))]
    return [np.concatenate([item[k] for item in per_item]) for k in range(len(per_item[0]))]
