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
class ModelSpec:
    """A model file the scheduler loads once per backend and shares across cameras."""

    path: Path
    # Inputs of one frame must have this shape (without the batch axis) to be batched together.
    batchable: bool = True


class Plugin:
    """Base class; subclasses set `labels` and override the methods they need."""

    name: str = ""
    labels: Sequence[str] = ()
    model: ModelSpec | None = None

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


def letterbox(image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float, int, int]:
    """Scale to fit `size` (w, h) keeping the aspect ratio, pad with grey; returns (img, scale, pad_x, pad_y)."""
    import cv2

    width, height = size
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((height, width, 3), 114, dtype=np.uint8)
    pad_x, pad_y = (width - nw) // 2, (height - nh) // 2
    canvas[pad_y:pad_y + nh, pad_x:pad_x + nw] = resized
    return canvas, scale, pad_x, pad_y
