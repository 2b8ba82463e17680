"""Conversions between proto messages (edgebox.proto_gen.infer) and domain values; nothing else."""

from __future__ import annotations

from typing import Any

from edgebox import __version__
from edgebox.api.codec import DOUBLE, WIRE_FIXED64, WIRE_VARINT, encode_message, encode_varint, field_key
from edgebox.camera_listing import CameraSnapshot
from edgebox.cameras import mask_url
from edgebox.node import ClientFrame, HealthFacts, MetricsSnapshot
from edgebox.proto_gen import infer as pb
from edgebox.results import Result
from edgebox.workflows.registry import WorkflowEntry

INT32_MAX = 2**31 - 1


def workflow_spec_to_dict(spec: pb.WorkflowSpec) -> dict[str, Any]:
    """Proto spec -> the plain dict that `workflows.spec.parse_workflow_spec` validates."""
    data: dict[str, Any] = {
        "workflow_id": spec.workflow_id,
        "plugins": list(spec.plugins),
        "min_score": spec.min_score,
        "zones": [{"name": z.name, "points": [{"x": p.x, "y": p.y} for p in z.points]} for z in spec.zones],
        "attach_snapshot": spec.attach_snapshot,
        "backend": spec.backend,
        "params": dict(spec.params),
    }
    if spec.alarm is not None:
        data["alarm"] = {"labels": list(spec.alarm.labels), "min_score": spec.alarm.min_score,
                         "min_consecutive_frames": spec.alarm.min_consecutive_frames,
                         "cooldown_ms": spec.alarm.cooldown_ms}
    return data


def workflow_info(entry: WorkflowEntry, camera_ids: list[str]) -> pb.WorkflowInfo:
    spec = entry.spec
    return pb.WorkflowInfo(
        spec=pb.WorkflowSpec(
            workflow_id=spec.workflow_id,
            plugins=list(spec.plugins),
            min_score=spec.min_score,
            zones=[pb.Zone(name=z.name, points=[pb.Point(x=x, y=y) for x, y in z.points]) for z in spec.zones],
            alarm=pb.AlarmRule(labels=list(spec.alarm.labels), min_score=spec.alarm.min_score,
                               min_consecutive_frames=spec.alarm.min_consecutive_frames,
                               cooldown_ms=spec.alarm.cooldown_ms),
            attach_snapshot=spec.attach_snapshot,
            backend=spec.backend,
            params=dict(spec.params),
        ),
        version=entry.version,
        camera_ids=sorted(camera_ids),
        updated_at_ms=entry.updated_at_ms,
    )


def camera_info(camera: CameraSnapshot) -> pb.CameraInfo:
    status = camera.status
    return pb.CameraInfo(
        camera_id=camera.camera_id,
        rtsp_url=mask_url(camera.url),
        workflow_id=camera.workflow_id,
        config=dict(camera.config),
        state=pb.CameraState[status.state.name],
        error=pb.StreamError[status.error.name] if status.error.name != "NONE" else pb.StreamError.STREAM_ERROR_NONE,
        last_error=camera.last_error,
        fps_in=status.fps_in,
        fps_out=camera.fps_out,
        frame_age_ms=camera.frame_age_ms,
        reconnects=status.reconnects,
        backend=camera.backend,
        resolution=status.resolution,
        frames_dropped=camera.frames_dropped,
    )


def client_frame(frame: pb.Frame | None) -> ClientFrame:
    if frame is None:
        return ClientFrame(b"")
    return ClientFrame(bytes(frame.image_data), int(frame.format), frame.width, frame.height, frame.timestamp)


def infer_result(result: Result, with_image: bool = True) -> pb.InferResult:
    return pb.InferResult(
        camera_id=result.source_id,
        workflow_id=result.workflow_id,
        timestamp=result.timestamp_ms,
        type=pb.ResultType.ALARM if result.alarm else pb.ResultType.NORMAL,
        image_data=result.image_jpeg if with_image else b"",
        json_data=result.json_data,
        workflow_version=result.workflow_version,
        frame_seq=result.frame_seq,
        latency_ms=result.latency_ms,
        error_code=pb.InferErrorCode(result.error_code),
        error_message=result.error_message,
    )


def encode_result(result: Result, with_image: bool) -> bytes:
    """Encode once for every subscriber (see results.ResultHub)."""
    return encode_message(infer_result(result, with_image))


class HealthReplies:
    """HealthCheck's reply bytes. The published facts are encoded once per publication; each call adds only the
    clock's two fields, in field order, so the bytes equal `encode_message` of the whole message (the probe call
    is the most frequent one: docs/benchmarks.md, gRPC)."""

    def __init__(self) -> None:
        self._facts: HealthFacts | None = None
        self._parts = (b"", b"", b"")  # fields 1; 3-5; 7-10

    def encode(self, facts: HealthFacts, timestamp_ms: int, uptime_s: float) -> bytes:
        if facts is not self._facts:
            self._parts = (
                encode_message(pb.HealthCheckResponse(status=pb.HealthStatus[facts.status])),
                encode_message(pb.HealthCheckResponse(gpu_available=facts.gpu_available,
                                                      plugin_count=len(facts.plugins), version=__version__)),
                encode_message(pb.HealthCheckResponse(plugins=list(facts.plugins), backends=list(facts.backends),
                                                      plugin_errors=list(facts.plugin_errors),
                                                      models=list(facts.models))),
            )
            self._facts = facts
        status, middle, lists = self._parts
        timestamp = field_key(2, WIRE_VARINT) + encode_varint(timestamp_ms) if timestamp_ms > 0 else b""
        uptime = field_key(6, WIRE_FIXED64) + DOUBLE.pack(uptime_s) if uptime_s else b""
        return status + timestamp + middle + uptime + lists


def metrics_response(m: MetricsSnapshot) -> pb.MetricsResponse:
    return pb.MetricsResponse(
        active_cameras=m.active_cameras,
        total_infer_requests=min(m.total_infer_requests, INT32_MAX),
        avg_infer_latency_ms=m.avg_infer_latency_ms,
        gpu_utilization=m.gpu_utilization,
        memory_usage_bytes=m.memory_usage_bytes,
        total_infer_requests_64=m.total_infer_requests,
        failed_infer_requests=m.failed_infer_requests,
        registered_cameras=m.registered_cameras,
        workflows=m.workflows,
        queue_depth=m.queue_depth,
        avg_batch_size=m.avg_batch_size,
        avg_queue_ms=m.avg_queue_ms,
        avg_compute_ms=m.avg_compute_ms,
        frames_dropped=m.frames_dropped,
        gpu_memory_used_bytes=m.gpu_memory_used_bytes,
        models=[pb.ModelMetrics(model=info.model, backend=info.backend, device=info.device,
                                batch_limit=info.batch_limit, queue_depth=info.queue_depth,
                                executions=info.executions) for info in m.models],
    )


def missed_suffix(missed: int) -> bytes:
    """Field 10 (missed_before) encoded alone; appended to shared bytes it sets the field (proto merge rule)."""
    return field_key(10, WIRE_VARINT) + encode_varint(missed)
