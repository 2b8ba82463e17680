"""The batching scheduler against a fault-injecting backend, on trio's mock clock (timings are exact)."""

from __future__ import annotations

import numpy as np
import outcome
import pytest
import trio

from edgebox.engine.scheduler import ACCELERATOR_PIPELINE_DEPTH, GROW_BACK_AFTER, RETRY_DELAYS_S, FrameDropped
from edgebox.errors import ErrorCode, GpuOutOfMemory, InferenceTimeout, InternalError, ResourceExhausted
from edgebox.metrics import Metrics, histogram_sum_count, total
from tests.engine.faults import FaultyBackend, frame, serving

DEPTH = ACCELERATOR_PIPELINE_DEPTH  # the fake backend is a GPU: the next batch waits at the device


async def _infer_all(queue, values, *, droppable=True):
    """Submit one frame per value from concurrent sources; their outcomes, in order."""
    results: list[outcome.Outcome | None] = [None] * len(values)

    async def source(i: int) -> None:
        results[i] = await outcome.acapture(queue.infer, frame(values[i]), droppable=droppable)

    async with trio.open_nursery() as nursery:
        for i in range(len(values)):
            nursery.start_soon(source, i)
    return results


async def _rpc(queue, tensor) -> None:
    await queue.infer(tensor, droppable=False)


# -- batching --------------------------------------------------------------------------------------------------
async def test_frames_from_concurrent_sources_batch_together_up_to_max_batch_size(autojump_clock):
    backend = FaultyBackend(compute_s=0.01)
    async with serving(backend.model, max_batch_size=4, max_queue_delay_s=0.1) as queue:
        results = await _infer_all(queue, list(range(10)))
    assert backend.sizes == [4, 4, 2]
    # The two left over wait for the delay cap, counted from when they were queued (t=0).
    assert backend.times[2] == pytest.approx(0.1)
    for i, result in enumerate(results):
        sums, echoed = result.unwrap()
        assert sums == pytest.approx(6 * i)  # each source gets the outputs of its own frame
        assert np.array_equal(echoed, frame(i))


async def test_partial_batch_flushes_after_max_queue_delay_of_its_oldest_frame(autojump_clock):
    backend = FaultyBackend()
    async with (
        serving(backend.model, max_batch_size=8, max_queue_delay_s=0.1) as queue,
        trio.open_nursery() as nursery,
    ):
        for i in range(3):
            nursery.start_soon(_rpc, queue, frame(i))
        await trio.sleep(0.05)
        nursery.start_soon(_rpc, queue, frame(3))  # joins the waiting batch
        await trio.sleep(0.1)
        nursery.start_soon(_rpc, queue, frame(4))  # t=0.15: a batch of its own, flushed at 0.25
    assert backend.sizes == [4, 1]
    assert backend.times == pytest.approx([0.1, 0.25])


async def test_inputs_of_different_shapes_go_in_separate_batches(autojump_clock):
    backend = FaultyBackend()
    async with (
        serving(backend.model, max_batch_size=8, max_queue_delay_s=0.0) as queue,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_rpc, queue, frame(1, (2, 3)))
        nursery.start_soon(_rpc, queue, frame(2, (4, 4)))
    assert sorted(backend.sizes) == [1, 1]


# -- retries and timeouts ----------------------------------------------------------------------------------------
async def test_failing_backend_is_retried_after_100_200_400_ms_then_internal_error_9999(autojump_clock):
    backend = FaultyBackend()
    backend.failures_left = 1000
    metrics = Metrics()
    async with serving(backend.model, max_queue_delay_s=0.0, metrics=metrics) as queue:
        with pytest.raises(InternalError) as info:
            await queue.infer(frame(1), droppable=False)
    assert info.value.code == ErrorCode.INTERNAL_ERROR == 9999
    assert "after 3 retries" in info.value.message and "injected backend failure" in info.value.message
    assert backend.times == pytest.approx([0.0, 0.1, 0.3, 0.7])
    assert [b - a for a, b in zip(backend.times, backend.times[1:])] == pytest.approx(list(RETRY_DELAYS_S))
    assert total(metrics.execution_retries, kind="error") == 3


async def test_execution_that_fails_twice_succeeds_on_the_third_try(autojump_clock):
    backend = FaultyBackend()
    backend.failures_left = 2
    async with serving(backend.model, max_queue_delay_s=0.0) as queue:
        sums, _ = await queue.infer(frame(2), droppable=False)
    assert sums == pytest.approx(12)
    assert backend.times == pytest.approx([0.0, 0.1, 0.3])


