"""Per-camera options: the typed `CameraOptions` and the parser that validates the string map from AddCamera.

Owns the option names, defaults and ranges (and their one-line docs in `CAMERA_CONFIG_KEYS`); it does not open
anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgebox.errors import InvalidRequest

FPS_RANGE = (0.1, 30.0)
WATCHDOG_RANGE_S = (1.0, 120.0)
OPEN_TIMEOUT_RANGE_S = (1.0, 60.0)
MAX_BACKOFF_RANGE_S = (1.0, 30.0)  # the cap is 30 s so a dead camera is retried at least every 30 s
TRANSPORTS = ("tcp", "udp")

CAMERA_CONFIG_KEYS: dict[str, str] = {
    "fps": "Frames per second handed to the pipeline, 0.1..30 (default 5); every frame is still decoded.",
    "roi": "Region of interest 'x,y,w,h' as fractions of the frame (default: whole frame).",
    "transport": "RTSP transport, 'tcp' (default) or 'udp'; ignored for other URL schemes.",
    "watchdog_s": "No new frame for this many seconds marks the camera STALLED and reopens it, 1..120 (default 5).",
    "open_timeout_s": "Seconds allowed to connect and open the stream, 1..60 (default 10); RTSP must answer OPTIONS in 2.",
    "max_backoff_s": "Cap of the reconnect back-off (0.5 s doubling), 1..30 (default 30).",
    "expected_stream": "The stream's size and rate 'WIDTHxHEIGHT@FPS', e.g. '640x360@10': what admission control "
                       "counts for this camera until it has streamed (default: like the streaming cameras, "
                       "else 1280x720@15).",
}
EXPECTED_SIDE_RANGE = (16, 16384)
EXPECTED_FPS_RANGE = (0.1, 240.0)


@dataclass(frozen=True)
class Roi:
    """A normalized rectangle: x, y, w, h are fractions of the frame width and height."""

    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class CameraOptions:
    fps: float = 5.0
    roi: Roi | None = None  # the runner never crops; the pipeline applies it
    transport: str = "tcp"
    watchdog_s: float = 5.0
    open_timeout_s: float = 10.0
    max_backoff_s: float = 30.0
    expected_stream: tuple[int, int, float] | None = None  # (width, height, source fps) declared by the operator


def parse_camera_options(config: Mapping[str, str]) -> CameraOptions:
    """Validate AddCamera's option map; raises InvalidRequest naming the key, the value and the allowed range."""
    unknown = sorted(set(config) - set(CAMERA_CONFIG_KEYS))
    if unknown:
        raise InvalidRequest(
            f"unknown camera option {', '.join(repr(k) for k in unknown)}; "
            f"known options: {', '.join(CAMERA_CONFIG_KEYS)}"
        )
    values: dict[str, object] = {}
    for key, limits in (
        ("fps", FPS_RANGE),
        ("watchdog_s", WATCHDOG_RANGE_S),
        ("open_timeout_s", OPEN_TIMEOUT_RANGE_S),
        ("max_backoff_s", MAX_BACKOFF_RANGE_S),
    ):
        if key in config:
            values[key] = _number(key, config[key], limits)
    if "transport" in config:
        transport = str(config["transport"]).strip().lower()
        if transport not in TRANSPORTS:
            raise InvalidRequest(f"camera option 'transport' = {config['transport']!r} is not allowed; use 'tcp' or 'udp'")
        values["transport"] = transport
    if "roi" in config:
        values["roi"] = _roi(config["roi"])
    if "expected_stream" in config:
        values["expected_stream"] = _expected_stream(config["expected_stream"])
    return CameraOptions(**values)  # type: ignore[arg-type]


def _expected_stream(raw: str) -> tuple[int, int, float]:
    (low, high), (fps_low, fps_high) = EXPECTED_SIDE_RANGE, EXPECTED_FPS_RANGE
    rule = (f"expected 'WIDTHxHEIGHT@FPS' such as '640x360@10', sides {low}..{high} pixels, "
            f"fps {fps_low:g}..{fps_high:g}")
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*@\s*(\d{1,4}(?:\.\d{1,4})?)\s*", str(raw))
    if match is None:
        raise InvalidRequest(f"camera option 'expected_stream' = {str(raw)[:40]!r} is malformed; {rule}")
    width, height, fps = int(match.group(1)), int(match.group(2)), float(match.group(3))
    if not (low <= width <= high and low <= height <= high and fps_low <= fps <= fps_high):
        raise InvalidRequest(f"camera option 'expected_stream' = {str(raw)[:40]!r} is out of range; {rule}")
    return width, height, fps


def _number(key: str, raw: str, limits: tuple[float, float]) -> float:
    low, high = limits
    allowed = f"allowed range {low:g}..{high:g}"
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise InvalidRequest(f"camera option {key!r} = {raw!r} is not a number; {allowed}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"camera option {key!r} = {raw!r} is out of range; {allowed}")
    return value


def _roi(raw: str) -> Roi:
    rule = "expected 'x,y,w,h' fractions with 0<=x,y<1, 0<w,h<=1, x+w<=1, y+h<=1"
    parts = str(raw).split(",")
    try:
        x, y, w, h = (float(p.strip()) for p in parts)
    except ValueError:
        raise InvalidRequest(f"camera option 'roi' = {raw!r} is malformed; {rule}") from None
    # A small epsilon so "0.7,0,0.3,1" is not rejected for float rounding.
    eps = 1e-9
    ok = (
        all(math.isfinite(v) for v in (x, y, w, h))
        and 0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1
        and x + w <= 1 + eps and y + h <= 1 + eps
    )
    if not ok:
        raise InvalidRequest(f"camera option 'roi' = {raw!r} is out of range; {rule}")
    return Roi(x, y, w, h)
