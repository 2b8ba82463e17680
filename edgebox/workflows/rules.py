"""Zones and alarm rules: which detections count, and when a frame becomes an ALARM.

Pure functions plus one small per-source state object; no I/O and no clock of its own (callers pass the time),
so the rules are tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgebox.plugin_api import Detection
from edgebox.workflows.spec import WorkflowSpec, Zone


def point_in_polygon(x: float, y: float, polygon: Sequence[tuple[float, float]]) -> bool:
    inside = False
    j = len(polygon) - 1
    for i, (xi, yi) in enumerate(polygon):
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def zone_of(det: Detection, zones: Sequence[Zone], width: int, height: int) -> str | None:
    """The first zone holding the box's bottom-centre (where a person stands); None if outside all."""
    x1, _, x2, y2 = det.box
    fx, fy = (x1 + x2) / 2 / width, y2 / height
    for zone in zones:
        if point_in_polygon(fx, fy, zone.points):
            return zone.name or "zone"
    return None


def filter_detections(spec: WorkflowSpec, detections: Sequence[Detection], width: int,
                      height: int) -> list[Detection]:
    """Drop detections under min_score or outside every zone; tag the rest with their zone."""
    kept = []
    for det in detections:
        if det.score < spec.min_score:
            continue
        if spec.zones:
            zone = zone_of(det, spec.zones, width, height)
            if zone is None:
                continue
            det = Detection(det.label, det.score, det.box, {**det.extra, "zone": zone})
        kept.append(det)
    return kept


@dataclass
class AlarmState:
    """Per source: how many consecutive frames matched, and when the last ALARM was raised (ms)."""

    consecutive: int = 0
    last_alarm_ms: int | None = None


def alarm_triggers(spec: WorkflowSpec, detections: Sequence[Detection]) -> list[Detection]:
    rule = spec.alarm
    threshold = rule.min_score or spec.min_score
    return [d for d in detections
            if (not rule.labels or d.label in rule.labels) and d.score >= threshold]


def evaluate_alarm(spec: WorkflowSpec, detections: Sequence[Detection], state: AlarmState, now_ms: int) -> bool:
    """Advance the source's alarm state with this frame; True if the frame is an ALARM."""
    if not alarm_triggers(spec, detections):
        state.consecutive = 0
        return False
    state.consecutive += 1
    if state.consecutive < spec.alarm.min_consecutive_frames:
        return False
    if state.last_alarm_ms is not None and now_ms - state.last_alarm_ms < spec.alarm.cooldown_ms:
        return False
    state.last_alarm_ms = now_ms
    return True