async def test_hung_backend_gives_inference_timeout_3001_and_the_queue_recovers(autojump_clock):
    backend = FaultyBackend()
    backend.hang = True
    async with serving(backend.model, max_queue_delay_s=0.0, timeout_s=2.0) as queue:
        with pytest.raises(InferenceTimeout) as info:
            await queue.infer(frame(1), droppable=False)
        assert info.value.code == ErrorCode.INFERENCE_TIMEOUT == 3001
        assert trio.current_time() == pytest.approx(2.0)
        backend.hang = False
        sums, _ = await queue.infer(frame(1), droppable=False)
    assert sums == pytest.approx(6)


async def test_frame_that_times_out_while_queued_never_reaches_the_backend(autojump_clock):
    backend = FaultyBackend(compute_s=0.6)
    async with serving(backend.model, max_batch_size=1, max_queue_delay_s=0.0, timeout_s=1.0) as queue:
        results = await _infer_all(queue, [1, 2, 3], droppable=False)
        assert queue.depth == 0
    # The first frame runs 0-0.6; the second from 0.6, but its caller gives up at 1.0; the third is still queued
    # at 1.0 and is never run.
    timeouts = [r for r in results if isinstance(r, outcome.Error) and isinstance(r.error, InferenceTimeout)]
    assert len(timeouts) == 2  # (which source's frame goes first is trio's choice)
    assert backend.sizes == [1, 1]


async def test_cancelled_caller_frame_is_taken_out_of_the_queue_and_skipped(autojump_clock):
    backend = FaultyBackend()
    backend.gate = trio.Event()
    async with (
        serving(backend.model, max_batch_size=1, max_queue_delay_s=0.0) as queue,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_rpc, queue, frame(1))  # occupies the backend
        await trio.sleep(0.01)
        with trio.move_on_after(0.01):  # a client that gives up (its RPC was cancelled)
            await queue.infer(frame(2), droppable=False)
        assert queue.depth == 0
        nursery.start_soon(_rpc, queue, frame(3))
        await trio.sleep(0.01)
        backend.gate.set()
    assert len(backend.calls) == 2


async def test_retries_stop_when_every_caller_has_given_up(autojump_clock):
    backend = FaultyBackend()
    backend.failures_left = 1000
    async with serving(backend.model, max_queue_delay_s=0.0, timeout_s=0.15) as queue:
        with pytest.raises(InferenceTimeout):
            await queue.infer(frame(1), droppable=False)
        await trio.sleep(1.0)
    assert backend.times == pytest.approx([0.0, 0.1])  # not 0.3 and 0.7: nobody waits for those


