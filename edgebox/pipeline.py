"""One camera's path from sampled frame to published result.

Overflow policy (documented in docs/architecture.md): a camera has one frame in flight and one waiting slot;
a newer sampled frame replaces the waiting one, which is counted as dropped (reason "busy"). The scheduler may
also drop a camera frame when its queue is full (reason "queue_full"). Nothing here blocks the decode task.
"""

from __future__ import annotations

import collections
import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trio

from edgebox.cameras import CapturedFrame, Roi
from edgebox.engine.scheduler import FrameDropped
from edgebox.errors import EdgeboxError
from edgebox.frames import draw_detections, encode_jpeg
from edgebox.metrics import Metrics
from edgebox.results import Result, ResultHub
from edgebox.workflows.runtime import FrameVerdict, SourceState, WorkflowRuntime

log = logging.getLogger("edgebox.pipeline")

AGE_WINDOW = 100  # recent frame ages kept for the median shown in ListCameras


@dataclass(frozen=True)
class LatestFrame:
    """The newest processed frame of a camera, for the console's live view."""

    image: np.ndarray
    detections: list[dict]
    alarm: bool
    timestamp_ms: int


class CameraPipeline:
    def __init__(self, camera_id: str, workflow_id: str, roi: Roi | None,
                 runtime_of: Callable[[str], WorkflowRuntime], hub: ResultHub, metrics: Metrics) -> None:
        self.camera_id = camera_id
        self.workflow_id = workflow_id
        self._roi = roi
        self._runtime_of = runtime_of
        self._hub = hub
        self._metrics = metrics
        self._waiting: CapturedFrame | None = None
        self._wakeup = trio.Event()
        self._state: SourceState | None = None
        self._state_version: tuple[int, int] | None = None
        self._ages: collections.deque[float] = collections.deque(maxlen=AGE_WINDOW)
        self.frames_dropped = 0
        self.results = 0
        self.fps_out = 0.0
        self._last_result_mono: float | None = None
        self.latest: LatestFrame | None = None
        self.last_error = ""
        self.backend = ""

    @property
    def frame_age_ms(self) -> float:
        return statistics.median(self._ages) * 1000 if self._ages else 0.0

    def frame_ages(self) -> list[float]:
        return list(self._ages)

    def offer(self, frame: CapturedFrame) -> None:
        """Called by the decode task for every sampled frame; never blocks."""
        if self._waiting is not None:
            self._drop("busy")
        self._waiting = frame
        self._wakeup.set()

    def _drop(self, reason: str) -> None:
        self.frames_dropped += 1
        self._metrics.frames_dropped.labels(camera=self.camera_id, reason=reason).inc()

    async def run(self) -> None:
        while True:
            while self._waiting is None:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            frame, self._waiting = self._waiting, None
            await self._process(frame)

    async def _process(self, frame: CapturedFrame) -> None:
        try:
            runtime = self._runtime_of(self.workflow_id)  # looked up per frame: an update applies to the next one
        except EdgeboxError as exc:  # e.g. the stored workflow failed to load: still one result per frame
            self.last_error = exc.client_message()
            self._publish_error(frame, exc)
            return
        self.backend = ", ".join(runtime.backends) or "none"
        state = self._state_for(runtime)
        image, (dx, dy) = self._crop(frame.image)
        captured_ms = int(frame.captured_at * 1000)
        plugin_label = ",".join(runtime.spec.plugins)
        self._metrics.infer_requests.labels(origin="camera", plugin=plugin_label).inc()
        started = trio.current_time()
        try:
            verdict = await runtime.evaluate(image, state, now_ms=captured_ms, droppable=True)
        except FrameDropped:
            self._drop("queue_full")
            return
        self._metrics.infer_latency.labels(stage="total").observe(trio.current_time() - started)
        if verdict.first_error is not None:
            self._metrics.infer_failures.labels(origin="camera", plugin=plugin_label,
                                                code=verdict.first_error.code.name).inc()
        if dx or dy:
            verdict = _shift(verdict, dx, dy, frame.image)
        await self._publish(frame, runtime, verdict)

    def _state_for(self, runtime: WorkflowRuntime) -> SourceState:
        key = (id(runtime), runtime.version)
        if self._state is None or self._state_version != key:
            fresh = runtime.new_source_state()
            if self._state is not None:  # keep alarm history and the states of plugins that stayed
                fresh.alarm = self._state.alarm
                for name, value in self._state.plugin_states.items():
                    if name in fresh.plugin_states:
                        fresh.plugin_states[name] = value
            self._state, self._state_version = fresh, key
        return self._state

    def _crop(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        if self._roi is None:
            return image, (0, 0)
        h, w = image.shape[:2]
        x, y, rw, rh = self._roi.x, self._roi.y, self._roi.w, self._roi.h
        x0, y0 = int(x * w), int(y * h)
        x1, y1 = max(x0 + 1, int((x + rw) * w)), max(y0 + 1, int((y + rh) * h))
        return image[y0:y1, x0:x1], (x0, y0)

    async def _publish(self, frame: CapturedFrame, runtime: WorkflowRuntime, verdict: FrameVerdict) -> None:
        detections = [d.to_json() for d in verdict.detections]
        snapshot = b""
        if verdict.alarm and runtime.spec.attach_snapshot:
            snapshot = await trio.to_thread.run_sync(_snapshot, frame.image, detections)
        self.last_error = "; ".join(verdict.plugin_errors.values())
        now = time.time()
        age = max(0.0, now - frame.captured_at)
        self._ages.append(age)
        self._metrics.frame_age.labels(camera=self.camera_id).observe(age)
        self._metrics.frames_inferred.labels(camera=self.camera_id).inc()
        mono = trio.current_time()
        if self._last_result_mono is not None and mono > self._last_result_mono:
            self.fps_out = 0.8 * self.fps_out + 0.2 / (mono - self._last_result_mono)
        self._last_result_mono = mono
        self.results += 1
        self.latest = LatestFrame(frame.image, detections, verdict.alarm, int(frame.captured_at * 1000))
        # Every plugin failed: the frame has no verdict, so the result carries the first plugin's error code.
        failed = verdict.first_error if len(verdict.plugin_errors) == len(runtime.plugins) else None
        self._hub.publish(Result(
            source_id=self.camera_id, workflow_id=runtime.spec.workflow_id, workflow_version=runtime.version,
            timestamp_ms=int(frame.captured_at * 1000), alarm=verdict.alarm,
            json_data=json.dumps(verdict.to_json({"frame_seq": frame.seq}), separators=(",", ":")),
            image_jpeg=snapshot, frame_seq=frame.seq, latency_ms=age * 1000,
            error_code=int(failed.code) if failed else 0, error_message=failed.client_message() if failed else ""))

    def _publish_error(self, frame: CapturedFrame, error: EdgeboxError) -> None:
        age = max(0.0, time.time() - frame.captured_at)
        self.results += 1
        self._hub.publish(Result(
            source_id=self.camera_id, workflow_id=self.workflow_id, workflow_version=0,
            timestamp_ms=int(frame.captured_at * 1000), alarm=False,
            json_data=json.dumps({"detections": [], "frame_seq": frame.seq}, separators=(",", ":")),
            frame_seq=frame.seq, latency_ms=age * 1000, error_code=int(error.code),
            error_message=error.client_message()))


def _snapshot(image: np.ndarray, detections: list[dict]) -> bytes:
    return encode_jpeg(draw_detections(image, detections))


def _shift(verdict: FrameVerdict, dx: int, dy: int, full: np.ndarray) -> FrameVerdict:
    return FrameVerdict([d.shifted(dx, dy) for d in verdict.detections], verdict.alarm, full.shape[1],
                        full.shape[0], verdict.plugin_errors, verdict.first_error)
