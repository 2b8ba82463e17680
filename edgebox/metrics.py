"""Every counter and gauge of the engine, in one prometheus-client registry.

`/metrics` exposes this registry and GetMetrics reads the very same objects, so the two never disagree.
Modules update metrics through the `Metrics` instance they are given; nothing here serves HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.process_collector import ProcessCollector

from edgebox.gc_pauses import PAUSES, GcCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds
        r.register(GcCollector(PAUSES))  # edgebox_gc_pause_seconds, edgebox_gc_frozen_objects
        self.build_info = Info("edgebox_build", "Version of the running engine", registry=r)
        self.infer_requests = Counter(
            "edgebox_infer_requests", "Frames submitted for inference, by origin and plugin",
            ["origin", "plugin"], registry=r)
        self.infer_failures = Counter(
            "edgebox_infer_failures", "Frames whose inference failed, by InferErrorCode name",
            ["origin", "plugin", "code"], registry=r)
        self.infer_latency = Histogram(
            "edgebox_infer_latency_seconds", "Per-frame inference latency split into stages "
            "(queue: waiting for a batch; compute: backend execution; total: submit to result)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "edgebox_batch_size", "Frames per backend execution", ["model", "backend"],
            buckets=BATCH_BUCKETS, registry=r)
        self.executions = Counter(
            "edgebox_backend_executions", "Backend executions (inference count / execution count = mean batch)",
            ["model", "backend"], registry=r)
        self.execution_retries = Counter(
            "edgebox_backend_retries", "Backend executions retried after an error, by kind (error, oom)",
            ["model", "backend", "kind"], registry=r)
        self.queue_depth = Gauge(
            "edgebox_queue_depth", "Frames waiting in a scheduler queue", ["model", "backend"], registry=r)
        self.batch_limit = Gauge(
            "edgebox_batch_limit", "Current batch size limit (halved on out-of-memory, grown back after)",
            ["model", "backend"], registry=r)
        self.backend_in_use = Gauge(
            "edgebox_backend_in_use", "1 for each model/backend/device pair loaded", ["model", "backend", "device"],
            registry=r)
        self.backend_fallbacks = Counter(
            "edgebox_backend_fallbacks", "A preferred backend failed to initialize and another was used",
            ["model", "wanted", "used"], registry=r)
        self.frames_dropped = Counter(
            "edgebox_frames_dropped", "Sampled camera frames dropped, by reason (queue_full: scheduler overflow; "
            "busy: the camera's previous frame was still being processed)", ["camera", "reason"], registry=r)
        self.frames_inferred = Counter(
            "edgebox_camera_frames_inferred", "Sampled frames turned into results per camera", ["camera"], registry=r)
        self.frame_age = Histogram(
            "edgebox_frame_age_seconds", "Capture-to-result age of camera frames", ["camera"],
            buckets=LATENCY_BUCKETS, registry=r)
        # edgebox_camera_frames_in, _reconnects, _state, _fps_in/_out and _info are read from the cameras' own
        # counters at scrape time (edgebox.web.collectors.EngineCollector), so they are not duplicated here.
        self.results = Counter("edgebox_results", "Results produced, by type", ["type"], registry=r)
        self.subscriber_missed = Counter(
            "edgebox_subscriber_missed_results", "Results not delivered to a slow subscriber", registry=r)
        self.grpc_requests = Counter(
            "edgebox_grpc_requests", "gRPC calls finished, by method and status code", ["method", "code"],
            registry=r)
        self.grpc_latency = Histogram(
            "edgebox_grpc_request_duration_seconds", "gRPC unary call duration", ["method"],
            buckets=LATENCY_BUCKETS, registry=r)
        self.decoder_starts = Counter(
            "edgebox_decoder_starts", "Camera decoding processes started (engine.camera_decoding process); more "
            "than one means it died and was restarted", registry=r)
        self.decoder_resident_memory = Gauge(
            "edgebox_decoder_resident_memory_bytes", "Resident memory of the camera decoding process (0 while none "
            "runs); process_resident_memory_bytes is the engine's own", registry=r)
        self.cameras_registered = Gauge("edgebox_cameras_registered", "Registered cameras", registry=r)
        self.workflows_deployed = Gauge("edgebox_workflows_deployed", "Deployed workflows", registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def forget_camera(self, camera_id: str) -> None:
        """Drop a removed camera's labelled series so that /metrics does not grow without bound."""
        for metric in (self.frames_inferred, self.frame_age):
            _remove(metric, (camera_id,))
        for metric in (self.frames_dropped,):
            for labels in _label_sets(metric):
                if labels[0] == camera_id:
                    _remove(metric, labels)


def total(metric: Counter | Gauge, **match: str) -> float:
    """Sum of a metric's samples whose labels include `match` (counters: the _total samples)."""
    value = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(("_created",)):
                continue
            if all(sample.labels.get(k) == v for k, v in match.items()):
                value += sample.value
    return value


def histogram_sum_count(metric: Histogram, **match: str) -> tuple[float, float]:
    s = c = 0.0
    for family in metric.collect():
        for sample in family.samples:
            if not all(sample.labels.get(k) == v for k, v in match.items()):
                continue
            if sample.name.endswith("_sum"):
                s += sample.value
            elif sample.name.endswith("_count"):
                c += sample.value
    return s, c


def process_rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of this process, or of process `pid`; 0 where /proc cannot tell (gone, not Linux)."""
    return _statm_pages(pid)[0] * os.sysconf("SC_PAGE_SIZE")


def process_private_rss_bytes(pid: int | str = "self") -> int:
    """The resident memory of process `pid` that is not file-backed or shared (its heap, stacks, buffers): what it
    adds beside a process that maps the same libraries; 0 where /proc cannot tell."""
    resident, shared = _statm_pages(pid)
    return max(0, resident - shared) * os.sysconf("SC_PAGE_SIZE")


def _statm_pages(pid: int | str) -> tuple[int, int]:
    """(resident, resident shared) pages from /proc/PID/statm: one read, cheap enough for every HealthCheck."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            fields = f.read().split()
        return int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return 0, 0


def _label_sets(metric) -> Iterable[tuple[str, ...]]:
    return list(metric._metrics.keys())  # prometheus-client has no public listing of children


def _remove(metric, labels: tuple[str, ...]) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
