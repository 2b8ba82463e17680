"""A workflow spec as a typed, validated value; parsed from a plain dict (gRPC, console, config, store).

Validation is complete here except for what needs the engine (plugin names, backend loading), which the
registry checks on deploy. Errors are InvalidRequest with the field path, e.g. "zones[0].points: ...".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgebox.config import BACKEND_CHOICES
from edgebox.errors import InvalidRequest
from edgebox.limits import MAX_PARAM_LENGTH, MAX_PARAMS, MAX_PLUGINS_PER_WORKFLOW, MAX_ZONE_POINTS, MAX_ZONES, check_id

DEFAULT_MIN_SCORE = 0.5


@dataclass(frozen=True)
class Zone:
    name: str
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class AlarmRule:
    labels: tuple[str, ...] = ()
    min_score: float = 0.0  # 0 = the workflow's min_score
    min_consecutive_frames: int = 1
    cooldown_ms: int = 0


@dataclass(frozen=True)
class WorkflowSpec:
    workflow_id: str
    plugins: tuple[str, ...]
    min_score: float = DEFAULT_MIN_SCORE
    zones: tuple[Zone, ...] = ()
    alarm: AlarmRule = AlarmRule()
    attach_snapshot: bool = True
    backend: str = ""
    params: Mapping[str, str] = field(default_factory=dict)

    def plugin_params(self, plugin: str) -> dict[str, str]:
        """Parameters for one plugin: keys "plugin.key" with the prefix removed."""
        prefix = f"{plugin}."
        return {k[len(prefix):]: v for k, v in self.params.items() if k.startswith(prefix)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "workflow_id": self.workflow_id,
            "plugins": list(self.plugins),
            "min_score": self.min_score,
            "zones": [{"name": z.name, "points": [{"x": x, "y": y} for x, y in z.points]} for z in self.zones],
            "alarm": {"labels": list(self.alarm.labels), "min_score": self.alarm.min_score,
                      "min_consecutive_frames": self.alarm.min_consecutive_frames,
                      "cooldown_ms": self.alarm.cooldown_ms},
            "attach_snapshot": self.attach_snapshot,
            "backend": self.backend,
            "params": dict(self.params),
        }


def _bad(path: str, reason: str) -> InvalidRequest:
    return InvalidRequest(f"workflow field {path}: {reason}")


def _number(data: Mapping[str, Any], key: str, path: str, default: float, lo: float, hi: float) -> float:
    value = data.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(path, f"must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise _bad(path, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise _bad(path, "must be a list of non-empty strings")
    return tuple(value)


def _parse_zone(data: Any, path: str) -> Zone:
    if not isinstance(data, Mapping):
        raise _bad(path, "must be an object with name and points")
    name = data.get("name") or ""
    if not isinstance(name, str) or len(name) > 64:
        raise _bad(f"{path}.name", "must be a string of at most 64 characters")
    raw_points = data.get("points") or []
    if not isinstance(raw_points, (list, tuple)) or not 3 <= len(raw_points) <= MAX_ZONE_POINTS:
        raise _bad(f"{path}.points", f"needs 3 to {MAX_ZONE_POINTS} points")
    points = []
    for i, p in enumerate(raw_points):
        if not isinstance(p, Mapping):
            raise _bad(f"{path}.points[{i}]", "must be an object with x and y")
        points.append((_number(p, "x", f"{path}.points[{i}].x", 0.0, 0.0, 1.0),
                       _number(p, "y", f"{path}.points[{i}].y", 0.0, 0.0, 1.0)))
    return Zone(name, tuple(points))


def _parse_alarm(data: Any) -> AlarmRule:
    if data is None:
        return AlarmRule()
    if not isinstance(data, Mapping):
        raise _bad("alarm", "must be an object")
    consecutive = _number(data, "min_consecutive_frames", "alarm.min_consecutive_frames", 1, 0, 10_000)
    cooldown = _number(data, "cooldown_ms", "alarm.cooldown_ms", 0, 0, 86_400_000)
    return AlarmRule(
        labels=_string_list(data.get("labels"), "alarm.labels"),
        min_score=_number(data, "min_score", "alarm.min_score", 0.0, 0.0, 1.0),
        min_consecutive_frames=max(1, int(consecutive)),
        cooldown_ms=int(cooldown),
    )


def parse_workflow_spec(data: Mapping[str, Any]) -> WorkflowSpec:
    """Validate a workflow given as a dict (snake_case keys, as in the proto) into a WorkflowSpec."""
    if not isinstance(data, Mapping):
        raise InvalidRequest("a workflow must be an object")
    known = {"workflow_id", "plugins", "min_score", "zones", "alarm", "attach_snapshot", "backend", "params"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _bad(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
    workflow_id = data.get("workflow_id") or ""
    if not isinstance(workflow_id, str) or (problem := check_id("workflow_id", workflow_id)):
        raise InvalidRequest(problem if isinstance(workflow_id, str) else "workflow_id must be a string")
    plugins = _string_list(data.get("plugins"), "plugins")
    if not 1 <= len(plugins) <= MAX_PLUGINS_PER_WORKFLOW:
        raise _bad("plugins", f"name 1 to {MAX_PLUGINS_PER_WORKFLOW} plugins, e.g. [\"person\"]")
    if len(set(plugins)) != len(plugins):
        raise _bad("plugins", "lists a plugin twice")
    min_score = _number(data, "min_score", "min_score", DEFAULT_MIN_SCORE, 0.0, 1.0) or DEFAULT_MIN_SCORE
    zones_raw = data.get("zones") or []
    if not isinstance(zones_raw, (list, tuple)) or len(zones_raw) > MAX_ZONES:
        raise _bad("zones", f"must be a list of at most {MAX_ZONES} zones")
    zones = tuple(_parse_zone(z, f"zones[{i}]") for i, z in enumerate(zones_raw))
    backend = data.get("backend") or ""
    if backend not in ("", *BACKEND_CHOICES):
        raise _bad("backend", f"must be one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
    params = data.get("params") or {}
    if not isinstance(params, Mapping) or len(params) > MAX_PARAMS:
        raise _bad("params", f"must be a map of at most {MAX_PARAMS} string entries")
    for key, value in params.items():
        if not isinstance(key, str) or not isinstance(value, str) or len(value) > MAX_PARAM_LENGTH:
            raise _bad(f"params[{key!r}]", f"keys and values must be strings of at most {MAX_PARAM_LENGTH} chars")
        if key.split(".", 1)[0] not in plugins or "." not in key:
            raise _bad(f"params[{key!r}]", "keys are 'plugin.name' for a plugin of this workflow")
    attach = data.get("attach_snapshot", True)
    if not isinstance(attach, bool):
        raise _bad("attach_snapshot", "must be true or false")
    return WorkflowSpec(workflow_id, plugins, min_score, zones, _parse_alarm(data.get("alarm")), attach,
                        backend, dict(params))
