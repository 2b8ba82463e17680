"""The interface every algorithm plugin implements: preprocess, postprocess, labels, and its model.

Plugins (built-in ones in the repo's plugins/ folder, more from --plugin_dir) subclass `Plugin`. A plugin with a
model is run by the scheduler in batches; a plugin without one (`model is None`) runs `process` directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One finding in pixel coordinates of the frame the plugin was given."""

    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"label": self.label, "score": round(float(self.score), 4),
                                "box": [round(float(v), 1) for v in self.box]}
        data.update(self.extra)
        return data

    def shifted(self, dx: float, dy: float) -> Detection:
        x1, y1, x2, y2 = self.box
        return Detection(self.label, self.score, (x1 + dx, y1 + dy, x2 + dx, y2 + dy), self.extra)


@dataclass(frozen=True)
class ModelInput:
    """The model input as the plugin's preprocess produces it (from the manifest's "input")."""

    name: str  # e.g. "input.1"
    shape: tuple[int, ...]  # one frame, without the batch axis, e.g. (3, 384, 640)
    dtype: str  # numpy dtype name: "uint8" or "float32"


@dataclass(frozen=True)
class ModelSpec:
    """A model file the scheduler loads once per backend and shares across cameras."""

    path: Path
    # Inputs of one frame must have this shape (without the batch axis) to be batched together.
    batchable: bool = True
    # Needed by backends that build an engine per input shape (TensorRT: optimization profiles and a warm-up per
    # batch size at load time); None when the manifest does not declare it (such backends then refuse the model).
    input: ModelInput | None = None


class Plugin:
    """Base class; subclasses set `labels` and override the methods they need."""

    name: str = ""
    labels: Sequence[str] = ()
    model: ModelSpec | None = None
    # True only when `postprocess` is short and bounded (well under a millisecond whatever the outputs): it then
    # runs on the event loop instead of costing a worker-thread hop (~0.14 ms) per frame. Plugins from
    # --plugin_dir keep the default, so their code never blocks the engine.
    postprocess_inline: bool = False

    def __init__(self, name: str, directory: Path, manifest: Mapping[str, Any]) -> None:
        self.name = name
        self.directory = directory
        self.manifest = manifest

    def new_state(self) -> Any:
        """Per-source state (e.g. the previous frame for motion); None for stateless plugins."""
        return None

    def preprocess(self, image: np.ndarray, params: Mapping[str, str]) -> tuple[np.ndarray, Any]:
        """BGR uint8 frame -> (one model input without the batch axis, context for postprocess)."""
        raise TypeError(f"plugin {self.name!r} has a model but no preprocess")

    def postprocess(self, outputs: Sequence[np.ndarray], context: Any,
                    params: Mapping[str, str]) -> list[Detection]:
        """This frame's model outputs (batch axis removed) -> detections in frame pixels."""
        raise TypeError(f"plugin {self.name!r} has a model but no postprocess")

    def process(self, image: np.ndarray, state: Any, params: Mapping[str, str]) -> list[Detection]:
        """Model-less plugins: frame -> detections, using and updating `state`."""
        raise TypeError(f"plugin {self.name!r} has no model and no process")


def param_float(params: Mapping[str, str], key: str, default: float, lo: float, hi: float) -> float:
    """Read a numeric plugin parameter; bad values raise ValueError naming the key (checked at deploy)."""
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"parameter {key!r} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"parameter {key!r} must be between {lo:g} and {hi:g}, got {raw!r}")
    return value


def downscale(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to `size` (w, h): halve with bilinear steps while the image is twice the target, then bilinear.

    A bilinear halving averages each 2x2 block, as INTER_AREA does, so this stays within a few grey levels of
    INTER_AREA (mean 0.4-1.2 on the test photos) at a fifth to a ninth of its cost here (512x512 -> 300x300:
    0.23 vs 2.0 ms; 1920x1080 -> 300x169: 1.0 vs 8.0 ms; docs/benchmarks.md#inference). Plain bilinear from far
    above the target would skip pixels and alias.
    """
    import cv2

    width, height = size
    h, w = image.shape[:2]
    while w >= 2 * width and h >= 2 * height:
        w, h = w // 2, h // 2
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if (w, h) == (width, height):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def letterbox(image: np.ndarray, size: tuple[int, int], *,
              rgb: bool = False) -> tuple[np.ndarray, float, int, int]:
    """Scale to fit `size` (w, h) keeping the aspect ratio, pad with grey; returns (img, scale, pad_x, pad_y).

    With rgb=True the BGR frame comes out as RGB, swapped while it is copied into the canvas (no extra pass).
    """
    import cv2

    width, height = size
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = downscale(image, (nw, nh))
    canvas = np.full((height, width, 3), 114, dtype=np.uint8)  # grey: the same in BGR and RGB
    pad_x, pad_y = (width - nw) // 2, (height - nh) // 2
    inner = canvas[pad_y:pad_y + nh, pad_x:pad_x + nw]
    if rgb:
        cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=inner)
    else:
        inner[...] = resized
    return canvas, scale, pad_x, pad_y
