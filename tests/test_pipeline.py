"""CameraPipeline with the real person model: one result per sampled frame, snapshots for alarms, frame age,
the busy-drop overflow policy, a workflow swap between two frames, and the ROI.

Frames are handed to the pipeline directly (the decode side is tested in tests/cameras and tests/e2e).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import trio
import trio.testing

from edgebox.cameras import CapturedFrame, Roi
from edgebox.config import EngineConfig
from edgebox.engine.hardware import detect_hardware
from edgebox.engine.models import ModelPool
from edgebox.errors import ErrorCode, WorkflowNotFound
from edgebox.metrics import Metrics, histogram_sum_count, total
from edgebox.pipeline import CameraPipeline
from edgebox.plugins_loader import builtin_plugin_dir, load_plugins
from edgebox.results import Delivery, Result, ResultFilter, ResultHub, Subscription, TrioSink
from edgebox.workflows.runtime import WorkflowRuntime
from edgebox.workflows.spec import parse_workflow_spec

PERSON_PNG = Path(__file__).parent / "data" / "astronaut.png"
RESULT_TIMEOUT_S = 60.0  # generous: the machine may be busy


def person_frame(width: int = 640, height: int = 360, *, right_half: bool = False) -> np.ndarray:
    """The astronaut photo letterboxed into a width x height frame (or into its right half only)."""
    photo = cv2.imread(str(PERSON_PNG), cv2.IMREAD_COLOR)
    canvas = np.full((height, width, 3), 90, np.uint8)
    box_w = width // 2 if right_half else width
    scale = min(box_w / photo.shape[1], height / photo.shape[0])
    w, h = int(photo.shape[1] * scale), int(photo.shape[0] * scale)
    x0 = (width - w) if right_half else (width - w) // 2
    canvas[(height - h) // 2:(height - h) // 2 + h, x0:x0 + w] = cv2.resize(photo, (w, h))
    return canvas


def empty_frame() -> np.ndarray:
    return np.full((360, 640, 3), 128, np.uint8)


def captured(seq: int, image: np.ndarray, age_s: float = 0.0) -> CapturedFrame:
    return CapturedFrame("cam1", seq, image, time.time() - age_s, trio.current_time())


class Rig:
    """A pipeline for camera cam1 wired to a real hub and real workflow runtimes, collecting its results."""

    def __init__(self, nursery: trio.Nursery, runtimes: dict[str, WorkflowRuntime], metrics: Metrics,
                 roi: Roi | None = None) -> None:
        self.runtimes = runtimes
        self.metrics = metrics
        self.hub = ResultHub(lambda r, with_image: b"", metrics)
        self.sink = TrioSink(64)
        self.hub.subscribe(Subscription(ResultFilter(), self.sink, 64))
        self.pipeline = CameraPipeline("cam1", "wf", roi, self._runtime_of, self.hub, metrics)
        nursery.start_soon(self.pipeline.run)

    def _runtime_of(self, workflow_id: str) -> WorkflowRuntime:
        runtime = self.runtimes.get(workflow_id)
        if runtime is None:
            raise WorkflowNotFound(f"workflow {workflow_id!r} is not deployed")
        return runtime

    async def next_result(self) -> Result:
        with trio.fail_after(RESULT_TIMEOUT_S):
            delivery = await self.sink.receive.receive()
        assert isinstance(delivery, Delivery)
        return delivery.result

    async def process(self, frame: CapturedFrame) -> Result:
        self.pipeline.offer(frame)
        return await self.next_result()


@pytest.fixture
async def model_pool(nursery: trio.Nursery) -> tuple[ModelPool, Metrics]:
    metrics = Metrics()
    hardware = await trio.to_thread.run_sync(detect_hardware)
    return ModelPool(EngineConfig(max_queue_delay_ms=5.0), hardware, metrics, nursery), metrics


@pytest.fixture(scope="module")
def plugins():
    return load_plugins([builtin_plugin_dir()])


async def load(pool: ModelPool, plugins, version: int = 1, **fields) -> WorkflowRuntime:
    spec = parse_workflow_spec({"workflow_id": "wf", "plugins": ["person"], "min_score": 0.5, **fields})
    return await WorkflowRuntime.load(spec, version, plugins, pool)


async def test_every_frame_gives_a_result_alarm_with_a_jpeg_snapshot_normal_without(nursery, model_pool, plugins):
    pool, metrics = model_pool
    rig = Rig(nursery, {"wf": await load(pool, plugins)}, metrics)
    frame = captured(1, person_frame())
    alarm = await rig.process(frame)
    normal = await rig.process(captured(2, empty_frame()))

    assert (alarm.source_id, alarm.workflow_id, alarm.workflow_version, alarm.frame_seq) == ("cam1", "wf", 1, 1)
    assert alarm.alarm and alarm.timestamp_ms == int(frame.captured_at * 1000) and alarm.error_code == 0
    data = json.loads(alarm.json_data)
    assert data["frame_seq"] == 1 and (data["width"], data["height"]) == (640, 360)
    [det] = [d for d in data["detections"] if d["label"] == "person"]
    assert det["score"] >= 0.5 and 0 <= det["box"][0] < det["box"][2] <= 640
    snapshot = cv2.imdecode(np.frombuffer(alarm.image_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert alarm.image_jpeg[:2] == b"\xff\xd8" and snapshot.shape == (360, 640, 3)

    assert not normal.alarm and normal.image_jpeg == b"" and json.loads(normal.json_data)["detections"] == []
    assert rig.pipeline.results == 2 and rig.pipeline.frames_dropped == 0
    assert total(metrics.results, type="ALARM") == 1 and total(metrics.results, type="NORMAL") == 1


async def test_no_snapshot_when_the_workflow_does_not_attach_one(nursery, model_pool, plugins):
    pool, metrics = model_pool
    rig = Rig(nursery, {"wf": await load(pool, plugins, attach_snapshot=False)}, metrics)
    result = await rig.process(captured(1, person_frame()))
    assert result.alarm and result.image_jpeg == b""


async def test_frame_age_is_capture_to_result_per_camera(nursery, model_pool, plugins):
    pool, metrics = model_pool
    rig = Rig(nursery, {"wf": await load(pool, plugins)}, metrics)
    results = [await rig.process(captured(seq, empty_frame(), age_s=0.5)) for seq in range(1, 4)]
    ages = rig.pipeline.frame_ages()
    age_sum, age_count = histogram_sum_count(metrics.frame_age, camera="cam1")
    assert len(ages) == 3 and min(ages) >= 0.5 and age_count == 3 and age_sum >= 1.5
    assert rig.pipeline.frame_age_ms >= 500
    assert all(r.latency_ms >= 500 for r in results)
    assert histogram_sum_count(metrics.frame_age, camera="other") == (0.0, 0.0)


async def test_a_newer_frame_replaces_the_waiting_one_and_the_drop_is_counted_busy(nursery, model_pool, plugins):
    pool, metrics = model_pool
    rig = Rig(nursery, {"wf": await load(pool, plugins)}, metrics)
    rig.pipeline.offer(captured(1, person_frame()))
    await trio.testing.wait_all_tasks_blocked()  # frame 1 is in flight (in a worker thread)
    for seq in (2, 3, 4):
        rig.pipeline.offer(captured(seq, person_frame()))  # one waiting slot: 2 and 3 are replaced
    assert [(await rig.next_result()).frame_seq for _ in range(2)] == [1, 4]
    assert rig.pipeline.frames_dropped == 2
    assert total(metrics.frames_dropped, camera="cam1", reason="busy") == 2


async def test_an_update_applies_from_the_next_frame_and_keeps_the_alarm_history(nursery, model_pool, plugins):
    pool, metrics = model_pool
    cooldown = {"alarm": {"cooldown_ms": 3_600_000}}
    rig = Rig(nursery, {"wf": await load(pool, plugins, 1, **cooldown)}, metrics)
    first = await rig.process(captured(1, person_frame()))
    rig.runtimes["wf"] = await load(pool, plugins, 2, min_score=0.45, **cooldown)  # what the registry swap does
    second = await rig.process(captured(2, person_frame()))
    assert (first.workflow_version, second.workflow_version) == (1, 2)
    assert first.alarm and not second.alarm  # still cooling down: v2 inherited v1's alarm state


async def test_a_workflow_that_cannot_run_still_gives_one_error_result_per_frame(nursery, model_pool, plugins):
    _, metrics = model_pool
    rig = Rig(nursery, {}, metrics)
    results = [await rig.process(captured(seq, empty_frame())) for seq in (1, 2)]
    assert [r.frame_seq for r in results] == [1, 2]
    assert all(r.error_code == ErrorCode.WORKFLOW_NOT_FOUND and "not deployed" in r.error_message for r in results)
    assert "not deployed" in rig.pipeline.last_error and rig.pipeline.frames_dropped == 0


async def test_roi_crops_the_frame_and_boxes_come_back_in_full_frame_pixels(nursery, model_pool, plugins):
    pool, metrics = model_pool
    rig = Rig(nursery, {"wf": await load(pool, plugins)}, metrics, roi=Roi(0.5, 0.0, 0.5, 1.0))
    result = await rig.process(captured(1, person_frame(right_half=True)))
    data = json.loads(result.json_data)
    assert result.alarm and (data["width"], data["height"]) == (640, 360)
    assert all(d["box"][0] >= 320 - 1 for d in data["detections"])
    left_only = await rig.process(captured(2, np.ascontiguousarray(person_frame(right_half=True)[:, ::-1])))
    assert not left_only.alarm  # the person is now outside the ROI