# -- out of memory -----------------------------------------------------------------------------------------------
async def test_oom_at_batch_8_halves_to_4_2_1_and_every_frame_succeeds(autojump_clock):
    backend = FaultyBackend()
    backend.oom_above = 1
    metrics = Metrics()
    async with serving(backend.model, max_batch_size=8, max_queue_delay_s=0.01, metrics=metrics) as queue:
        results = await _infer_all(queue, list(range(8)), droppable=False)
        assert queue.batch_limit == 1
    assert backend.sizes == [8, 4, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    assert [r.unwrap()[0] for r in results] == pytest.approx([6 * i for i in range(8)])
    assert total(metrics.batch_limit, model="fake") == 1
    assert total(metrics.execution_retries, kind="oom") == 3


async def test_batch_limit_grows_back_after_successes_at_the_reduced_limit(autojump_clock):
    backend = FaultyBackend()
    backend.oom_above = 1
    metrics = Metrics()
    async with serving(backend.model, max_batch_size=8, max_queue_delay_s=0.01, metrics=metrics) as queue:
        await _infer_all(queue, list(range(8)), droppable=False)
        backend.oom_above = None  # memory was freed
        seen = [total(metrics.batch_limit, model="fake")]
        for _ in range(3):
            executions = len(backend.calls)
            while len(backend.calls) - executions < GROW_BACK_AFTER:
                await queue.infer(frame(1), droppable=False)
            seen.append(total(metrics.batch_limit, model="fake"))
        assert queue.batch_limit == 8
    assert seen == [1, 2, 4, 8]  # one doubling per GROW_BACK_AFTER successful executions


async def test_oom_persisting_at_batch_1_gives_gpu_out_of_memory_3002_only_after_halving(autojump_clock):
    backend = FaultyBackend()
    backend.oom_above = 0
    async with serving(backend.model, max_batch_size=8, max_queue_delay_s=0.01) as queue:
        results = await _infer_all(queue, list(range(8)), droppable=False)
    assert backend.sizes == [8, 4, 2, 1, 1, 1, 1]  # halved to 1, then the 3 retries at batch 1
    for result in results:
        assert isinstance(result.error, GpuOutOfMemory)
        assert result.error.code == ErrorCode.GPU_OUT_OF_MEMORY == 3002
        assert "CUDA out of memory" in result.error.message


# -- overflow ----------------------------------------------------------------------------------------------------
async def test_full_queue_refuses_rpc_frames_with_resource_exhausted_and_a_retry_hint(autojump_clock):
    backend = FaultyBackend()
    backend.gate = trio.Event()
    async with (
        serving(backend.model, max_batch_size=1, max_queue_delay_s=0.0, capacity=3) as queue,
        trio.open_nursery() as nursery,
    ):
        for i in range(DEPTH + 3):  # handed to the backend (one held at the gate), then three queued
            nursery.start_soon(_rpc, queue, frame(i))
            await trio.sleep(0.01)
        assert queue.depth == 3
        with pytest.raises(ResourceExhausted) as info:
            await queue.infer(frame(9), droppable=False)
        backend.gate.set()
    assert info.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert info.value.retry_after_s is not None and info.value.retry_after_s > 0
    assert len(backend.calls) == DEPTH + 3


async def test_full_queue_drops_the_oldest_camera_frame_for_a_new_one(autojump_clock):
    backend = FaultyBackend()
    backend.gate = trio.Event()
    results: dict[str, outcome.Outcome] = {}

    async def submit(name: str, droppable: bool) -> None:
        results[name] = await outcome.acapture(queue.infer, frame(len(results)), droppable=droppable)

    async with (
        serving(backend.model, max_batch_size=1, max_queue_delay_s=0.0, capacity=3) as queue,
        trio.open_nursery() as nursery,
    ):
        handed_over = [(f"running{i}", True) for i in range(DEPTH)]
        for name, droppable in [*handed_over, ("cam1", True), ("rpc", False), ("cam2", True), ("cam3", True)]:
            nursery.start_soon(submit, name, droppable)
            await trio.sleep(0.01)
        assert queue.depth == 3
        backend.gate.set()
        assert queue.frames_dropped == 1
    assert isinstance(results["cam1"], outcome.Error) and isinstance(results["cam1"].error, FrameDropped)
    for name in ("rpc", "cam2", "cam3", *dict(handed_over)):
        results[name].unwrap()
    assert len(backend.calls) == DEPTH + 3


async def test_camera_frame_is_dropped_itself_when_the_queue_is_full_of_client_frames(autojump_clock):
    backend = FaultyBackend()
    backend.gate = trio.Event()
    async with (
        serving(backend.model, max_batch_size=1, max_queue_delay_s=0.0, capacity=2) as queue,
        trio.open_nursery() as nursery,
    ):
        for i in range(DEPTH + 2):
            nursery.start_soon(_rpc, queue, frame(i))
            await trio.sleep(0.01)
        with pytest.raises(FrameDropped):
            await queue.infer(frame(9), droppable=True)
        assert queue.frames_dropped == 1
        backend.gate.set()


# -- metrics -----------------------------------------------------------------------------------------------------
async def test_metrics_record_queue_wait_compute_time_and_batch_size(autojump_clock):
    backend = FaultyBackend(compute_s=0.05)
    metrics = Metrics()
    async with serving(backend.model, max_batch_size=4, max_queue_delay_s=0.1, metrics=metrics) as queue:
        await _infer_all(queue, [1, 2], droppable=False)  # one batch of 2, flushed at 0.1, computed in 0.05
        await _infer_all(queue, [1, 2, 3, 4], droppable=False)  # a full batch, at once
    assert histogram_sum_count(metrics.infer_latency, stage="queue") == pytest.approx((0.2, 6))
    assert histogram_sum_count(metrics.infer_latency, stage="compute") == pytest.approx((0.1, 2))
    assert histogram_sum_count(metrics.batch_size) == (6, 2)
    assert total(metrics.executions) == 2  # mean batch = 6 frames / 2 executions = 3
    assert total(metrics.queue_depth) == 0


# -- pipelining --------------------------------------------------------------------------------------------------
async def test_next_full_batch_is_handed_over_at_once_and_starts_when_the_device_frees(autojump_clock):
    backend = FaultyBackend(compute_s=0.1)
    async with serving(backend.model, max_batch_size=2, max_queue_delay_s=0.05) as queue:
        await _infer_all(queue, [1, 2, 3, 4, 5, 6], droppable=False)
    assert backend.sizes == [2, 2, 2]
    assert backend.times == pytest.approx([0.0, 0.1, 0.2])  # back to back, one at a time


async def test_partial_batch_waits_in_the_queue_while_the_device_is_busy_so_later_frames_join(autojump_clock):
    backend = FaultyBackend(compute_s=0.1)
    async with (
        serving(backend.model, max_batch_size=4, max_queue_delay_s=0.01) as queue,
        trio.open_nursery() as nursery,
    ):
        for i in range(4):
            nursery.start_soon(_rpc, queue, frame(i))  # a full batch: on the device from t=0 to 0.1
        await trio.sleep(0.02)
        nursery.start_soon(_rpc, queue, frame(4))  # due at 0.03, but the device is busy until 0.1
        await trio.sleep(0.03)
        nursery.start_soon(_rpc, queue, frame(5))
        nursery.start_soon(_rpc, queue, frame(6))
    assert backend.sizes == [4, 3]
    assert backend.times == pytest.approx([0.0, 0.1])


async def test_cpu_backend_gets_one_batch_at_a_time_so_the_next_one_forms_in_the_queue(autojump_clock):
    backend = FaultyBackend(name="fake-cpu")
    backend.gate = trio.Event()
    async with (
        serving(backend.model, max_batch_size=1, max_queue_delay_s=0.0, capacity=3) as queue,
        trio.open_nursery() as nursery,
    ):
        assert queue.pipeline_depth == 1
        for i in range(4):  # one on the device (held at the gate), three queued
            nursery.start_soon(_rpc, queue, frame(i))
            await trio.sleep(0.01)
        assert queue.depth == 3
        backend.gate.set()
    assert len(backend.calls) == 4


async def test_cpu_backend_running_two_at_once_gets_two_batches_and_the_third_forms_in_the_queue(autojump_clock):
    backend = FaultyBackend(name="fake-cpu", compute_s=0.1, parallel=2)
    async with serving(backend.model, max_batch_size=2, max_queue_delay_s=0.05) as queue:
        assert queue.pipeline_depth == 2
        await _infer_all(queue, [1, 2, 3, 4, 5, 6, 7, 8], droppable=False)
    assert backend.sizes == [2, 2, 2, 2]
    assert backend.times == pytest.approx([0.0, 0.0, 0.1, 0.1])  # two side by side, then the next two


async def test_partial_batch_is_handed_over_when_one_of_two_execution_slots_is_free(autojump_clock):
    backend = FaultyBackend(name="fake-cpu", compute_s=0.1, parallel=2)
    async with (
        serving(backend.model, max_batch_size=4, max_queue_delay_s=0.01) as queue,
        trio.open_nursery() as nursery,
    ):
        for i in range(4):
            nursery.start_soon(_rpc, queue, frame(i))  # a full batch on one slot from t=0 to 0.1
        await trio.sleep(0.02)
        nursery.start_soon(_rpc, queue, frame(4))  # the other slot is free: runs when due, at 0.03
    assert backend.sizes == [4, 1]
    assert backend.times == pytest.approx([0.0, 0.03])


async def test_full_queue_retry_hint_counts_the_batches_that_run_at_once(autojump_clock):
    hints = {}
    for parallel in (1, 2):
        backend = FaultyBackend(name="fake-cpu", parallel=parallel)
        backend.gate = trio.Event()
        async with (
            serving(backend.model, max_batch_size=1, max_queue_delay_s=0.0, capacity=4) as queue,
            trio.open_nursery() as nursery,
        ):
            for i in range(4 + parallel):  # `parallel` held on the device, four queued
                nursery.start_soon(_rpc, queue, frame(i))
                await trio.sleep(0.01)
            with pytest.raises(ResourceExhausted) as refused:
                await _rpc(queue, frame(9))
            hints[parallel] = refused.value.retry_after_s
            backend.gate.set()
    assert hints[2] == pytest.approx(hints[1] / 2, abs=0.01)
