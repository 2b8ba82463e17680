"""Person detector: SSDLite-MobileNetV2 (see plugins/MODELS.md), NMS inside the graph.

The frame is letterboxed (not squashed) to 300x300 so that small people in 16:9 frames keep their shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from edgebox.plugin_api import Detection, Plugin, letterbox, param_float

INPUT_SIZE = (300, 300)
PERSON_CLASS = 1.0


class PersonPlugin(Plugin):
    def validate_params(self, params: Mapping[str, str]) -> None:
        for key in params:
            if key != "min_box":
                raise ValueError(f"unknown parameter {key!r} (person knows: min_box)")
        param_float(params, "min_box", 0.0, 0.0, 1.0)

    def preprocess(self, image: np.ndarray, params: Mapping[str, str]) -> tuple[np.ndarray, Any]:
        canvas, scale, pad_x, pad_y = letterbox(image, INPUT_SIZE)
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        return rgb, (scale, pad_x, pad_y, image.shape[1], image.shape[0])

    def postprocess(self, outputs: Sequence[np.ndarray], context: Any,
                    params: Mapping[str, str]) -> list[Detection]:
        boxes, scores, classes, count = outputs[0], outputs[1], outputs[2], outputs[3]
        scale, pad_x, pad_y, width, height = context
        min_box = param_float(params, "min_box", 0.0, 0.0, 1.0)  # fraction of frame height
        found = []
        for i in range(int(np.asarray(count).reshape(-1)[0])):
            if classes[i] != PERSON_CLASS or scores[i] < 0.05:
                continue
            ymin, xmin, ymax, xmax = (float(v) for v in boxes[i])
            x1 = min(max((xmin * INPUT_SIZE[0] - pad_x) / scale, 0.0), width)
            x2 = min(max((xmax * INPUT_SIZE[0] - pad_x) / scale, 0.0), width)
            y1 = min(max((ymin * INPUT_SIZE[1] - pad_y) / scale, 0.0), height)
            y2 = min(max((ymax * INPUT_SIZE[1] - pad_y) / scale, 0.0), height)
            if x2 - x1 < 1 or y2 - y1 < 1 or (y2 - y1) < min_box * height:
                continue
            found.append(Detection("person", float(scores[i]), (x1, y1, x2, y2)))
        return found
