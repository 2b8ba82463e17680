"""The node's domain API: what the gRPC service, the console and the manager link all call.

It ties the workflow registry, the camera fleet, the model pool and the result hub together and adds the
operations that span them (client inference, health, metrics). It imports no transport library.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from edgebox import __version__
from edgebox.camera_listing import CameraListingPublisher
from edgebox.engine.hardware import Hardware
from edgebox.engine.models import LoadedModelInfo, ModelPool
from edgebox.errors import EdgeboxError, InvalidRequest
from edgebox.fleet import Camera, CameraFleet
from edgebox.frames import DecodeBudget, decode_frame, draw_detections, encode_jpeg
from edgebox.gpu import GpuMonitor
from edgebox.limits import MAX_BATCH_FRAMES, check_id
from edgebox.metrics import Metrics, histogram_sum_count, process_rss_bytes, total
from edgebox.plugins_loader import PluginRegistry
from edgebox.results import Result, ResultHub
from edgebox.workflows.registry import WorkflowEntry, WorkflowRegistry
from edgebox.workflows.runtime import SourceState, WorkflowRuntime
from edgebox.workflows.spec import WorkflowSpec

log = logging.getLogger("edgebox.node")


class Lifecycle:
    STARTING = "NOT_SERVING"
    SERVING = "SERVING"
    STOPPING = "STOPPING"


@dataclass(frozen=True)
class ClientFrame:
    """A frame sent by a client, still encoded; decoded off the event loop by `Node.infer`."""

    data: bytes
    pixel_format: int = 0
    width: int = 0
    height: int = 0
    timestamp_ms: int = 0


@dataclass(frozen=True)
class InferTarget:
    """Exactly one of a deployed workflow or a single plugin with default settings."""

    workflow_id: str = ""
    plugin: str = ""


@dataclass(frozen=True)
class Health:
    status: str
    timestamp_ms: int
    gpu_available: bool
    plugins: list[str]
    plugin_errors: list[str]
    backends: list[str]  # usable on this box (HealthCheck.backends)
    uptime_s: float
    version: str = __version__
    # Loaded models and what they really run on, e.g. "person: openvino-cpu on CPU (Intel(R) ...)".
    models: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class HealthFacts:
    """The part of Health that changes only with the lifecycle and the loaded models, published by the trio
    thread (Node.publish_health) so that HealthCheck is answered without crossing into it."""

    status: str
    gpu_available: bool
    plugins: tuple[str, ...]
    plugin_errors: tuple[str, ...]
    backends: tuple[str, ...]
    models: tuple[str, ...]


@dataclass(frozen=True)
class MetricsSnapshot:
    active_cameras: int
    registered_cameras: int
    workflows: int
    total_infer_requests: int
    failed_infer_requests: int
    avg_infer_latency_ms: float
    avg_queue_ms: float
    avg_compute_ms: float
    avg_batch_size: float
    queue_depth: int
    frames_dropped: int
    memory_usage_bytes: int
    gpu_utilization: float = -1.0
    gpu_memory_used_bytes: int = -1
    models: tuple[LoadedModelInfo, ...] = ()


@dataclass
class Node:
    plugins: PluginRegistry
    pool: ModelPool
    workflows: WorkflowRegistry
    fleet: CameraFleet
    hub: ResultHub
    metrics: Metrics
    hardware: Hardware
    started_mono: float = field(default_factory=time.monotonic)
    lifecycle: str = Lifecycle.STARTING  # changed with set_lifecycle(), which also republishes the health
    _adhoc: dict[str, WorkflowRuntime] = field(default_factory=dict)
    gpu: GpuMonitor = field(default_factory=GpuMonitor)  # also read by /metrics (edgebox.gpu.GpuCollector)
    decode_budget: DecodeBudget = field(default_factory=DecodeBudget)
    _health_facts: HealthFacts | None = None
    camera_listing: CameraListingPublisher = field(init=False)  # ListCameras without crossing into trio

    def __post_init__(self) -> None:
        self.camera_listing = CameraListingPublisher(self.fleet)
        self.pool.on_loaded.append(self.publish_health)
        self.publish_health()

    def set_lifecycle(self, lifecycle: str) -> None:
        self.lifecycle = lifecycle
        self.publish_health()

    # -- workflows ------------------------------------------------------------------------------------
    async def deploy_workflow(self, spec: Mapping[str, Any]) -> WorkflowEntry:
        entry = await self.workflows.deploy(spec)
        self.metrics.workflows_deployed.set(len(self.workflows))
        return entry

    async def update_workflow(self, spec: Mapping[str, Any]) -> WorkflowEntry:
        return await self.workflows.update(spec)

    async def delete_workflow(self, workflow_id: str) -> None:
        await self.workflows.delete(workflow_id)
        self.metrics.workflows_deployed.set(len(self.workflows))

    def list_workflows(self) -> list[WorkflowEntry]:
        return self.workflows.entries()

    # -- cameras --------------------------------------------------------------------------------------
    async def add_camera(self, camera_id: str, url: str, workflow_id: str, config: Mapping[str, str]) -> Camera:
        camera = await self.fleet.add(camera_id, url, workflow_id, config)
        self.metrics.cameras_registered.set(len(self.fleet))
        return camera

    async def remove_camera(self, camera_id: str) -> None:
        await self.fleet.remove(camera_id)
        self.metrics.cameras_registered.set(len(self.fleet))

    def list_cameras(self) -> list[Camera]:
        return self.fleet.cameras()

    # -- client inference -----------------------------------------------------------------------------
    async def resolve(self, target: InferTarget) -> WorkflowRuntime:
        """The runtime that serves a client call: a deployed workflow, or an ad-hoc one for a plugin."""
        if bool(target.workflow_id) == bool(target.plugin):
            raise InvalidRequest("set exactly one of workflow_id and plugin")
        if target.workflow_id:
            return self.workflows.runtime(target.workflow_id)
        if problem := check_id("plugin", target.plugin):
            raise InvalidRequest(problem)
        key = target.plugin
        runtime = self._adhoc.get(key)
        if runtime is None:
            spec = WorkflowSpec(workflow_id="", plugins=(target.plugin,), min_score=0.5)
            runtime = await WorkflowRuntime.load(spec, 0, self.plugins, self.pool)
            self._adhoc[key] = runtime
        return runtime

    async def infer(self, target: InferTarget, frames: Sequence[ClientFrame], *, return_image: bool,
                    source_id: str, state: SourceState | None = None,
                    seq_start: int = 1) -> list[Result | EdgeboxError]:
        """Run client frames concurrently (so they batch together); one outcome per frame, in order."""
        if not 1 <= len(frames) <= MAX_BATCH_FRAMES:
            raise InvalidRequest(f"send 1 to {MAX_BATCH_FRAMES} frames (MAX_BATCH_FRAMES), got {len(frames)}")
        runtime = await self.resolve(target)
        outcomes: list[Result | EdgeboxError] = [InvalidRequest("not run")] * len(frames)

        async def one(i: int) -> None:
            outcomes[i] = await self._infer_one(runtime, frames[i], return_image, source_id, state, seq_start + i)

        if len(frames) == 1:
            await one(0)
        else:
            async with trio.open_nursery() as nursery:
                for i in range(len(frames)):
                    nursery.start_soon(one, i)
        return outcomes

    async def _infer_one(self, runtime: WorkflowRuntime, frame: ClientFrame, return_image: bool, source_id: str,
                         state: SourceState | None, seq: int) -> Result | EdgeboxError:
        async with self.decode_budget.hold(frame.data, frame.pixel_format, frame.width, frame.height):
            return await self._infer_decoded(runtime, frame, return_image, source_id, state, seq)

    async def _infer_decoded(self, runtime: WorkflowRuntime, frame: ClientFrame, return_image: bool,
                             source_id: str, state: SourceState | None, seq: int) -> Result | EdgeboxError:
        started = time.time()
        plugin_label = ",".join(runtime.spec.plugins)
        self.metrics.infer_requests.labels(origin="rpc", plugin=plugin_label).inc()
        try:
            timestamp_ms = frame.timestamp_ms or int(started * 1000)
            # Decoding shares its worker-thread hop with the first plugin's preprocessing.
            image, verdict = await runtime.evaluate_encoded(
                functools.partial(decode_frame, frame.data, frame.pixel_format, frame.width, frame.height),
                state or runtime.new_source_state(), now_ms=timestamp_ms, droppable=False)
            if verdict.first_error is not None and len(verdict.plugin_errors) == len(runtime.plugins):
                raise verdict.first_error
        except EdgeboxError as exc:
            self.metrics.infer_failures.labels(origin="rpc", plugin=plugin_label, code=exc.code.name).inc()
            return exc
        detections = [d.to_json() for d in verdict.detections]
        image_jpeg = b""
        if return_image or (verdict.alarm and runtime.spec.attach_snapshot and runtime.spec.workflow_id):
            image_jpeg = await trio.to_thread.run_sync(_jpeg_with_boxes, image, detections)
        elapsed = time.time() - started
        self.metrics.infer_latency.labels(stage="total").observe(elapsed)
        return Result(
            source_id=source_id, workflow_id=runtime.spec.workflow_id, workflow_version=runtime.version,
            timestamp_ms=timestamp_ms, alarm=verdict.alarm,
            json_data=json.dumps(verdict.to_json(), separators=(",", ":")), image_jpeg=image_jpeg,
            frame_seq=seq, latency_ms=elapsed * 1000)

    # -- health and metrics ---------------------------------------------------------------------------
    def publish_health(self) -> None:
        """Rebuild what HealthCheck reports; on the trio thread, whenever the lifecycle or the models change."""
        self._health_facts = HealthFacts(
            status=self.lifecycle,
            gpu_available=self.hardware.gpu_available,
            plugins=tuple(sorted(self.plugins.plugins)),
            plugin_errors=tuple(f"{k}: {v}" for k, v in sorted(self.plugins.errors.items())),
            backends=tuple(self.hardware.usable_backends()),
            models=tuple(str(info) for info in self.loaded_models()),
        )

    def health_facts(self) -> HealthFacts:
        """What the trio thread last published; safe on any thread: one reference, replaced whole."""
        facts = self._health_facts
        assert facts is not None  # published in __post_init__
        return facts

    def uptime_s(self) -> float:
        """Seconds since the node started (monotonic clock)."""
        return time.monotonic() - self.started_mono

    def health(self) -> Health:
        """The node's health now; safe on any thread (see health_facts)."""
        facts = self.health_facts()
        return Health(status=facts.status, timestamp_ms=int(time.time() * 1000), gpu_available=facts.gpu_available,
                      plugins=list(facts.plugins), plugin_errors=list(facts.plugin_errors),
                      backends=list(facts.backends), uptime_s=self.uptime_s(), models=list(facts.models))

    def loaded_models(self) -> list[LoadedModelInfo]:
        """Each loaded model with the backend and device it really runs on (after any fallback)."""
        return self.pool.loaded()

    def metrics_snapshot(self) -> MetricsSnapshot:
        m = self.metrics
        total_s, total_n = histogram_sum_count(m.infer_latency, stage="total")
        queue_s, queue_n = histogram_sum_count(m.infer_latency, stage="queue")
        compute_s, compute_n = histogram_sum_count(m.infer_latency, stage="compute")
        executions = total(m.executions)
        inferred, _ = histogram_sum_count(m.batch_size)  # the sum of batch sizes = frames executed
        cameras = self.fleet.cameras()
        gpu = self.gpu.summary()
        return MetricsSnapshot(
            active_cameras=sum(1 for c in cameras if c.state.name == "STREAMING"),
            registered_cameras=len(cameras),
            workflows=len(self.workflows),
            total_infer_requests=int(total(m.infer_requests)),
            failed_infer_requests=int(total(m.infer_failures)),
            avg_infer_latency_ms=_mean_ms(total_s, total_n),
            avg_queue_ms=_mean_ms(queue_s, queue_n),
            avg_compute_ms=_mean_ms(compute_s, compute_n),
            avg_batch_size=inferred / executions if executions else 0.0,
            queue_depth=self.pool.queue_depth(),
            frames_dropped=int(total(m.frames_dropped)),
            memory_usage_bytes=process_rss_bytes() + self.fleet.resident_bytes(),
            gpu_utilization=gpu.utilization_percent,
            gpu_memory_used_bytes=gpu.memory_used_bytes,
            models=tuple(self.loaded_models()),
        )


def _mean_ms(seconds: float, count: float) -> float:
    return seconds / count * 1000 if count else 0.0


def _jpeg_with_boxes(image: np.ndarray, detections: list[dict]) -> bytes:
    return encode_jpeg(draw_detections(image, detections))
