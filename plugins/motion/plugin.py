"""Motion by frame differencing: changed regions between a source's consecutive frames (no model).

Parameters: threshold (grey-level change 1..255, default 25) and min_area (fraction of the frame a region must
cover, default 0.002). The first frame of a source only primes the state and reports nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np

from edgebox.plugin_api import Detection, Plugin, param_float

WORK_WIDTH = 320
KNOWN = ("threshold", "min_area")


class MotionState:
    __slots__ = ("previous",)

    def __init__(self) -> None:
        self.previous: np.ndarray | None = None


class MotionPlugin(Plugin):
    def new_state(self) -> MotionState:
        return MotionState()

    def validate_params(self, params: Mapping[str, str]) -> None:
        for key in params:
            if key not in KNOWN:
                raise ValueError(f"unknown parameter {key!r} (motion knows: {', '.join(KNOWN)})")
        param_float(params, "threshold", 25, 1, 255)
        param_float(params, "min_area", 0.002, 0.0, 1.0)

    def process(self, image: np.ndarray, state: Any, params: Mapping[str, str]) -> list[Detection]:
        if state is None:  # a single frame (InferSingleFrame) has nothing to compare with
            return []
        threshold = param_float(params, "threshold", 25, 1, 255)
        min_area = param_float(params, "min_area", 0.002, 0.0, 1.0)
        height, width = image.shape[:2]
        factor = WORK_WIDTH / width if width > WORK_WIDTH else 1.0
        small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))))
        grey = cv2.GaussianBlur(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), (5, 5), 0)
        previous, state.previous = state.previous, grey
        if previous is None or previous.shape != grey.shape:
            return []
        diff = cv2.absdiff(grey, previous)
        _, mask = cv2.threshold(diff, threshold, 255, cv2.THRESH_BINARY)
        mask = cv2.dilate(mask, None, iterations=2)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        frame_area = grey.shape[0] * grey.shape[1]
        found = []
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            covered = cv2.contourArea(contour) / frame_area
            if covered < min_area:
                continue
            box = (x / factor, y / factor, (x + w) / factor, (y + h) / factor)
            found.append(Detection("motion", 1.0, box, {"area": round(covered, 4)}))
        return found
