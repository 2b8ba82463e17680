"""Admission control: the decode and inference budget estimates (edgebox.admission), and AddCamera refusing a
camera that does not fit with RESOURCE_EXHAUSTED through gRPC.

The model queues are real ModelQueues whose backend takes a known time per frame on MockClock (a backend at the
I/O boundary), so the measured per-frame cost the estimate uses is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
from grpclib.const import Status

from edgebox.admission import (
    ASSUMED_HEIGHT,
    ASSUMED_SOURCE_FPS,
    ASSUMED_WIDTH,
    MIN_MEASURED_DECODE_CPU_S,
    AdmissionSettings,
    CameraLoad,
    assess,
    camera_load,
    check,
    decode_rate_per_core,
)
from edgebox.cameras import CameraState, CameraStatus, decode_meter, parse_camera_options
from edgebox.client import EdgeboxClientError, pb
from edgebox.engine.backends.base import LoadedModel
from edgebox.engine.scheduler import ModelQueue, QueueSettings
from edgebox.errors import ErrorCode, ResourceExhausted
from edgebox.metrics import Metrics
from tests.e2e.engine import open_engine, person_workflow

SETTINGS = AdmissionSettings(max_load=0.9, cores=2)
DECODE_RATE = (100e6, True)  # 100 Mpx/s per core
VGA_10 = 640 * 360 * 10.0  # a 640x360 stream at 10 fps, in pixels per second


async def measured_queue(nursery: trio.Nursery, frame_s: float, name: str = "person", parallel: int = 1) -> ModelQueue:
    """A real ModelQueue whose backend takes `frame_s` per frame, measured by two executions (the first one at a
    batch size is not counted: it stands for one-time setup)."""

    async def run_async(batch: np.ndarray) -> list[np.ndarray]:
        await trio.sleep(frame_s * len(batch))
        return [np.zeros((len(batch), 1), np.float32)]

    model = LoadedModel("openvino-cpu", "CPU (test)", run=lambda batch: [], run_async=run_async, parallel=parallel)
    settings = QueueSettings(max_batch_size=8, max_queue_delay_s=0.0, capacity=16, timeout_s=10.0)
    queue = ModelQueue(name, model, settings, Metrics())
    await nursery.start(queue.run)
    await queue.infer(np.zeros(3, np.uint8), droppable=False)
    assert queue.mean_frame_s is None
    await queue.infer(np.zeros(3, np.uint8), droppable=False)
    assert queue.mean_frame_s == pytest.approx(frame_s)
    return queue


async def test_the_queue_measures_the_cost_of_a_frame_as_its_batches_run(nursery, autojump_clock):
    """Per frame = mean execution time / mean batch size: a fixed cost per execution is shared by the batch, and
    the first execution at a new batch size (one-time setup in real backends) is not counted."""
    first_at_size: set[int] = set()

    async def run_async(batch: np.ndarray) -> list[np.ndarray]:
        setup = 0.5 if len(batch) not in first_at_size else 0.0
        first_at_size.add(len(batch))
        await trio.sleep(setup + 0.020 + 0.010 * len(batch))
        return [np.zeros((len(batch), 1), np.float32)]

    model = LoadedModel("openvino-cpu", "CPU (test)", run=lambda batch: [], run_async=run_async)
    settings = QueueSettings(max_batch_size=4, max_queue_delay_s=0.001, capacity=16, timeout_s=10.0)
    queue = ModelQueue("person", model, settings, Metrics())
    await nursery.start(queue.run)
    for _ in range(30):
        async with trio.open_nursery() as frames:
            for _ in range(4):
                frames.start_soon(lambda: queue.infer(np.zeros(3, np.uint8), droppable=False))
    assert queue.mean_frame_s == pytest.approx((0.020 + 4 * 0.010) / 4, rel=0.01)


def streaming(resolution: str = "640x360", fps_in: float = 10.0) -> CameraStatus:
    return CameraStatus(state=CameraState.STREAMING, fps_in=fps_in, resolution=resolution)


def load(camera_id: str, fps: float, queues=(), status: CameraStatus | None = None) -> CameraLoad:
    return camera_load(camera_id, parse_camera_options({"fps": str(fps)}), status, list(queues))


def fleet(n: int, fps: float, queues=()) -> list[CameraLoad]:
    return [load(f"cam{i}", fps, queues, streaming()) for i in range(n)]


def test_a_streaming_camera_is_measured_and_samples_at_most_its_source_rate():
    cam = load("cam", 30, status=streaming("640x360", fps_in=10.0))
    assert cam.measured and cam.pixels_per_s == pytest.approx(VGA_10) and cam.sampled_fps == 10.0
    cam = load("cam", 2, status=streaming("640x360", fps_in=10.0))
    assert cam.sampled_fps == 2.0


def test_a_camera_not_seen_streaming_is_reserved_at_the_assumed_size_and_its_fps_option():
    for status in (None, CameraStatus(state=CameraState.RECONNECTING, resolution="640x360")):
        cam = load("cam", 5, status=status)
        assert not cam.measured and cam.sampled_fps == 5.0
        assert cam.pixels_per_s == ASSUMED_WIDTH * ASSUMED_HEIGHT * ASSUMED_SOURCE_FPS


async def test_fifty_small_cameras_at_two_fps_fit_when_the_model_is_fast_enough(nursery, autojump_clock):
    queue = await measured_queue(nursery, 0.008)  # 100 frames/s would take 0.8 s per s
    budgets = check(load("new", 2, [queue]), fleet(49, 2, [queue]), SETTINGS, DECODE_RATE)
    decode, inference = budgets
    assert decode.name == "decode" and decode.fits and decode.used == pytest.approx(49 * VGA_10 / 100e6)
    assert inference.fits and inference.used == pytest.approx(49 * 2 * 0.008)
    assert inference.need == pytest.approx(2 * 0.008)
    assert decode.need == pytest.approx(VGA_10 / 100e6)  # a new camera is expected to be like the others


async def test_refused_when_the_model_queue_would_pass_max_load(nursery, autojump_clock):
    queue = await measured_queue(nursery, 0.040)  # 0.9 s per s = 22.5 frames/s
    others = fleet(11, 2, [queue])  # 22 frames/s = 0.88
    with pytest.raises(ResourceExhausted) as refused:
        check(load("cam12", 2, [queue]), others, SETTINGS, DECODE_RATE)
    message = refused.value.message
    assert "camera 'cam12' does not fit" in message and "inference (person on openvino-cpu)" in message
    assert "0.88 of 0.90" in message and "needs 0.08 more" in message
    assert "22.0 frames/s" in message and "40.0 ms per frame" in message
    assert "engine.admission_max_load" in message and "fps" in message
    assert refused.value.code is ErrorCode.RESOURCE_EXHAUSTED
    check(load("cam12", 0.25, [queue]), others, SETTINGS, DECODE_RATE)  # at 0.25 fps it fits: 0.89


async def test_a_model_running_two_batches_at_once_has_twice_the_execution_time_to_give(nursery, autojump_clock):
    queue = await measured_queue(nursery, 0.040, parallel=2)  # 40 ms per frame in each of two executions
    others = fleet(11, 2, [queue])  # 22 frames/s = 0.88 s of execution per s, of 2 x 0.9
    [_, inference] = check(load("cam12", 2, [queue]), others, SETTINGS, DECODE_RATE)
    assert inference.fits and inference.capacity == pytest.approx(1.8)
    assert "2 execution(s) at once" in inference.basis
    with pytest.raises(ResourceExhausted, match="1.76 of 1.80"):
        check(load("cam23", 2, [queue]), fleet(22, 2, [queue]), SETTINGS, DECODE_RATE)


async def test_only_the_cameras_on_the_same_model_queue_count(nursery, autojump_clock):
    person = await measured_queue(nursery, 0.040, "person")
    face = await measured_queue(nursery, 0.040, "face")
    others = fleet(11, 2, [face])  # busy, but another model
    [_, inference] = check(load("new", 2, [person]), others, SETTINGS, DECODE_RATE)
    assert inference.name.startswith("inference (person") and inference.used == 0


def test_refused_when_decoding_would_pass_max_load_of_the_cores():
    hd = streaming("1920x1080", fps_in=30.0)  # 62.2 Mpx/s: 0.62 of a core at 100 Mpx/s per core
    budgets = check(load("new", 1), [load("a", 1, status=hd)], SETTINGS, DECODE_RATE)
    assert budgets[0].fits  # 1.24 cores of 1.80: a new camera is expected to be like the streaming ones
    with pytest.raises(ResourceExhausted, match=r"decode: 1\.24 of 1\.80 cores in use, the new camera needs 0\.62"):
        check(load("new", 1), [load("a", 1, status=hd), load("b", 1, status=hd)], SETTINGS, DECODE_RATE)
    budgets = check(load("new", 1), [load("a", 1, status=hd), load("b", 1, status=hd)], SETTINGS, (400e6, True))
    assert budgets[0].fits and "400 Mpx/s per core (measured)" in budgets[0].basis


def test_cameras_not_streaming_yet_count_like_the_streaming_ones():
    others = fleet(5, 2) + [load(f"new{i}", 2) for i in range(40)]  # 40 added, not streaming yet
    [decode] = assess(load("next", 2), others, SETTINGS, DECODE_RATE)
    assert decode.used == pytest.approx(45 * VGA_10 / 100e6) and decode.need == pytest.approx(VGA_10 / 100e6)
    assert "like the streaming cameras" in decode.basis


def test_the_first_camera_is_reserved_at_the_assumed_size():
    [decode] = assess(load("new", 1), [], SETTINGS, (120e6, False))
    assert decode.need == pytest.approx(ASSUMED_WIDTH * ASSUMED_HEIGHT * ASSUMED_SOURCE_FPS / 120e6)
    assert "assumed until measured" in decode.basis


def declared(camera_id: str, fps: float, stream: str) -> CameraLoad:
    return camera_load(camera_id, parse_camera_options({"fps": str(fps), "expected_stream": stream}), None, [])


def test_a_burst_of_declared_cameras_on_a_fresh_node_counts_what_they_declare():
    # 50 cameras added at once to a node where none streams yet: without a declaration each is reserved at
    # 1280x720@15 and the 14th of these is refused (decode at 100 Mpx/s per core, 1.8 cores); declared as the
    # 640x360@10 sub-streams they are, all 50 fit.
    undeclared: list[CameraLoad] = []
    with pytest.raises(ResourceExhausted, match="declare it with the expected_stream option"):
        for i in range(50):
            check(load(f"cam{i}", 2), undeclared, SETTINGS, DECODE_RATE)
            undeclared.append(load(f"cam{i}", 2))
    assert len(undeclared) == 13
    burst: list[CameraLoad] = []
    for i in range(50):
        new = declared(f"cam{i}", 2, "640x360@10")
        [decode] = check(new, burst, SETTINGS, DECODE_RATE)
        burst.append(new)
    assert decode.used == pytest.approx(49 * VGA_10 / 100e6) and "expected_stream option declares" in decode.basis


def test_a_declared_camera_counts_as_declared_until_it_streams_then_as_measured():
    cam = declared("cam", 30, "1920x1080@25")
    assert cam.declared and not cam.measured and cam.sampled_fps == 25.0  # never more than the source gives
    assert cam.pixels_per_s == 1920 * 1080 * 25
    # Beside streaming VGA cameras it still counts at its declared size, not at theirs.
    [decode] = assess(declared("hd", 2, "1920x1080@25"), fleet(3, 2), SETTINGS, DECODE_RATE)
    assert decode.need == pytest.approx(1920 * 1080 * 25 / 100e6)
    options = parse_camera_options({"fps": "2", "expected_stream": "1920x1080@25"})
    cam = camera_load("cam", options, streaming("640x360", fps_in=10.0), [])
    assert cam.measured and not cam.declared and cam.pixels_per_s == pytest.approx(VGA_10)


def test_a_model_that_has_not_run_yet_is_not_judged():
    class NeverRun:  # what ModelQueue reports before its first execution
        mean_frame_s = None

    budgets = assess(load("new", 30, [NeverRun()]), fleet(3, 30, [NeverRun()]), SETTINGS, DECODE_RATE)
    assert [b.name for b in budgets] == ["decode"]


async def test_five_hundred_cameras_at_thirty_fps_are_refused_long_before_the_end(nursery, autojump_clock):
    queue = await measured_queue(nursery, 0.010)  # even a fast model: 90 frames/s at most
    admitted: list[CameraLoad] = []
    with pytest.raises(ResourceExhausted, match="inference"):
        for i in range(500):
            new = load(f"cam{i}", 30, [queue])
            check(new, admitted, SETTINGS, DECODE_RATE)
            admitted.append(load(f"cam{i}", 30, [queue], streaming(fps_in=30.0)))
    assert len(admitted) == 3  # 3 x 30 x 10 ms = 0.9


def test_max_load_zero_turns_admission_off():
    uhd = streaming("3840x2160", fps_in=30.0)
    off = AdmissionSettings(max_load=0.0, cores=2)
    assert check(load("new", 30), [load(f"c{i}", 30, status=uhd) for i in range(100)], off, DECODE_RATE) == []


def test_the_decode_rate_is_measured_once_enough_decode_time_was_seen():
    pixels, cpu_s = decode_meter.totals()
    if cpu_s < MIN_MEASURED_DECODE_CPU_S:  # in a fresh process nothing has been decoded yet
        assert decode_rate_per_core(123e6) == (123e6, False)
        decode_meter.add(int(500e6 * MIN_MEASURED_DECODE_CPU_S), MIN_MEASURED_DECODE_CPU_S)
    pixels, cpu_s = decode_meter.totals()
    rate, measured = decode_rate_per_core(123e6)
    assert measured and rate == pytest.approx(pixels / cpu_s)


async def test_add_camera_that_does_not_fit_is_refused_resource_exhausted_through_grpc(tmp_path: Path):
    async with open_engine(tmp_path, max_cameras=1000) as engine:
        await engine.call("deploy_workflow", person_workflow())
        await engine.call("add_camera", "cam1", "demo://person", "people", {"fps": "1"})
        subscription = engine.subscribe(camera_ids=["cam1"], omit_images=True)
        await subscription.wait_for(lambda r: len(r) >= 2, timeout=60, what="2 results (the model is measured)")
        with pytest.raises(EdgeboxClientError) as refused:
            for i in range(2, 501):
                await engine.call("add_camera", f"cam{i}", "demo://person", "people", {"fps": "30"})
        subscription.cancel()
        error = refused.value
        print(f"\nrefused after {i - 2} more camera(s): {error.message}")
        assert error.status is Status.RESOURCE_EXHAUSTED and error.code == ErrorCode.RESOURCE_EXHAUSTED
        assert i < 10 and "does not fit this node" in error.message and "inference (person" in error.message
        cameras = {c.camera_id for c in await engine.call("list_cameras")}
        assert f"cam{i}" not in cameras and len(cameras) == i - 1
        await engine.call("add_camera", "slow", "demo://empty", "people", {"fps": "0.1"})  # a small one still fits


async def test_add_camera_counts_a_declared_stream_refusing_an_8k_one_and_admitting_fifty_sub_streams(tmp_path: Path):
    async with open_engine(tmp_path, max_cameras=64) as engine:
        await engine.call("deploy_workflow", pb.WorkflowSpec(workflow_id="moving", plugins=["motion"]))
        with pytest.raises(EdgeboxClientError) as refused:  # 8K at 60 fps: ~2 Gpx/s, beyond any 2-core box
            await engine.call("add_camera", "huge", "demo://empty", "moving", {"expected_stream": "7680x4320@60"})
        assert refused.value.status is Status.RESOURCE_EXHAUSTED
        assert "as its expected_stream option declares" in refused.value.message
        for i in range(50):
            await engine.call("add_camera", f"cam{i:02d}", "demo://empty", "moving",
                              {"fps": "2", "expected_stream": "640x360@10"})
        assert len(await engine.call("list_cameras")) == 50
        with pytest.raises(EdgeboxClientError) as bad:
            await engine.call("add_camera", "odd", "demo://empty", "moving", {"expected_stream": "640x360"})
        assert bad.value.status is Status.INVALID_ARGUMENT and "WIDTHxHEIGHT@FPS" in bad.value.message
