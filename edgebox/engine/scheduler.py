"""The batching scheduler: one bounded queue per (model, backend), frames from every source batched together.

A queue hands over a batch when it holds `max_batch_size` frames, or when its oldest frame has waited
`max_queue_delay` and the device is free. Executions run in worker threads, as many at once as the loaded model
runs in parallel (`LoadedModel.parallel`: one on an accelerator, where the next batch already waits at the
device; `engine.cpu_executions` on CPU backends); they are retried with back-off, time out with
INFERENCE_TIMEOUT, and halve the batch on out-of-memory (growing it back later). Loading models and choosing
backends is `engine.models`' job.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
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
MIN_RETRY_AFTER_S = 0.05  # the smallest retry hint given with RESOURCE_EXHAUSTED
# Batches handed to an accelerator (GPU, NPU) at once: one running, the next already stacked and waiting at the
# device, which then starts it the moment the last one ends instead of waiting for the event loop. CPU backends
# get exactly as many as they run at once: there the device is the cores the dispatching runs on, and a batch
# waiting for a busy CPU was measured 3-10 % slower (docs/benchmarks.md#inference).
ACCELERATOR_PIPELINE_DEPTH = 2
# On shutdown, how long to wait for executions already on the device: a native runtime still running in a
# thread while the interpreter exits aborts the process.
SHUTDOWN_GRACE_S = 3.0


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
    abandoned: bool = False  # the caller timed out or was cancelled: never run it, drop its result

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
        self.frames_dropped = 0  # camera frames refused or evicted by the overflow policy
        self._metrics = metrics
        self._labels = {"model": model_name, "backend": model.backend}
        self._queue: collections.deque[_Job] = collections.deque()
        self._wakeup = trio.Event()
        # `model.parallel` executions at a time on the device; the next batch waits in its worker thread (or, for
        # a trio-native test backend, at the trio semaphore). Hung executions keep the device: later batches time
        # out.
        self.parallel = max(1, model.parallel)
        self._device = threading.BoundedSemaphore(self.parallel)
        self._device_async = trio.Semaphore(self.parallel)
        self.pipeline_depth = self.parallel if model.backend.endswith("-cpu") else max(
            self.parallel, ACCELERATOR_PIPELINE_DEPTH)
        # Worker threads, including abandoned ones until they return: a hung backend ties up at most this many.
        self._threads = trio.CapacityLimiter(self.pipeline_depth)
        self._slots = trio.Semaphore(self.pipeline_depth)
        self._in_flight = 0
        self._successes_at_reduced_limit = 0
        self._mean_execution_s = 0.05
        # Running means of execution seconds and batch size; their ratio is the cost of one frame (admission). The
        # first execution at each batch size is left out: it includes one-time setup (OpenVINO compiles for each
        # new input shape: 150-170 ms instead of 20-50 ms for the person model on 2 cores).
        self._mean_timed_execution_s: float | None = None
        self._mean_timed_batch = 0.0
        self._batch_sizes_seen: set[int] = set()
        metrics.batch_limit.labels(**self._labels).set(self.batch_limit)
        metrics.backend_in_use.labels(model=model_name, backend=model.backend, device=model.device).set(1)

    @property
    def mean_frame_s(self) -> float | None:
        """Backend seconds per frame: mean execution time / mean batch size, recent executions weighing most;
        None until an execution has been timed."""
        if self._mean_timed_execution_s is None:
            return None
        return self._mean_timed_execution_s / self._mean_timed_batch

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
            if job.result is None:  # timed out, or the caller was cancelled: take it out of the queue
                job.abandoned = True
                self._forget(job)
        if job.result is None:
            raise InferenceTimeout(
                f"{self.model_name} on {self.model.backend} did not answer within {self.settings.timeout_s:g} s "
                f"({len(self._queue)} frames queued); lower the load or raise engine.inference_timeout_s")
        return job.result.unwrap()

    def _make_room(self, droppable: bool) -> None:
        if droppable:
            self.frames_dropped += 1
            victim = next((j for j in self._queue if j.droppable), None)
            if victim is None:
                raise FrameDropped("dropped: scheduler queue full of client frames")
            self._queue.remove(victim)
            victim.finish(outcome.Error(FrameDropped("dropped: scheduler queue full, a newer frame replaced it")))
            return
        batches_ahead = math.ceil(len(self._queue) / (self.batch_limit * self.parallel))
        retry = max(MIN_RETRY_AFTER_S, self._mean_execution_s * batches_ahead)
        raise ResourceExhausted(
            f"the {self.model_name} queue on {self.model.backend} is full ({self.settings.capacity} frames)",
            retry_after_s=round(retry, 2))

    def _forget(self, job: _Job) -> None:
        try:
            self._queue.remove(job)
        except ValueError:
            pass  # already taken into a batch
        self._publish_depth()

    def _publish_depth(self) -> None:
        self._metrics.queue_depth.labels(**self._labels).set(len(self._queue))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The batching loop: wait for a batch, hand it to the backend (up to pipeline_depth at once), repeat."""
        try:
            async with trio.open_nursery() as executions:
                task_status.started()
                while True:
                    await self._batch_ready()
                    await self._slots.acquire()
                    batch = self._take_batch()  # taken as late as possible: frames that came meanwhile join
                    self._publish_depth()
                    if not batch:
                        self._slots.release()
                        continue
                    now = trio.current_time()
                    for job in batch:
                        self._metrics.infer_latency.labels(stage="queue").observe(now - job.enqueued_at)
                    self._in_flight += 1
                    executions.start_soon(self._dispatch, batch)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_GRACE_S):
                for _ in range(self.pipeline_depth):  # every thread token back = no backend call still running
                    await self._threads.acquire_on_behalf_of(object())

    async def _batch_ready(self) -> None:
        """Until the queue holds a full batch, or a partial one whose oldest frame waited max_queue_delay.

        A partial batch is not handed over while every execution slot of the device is busy: it would only wait
        there, and frames that arrive meanwhile can still join it.
        """
        while True:
            deadline = math.inf
            if self._queue:
                if len(self._queue) >= self.batch_limit:
                    return
                if self._in_flight < self.parallel:
                    deadline = self._queue[0].enqueued_at + self.settings.max_queue_delay_s
                    if trio.current_time() >= deadline:
                        return
            self._wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._wakeup.wait()

    async def _dispatch(self, batch: list[_Job]) -> None:
        try:
            await self._execute(batch)
        finally:
            self._in_flight -= 1
            self._slots.release()
            self._wakeup.set()

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

    async def _execute(self, batch: list[_Job]) -> EdgeboxError | None:
        """Run one batch to its end: every job gets its outputs or the error; returns that error, if any."""
        delays = list(self.settings.retry_delays_s)
        while True:
            batch = [job for job in batch if not job.abandoned]
            if not batch:
                return None  # every caller has given up (timed out or cancelled): running it would serve no one
            try:
                ran = await self._run_backend(batch)
            except trio.TooSlowError:
                return self._fail(batch, InferenceTimeout(
                    f"{self.model.backend} execution of {self.model_name} exceeded {self.settings.timeout_s:g} s"))
            except Exception as exc:  # noqa: BLE001 - backends raise anything; retried, then a coded error
                if is_out_of_memory(exc) and len(batch) > 1:
                    return await self._split_after_oom(batch, exc)
                if not delays:
                    return self._fail(batch, self._final_error(exc))
                kind = "oom" if is_out_of_memory(exc) else "error"
                self._metrics.execution_retries.labels(**self._labels, kind=kind).inc()
                log.warning("%s on %s failed (%s: %s); retrying in %.0f ms", self.model_name, self.model.backend,
                            type(exc).__name__, exc, delays[0] * 1000)
                await trio.sleep(delays.pop(0))
                continue
            if ran is None:
                continue  # every caller gave up while the batch waited for the device
            outputs, elapsed = ran
            self._record_success(len(batch), elapsed)
            for i, job in enumerate(batch):
                job.finish(outcome.Value([out[i] for out in outputs]))
            return None

    async def _run_backend(self, batch: list[_Job]) -> tuple[Sequence[np.ndarray], float] | None:
        """(outputs, seconds on the device), or None when no caller still wants the batch once it gets there."""
        tensors = [job.tensor for job in batch]
        wanted = _still_wanted(batch)
        with trio.fail_after(self.settings.timeout_s):
            if self.model.run_async is not None:
                async with self._device_async:
                    if not wanted():
                        return None
                    started = trio.current_time()
                    outputs = await self.model.run_async(np.stack(tensors))
                    return _checked(self.model, outputs, len(tensors)), trio.current_time() - started
            return await trio.to_thread.run_sync(
                _run_model, self.model, self._device, tensors, wanted, abandon_on_cancel=True, limiter=self._threads)

    async def _split_after_oom(self, batch: list[_Job], exc: BaseException) -> EdgeboxError | None:
        """Halve the batch limit and run `batch` in chunks of the (possibly further reduced) limit."""
        self._set_batch_limit(min(self.batch_limit, max(1, len(batch) // 2)))
        self._successes_at_reduced_limit = 0
        self._metrics.execution_retries.labels(**self._labels, kind="oom").inc()
        log.warning("%s on %s ran out of memory at batch %d (%s); batch limit is now %d", self.model_name,
                    self.model.backend, len(batch), exc, self.batch_limit)
        pending = batch
        while pending:
            chunk, pending = pending[:self.batch_limit], pending[self.batch_limit:]
            error = await self._execute(chunk)
            if isinstance(error, GpuOutOfMemory):
                # Out of memory even at batch 1 after every retry: the rest of this batch would wait as long
                # for the same answer.
                return self._fail(pending, error)
        return None

    def _final_error(self, exc: BaseException) -> EdgeboxError:
        if is_out_of_memory(exc):
            return GpuOutOfMemory(f"{self.model.backend} is out of memory even at batch size 1 for "
                                  f"{self.model_name} ({exc}); free device memory or use a smaller model")
        return InternalError(f"{self.model.backend} failed to run {self.model_name} after "
                             f"{len(self.settings.retry_delays_s)} retries: {type(exc).__name__}: {exc}")

    def _fail(self, batch: list[_Job], error: EdgeboxError) -> EdgeboxError:
        if batch:
            log.error("%s (%d frame(s))", error.message, len(batch))
        for job in batch:
            job.finish(outcome.Error(error))
        return error

    def _set_batch_limit(self, limit: int) -> None:
        self.batch_limit = limit
        self._metrics.batch_limit.labels(**self._labels).set(limit)

    def _record_success(self, size: int, elapsed: float) -> None:
        self._mean_execution_s = 0.8 * self._mean_execution_s + 0.2 * elapsed
        if size in self._batch_sizes_seen:
            if self._mean_timed_execution_s is None:
                self._mean_timed_execution_s, self._mean_timed_batch = elapsed, float(size)
            else:
                self._mean_timed_execution_s = 0.8 * self._mean_timed_execution_s + 0.2 * elapsed
                self._mean_timed_batch = 0.8 * self._mean_timed_batch + 0.2 * size
        self._batch_sizes_seen.add(size)
        self._metrics.executions.labels(**self._labels).inc()
        self._metrics.batch_size.labels(**self._labels).observe(size)
        self._metrics.infer_latency.labels(stage="compute").observe(elapsed)
        if self.batch_limit < self.settings.max_batch_size:
            self._successes_at_reduced_limit += 1
            if self._successes_at_reduced_limit >= GROW_BACK_AFTER:
                self._set_batch_limit(min(self.settings.max_batch_size, self.batch_limit * 2))
                self._successes_at_reduced_limit = 0
                log.info("%s on %s: batch limit grown back to %d", self.model_name, self.model.backend,
                         self.batch_limit)


def _still_wanted(batch: list[_Job]) -> Callable[[], bool]:
    return lambda: not all(job.abandoned for job in batch)


def _run_model(model: LoadedModel, device: threading.Semaphore, tensors: list[np.ndarray],
               wanted: Callable[[], bool]) -> tuple[Sequence[np.ndarray], float] | None:
    """Worker thread: stack the inputs while the device may still be busy (a batch of 8 face inputs is 23 MB:
    not on the event loop), wait for the device, run."""
    batch = tensors[0][np.newaxis] if len(tensors) == 1 else np.stack(tensors)
    with device:
        if not wanted():
            return None
        started = time.perf_counter()
        if model.supports_batch or len(batch) == 1:
            outputs = model.run(batch)
        else:  # the model takes batch 1 only: run the items one by one, then stack per output
            per_item = [model.run(batch[i:i + 1]) for i in range(len(batch))]
            outputs = [np.concatenate([item[k] for item in per_item]) for k in range(len(per_item[0]))]
        elapsed = time.perf_counter() - started
    return _checked(model, outputs, len(tensors)), elapsed


def _checked(model: LoadedModel, outputs: Sequence[np.ndarray], size: int) -> Sequence[np.ndarray]:
    for k, out in enumerate(outputs):
        if len(out) != size:
            raise ValueError(f"{model.backend} returned output {k} with batch axis {len(out)} for {size} inputs; "
                             "the model must keep the batch axis first")
    return outputs
