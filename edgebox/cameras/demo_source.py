"""`DemoSource`: synthetic cameras for demos and tests without hardware, `demo://person` and `demo://empty`.

Frames are drawn with numpy on the event loop (a few hundred microseconds at 640x360) and paced with trio.sleep;
no threads. `PerFrameSource` counts and samples them. The person photo ships inside the package (edgebox/demo/astronaut.jpg) so a one-file build finds it.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import cv2
import numpy as np
import trio

from edgebox.cameras.sampling import PerFrameSource
from edgebox.cameras.state import StreamError, StreamFailure

DEMO_WIDTH, DEMO_HEIGHT = 640, 360
DEMO_FPS = 10.0
PERSON_HEIGHT = 300  # pixels on the 360-pixel canvas: large enough for a detector at 640 input
WALK_PERIOD_S = 24.0  # one slow left-right-left crossing
PERSON_IMAGE = ("demo", "astronaut.jpg")  # relative to the edgebox package


@functools.lru_cache(maxsize=1)
def _person_sprite() -> np.ndarray:
    resource = resources.files("edgebox").joinpath(*PERSON_IMAGE)
    try:
        data = resource.read_bytes()
    except (FileNotFoundError, OSError) as exc:
        raise StreamFailure(StreamError.NOT_FOUND, f"demo image edgebox/{'/'.join(PERSON_IMAGE)} missing: {exc}") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise StreamFailure(StreamError.UNSUPPORTED_CODEC, f"demo image edgebox/{'/'.join(PERSON_IMAGE)} unreadable")
    scale = PERSON_HEIGHT / image.shape[0]
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), PERSON_HEIGHT), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=1)
def _room() -> np.ndarray:
    """A still backdrop: a wall shading from light to dark grey above a brown floor."""
    rows = np.linspace(200, 120, DEMO_HEIGHT, dtype=np.float32)[:, None, None]
    room = np.broadcast_to(rows * np.array([1.0, 0.98, 0.95], np.float32), (DEMO_HEIGHT, DEMO_WIDTH, 3)).copy()
    room[int(DEMO_HEIGHT * 0.8):] = (60, 80, 110)
    return room.astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _gradient_strip() -> np.ndarray:
    """A colour gradient twice the frame width; the empty scene pans a window over it."""
    x = np.linspace(0, 2 * math.pi, 2 * DEMO_WIDTH, endpoint=False, dtype=np.float32)
    y = np.linspace(0, 1, DEMO_HEIGHT, dtype=np.float32)[:, None]
    b = 128 + 100 * np.sin(x)[None, :] * (1 - 0.5 * y)
    g = 128 + 100 * np.sin(x + 2.1)[None, :] * np.ones_like(y)
    r = 128 + 100 * np.sin(x + 4.2)[None, :] * (0.5 + 0.5 * y)
    return np.stack([b, g, r], axis=-1).astype(np.uint8)


class DemoSource(PerFrameSource):
    """A synthetic live camera; `kind` is "person" (a photo walking slowly) or "empty" (a panning gradient)."""

    def __init__(self, kind: str, *, fps: float = DEMO_FPS) -> None:
        if kind not in ("person", "empty"):
            raise ValueError(f"unknown demo kind {kind!r}")
        self._kind = kind
        self._interval = 1.0 / fps
        self._t0 = 0.0
        self._next_due = 0.0
        self._open = False

    async def connect(self) -> None:
        """Load the assets (cached after the first open); raises StreamFailure if the photo is missing."""
        if self._kind == "person":
            _person_sprite()
        _room(), _gradient_strip()
        self._t0 = self._next_due = trio.current_time()
        self._open = True

    async def next_frame(self) -> np.ndarray:
        """The next frame, at the demo frame rate."""
        if not self._open:
            raise StreamFailure(StreamError.OTHER, f"demo://{self._kind} is not open")
        await trio.sleep_until(self._next_due)
        now = trio.current_time()
        self._next_due = max(self._next_due + self._interval, now)
        return self._person(now - self._t0) if self._kind == "person" else self._empty(now - self._t0)

    async def aclose(self) -> None:
        self._open = False

    def _person(self, t: float) -> np.ndarray:
        frame = _room().copy()
        sprite = _person_sprite()
        h, w = sprite.shape[:2]
        w = min(w, DEMO_WIDTH)
        # Ease left-right-left with a small bob, like someone pacing in front of the camera.
        phase = (1 - math.cos(2 * math.pi * t / WALK_PERIOD_S)) / 2
        x = round(phase * (DEMO_WIDTH - w))
        y = DEMO_HEIGHT - h - 10 + round(3 * math.sin(2 * math.pi * t * 0.8))
        y = max(0, min(DEMO_HEIGHT - h, y))
        frame[y:y + h, x:x + w] = sprite[:, :w]
        return frame

    def _empty(self, t: float) -> np.ndarray:
        offset = round(t * 40) % DEMO_WIDTH  # 40 px/s pan
        return _gradient_strip()[:, offset:offset + DEMO_WIDTH].copy()
