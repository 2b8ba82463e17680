"""Series read from the node's live objects at scrape time: per-camera state, frames in, reconnects, fps.

The cameras keep their own counters (`CameraStatus`), so /metrics reads those instead of mirroring them into
prometheus objects that could drift. Counters here are the cameras' lifetime totals (a removed and re-added
camera starts again at 0, which `rate()` treats as a reset). Metrics updated by the engine live in
`edgebox.metrics`; GPU series in `edgebox.gpu`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgebox.cameras import CameraState
from edgebox.node import Node

STATES = tuple(s.value for s in CameraState)


class EngineCollector(Collector):
    def __init__(self, node: Node) -> None:
        self._node = node

    def describe(self) -> list[Metric]:
        return list(self._families())  # the names only, so that a clash with edgebox.metrics fails at start

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        frames_in, reconnects, state, fps_in, fps_out, info, subscribers = families
        for camera in self._node.list_cameras():
            status = camera.status
            cid = camera.camera_id
            frames_in.add_metric([cid], status.frames_in)
            reconnects.add_metric([cid], status.reconnects)
            for name in STATES:
                state.add_metric([cid, name], 1.0 if status.state.value == name else 0.0)
            fps_in.add_metric([cid], status.fps_in)
            fps_out.add_metric([cid], camera.pipeline.fps_out)
            info.add_metric([cid, camera.workflow_id, camera.pipeline.backend or "none"], 1)
        subscribers.add_metric([], self._node.hub.subscriber_count)
        yield from families

    @staticmethod
    def _families() -> list[Metric]:
        return [
            CounterMetricFamily("edgebox_camera_frames_in", "Frames decoded per camera (every frame read from "
                                "the source, before fps sampling)", labels=["camera"]),
            CounterMetricFamily("edgebox_camera_reconnects", "Times a camera stream was reopened after a "
                                "failure or stall", labels=["camera"]),
            GaugeMetricFamily("edgebox_camera_state", "1 for the state each camera is in, 0 for the others "
                              f"({', '.join(STATES)})", labels=["camera", "state"]),
            GaugeMetricFamily("edgebox_camera_fps_in", "Frame arrival rate, moving average (0 unless streaming); "
                              "rate(edgebox_camera_frames_in_total) is the exact form", labels=["camera"]),
            GaugeMetricFamily("edgebox_camera_fps_out", "Results per second, moving average; "
                              "rate(edgebox_camera_frames_inferred_total) is the exact form", labels=["camera"]),
            GaugeMetricFamily("edgebox_camera_info", "1 per camera, labelled with its workflow and the backend "
                              "that ran its last frame", labels=["camera", "workflow", "backend"]),
            GaugeMetricFamily("edgebox_result_subscribers", "Open result subscriptions (gRPC SubscribeResults "
                              "streams and console event streams)"),
        ]
