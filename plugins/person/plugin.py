"""Person detector: SSDLite-MobileNetV2 (see plugins/MODELS.md), NMS inside the graph.

The frame is letterboxed (not squashed) to 300x300 so that small people in 16:9 frames keep their shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgebox.plugin_api import Detection, Plugin, letterbox, param_float

INPUT_SIZE = (300, 300)
PERSON_CLASS = 1.0


class PersonPlugin(Plugin):
    postprocess_inline = True  # vectorized over at most 100 boxes (the graph's limit): ~0.03 ms
    def validate_params(self, params: Mapping[str, str]) -> None:
        for key in params:
            if key != "min_box":
                raise ValueError(f"unknown parameter {key!r} (person knows: min_box)")
        param_float(params, "min_box", 0.0, 0.0, 1.0)

    def preprocess(self, image: np.ndarray, params: Mapping[str, str]) -> tuple[np.ndarray, Any]:
        rgb, scale, pad_x, pad_y = letterbox(image, INPUT_SIZE, rgb=True)
        return rgb, (scale, pad_x, pad_y, image.shape[1], image.shape[0])

    def postprocess(self, outputs: Sequence[np.ndarray], context: Any,
                    params: Mapping[str, str]) -> list[Detection]:
        boxes, scores, classes, count = outputs[0], outputs[1], outputs[2], outputs[3]
        scale, pad_x, pad_y, width, height = context
        min_box = param_float(params, "min_box", 0.0, 0.0, 1.0)  # fraction of frame height
        n = int(np.asarray(count).reshape(-1)[0])
        keep = (classes[:n] == PERSON_CLASS) & (scores[:n] >= 0.05)
        ymin, xmin, ymax, xmax = boxes[:n][keep].astype(np.float64).T
        x1 = np.clip((xmin * INPUT_SIZE[0] - pad_x) / scale, 0.0, width)
        x2 = np.clip((xmax * INPUT_SIZE[0] - pad_x) / scale, 0.0, width)
        y1 = np.clip((ymin * INPUT_SIZE[1] - pad_y) / scale, 0.0, height)
        y2 = np.clip((ymax * INPUT_SIZE[1] - pad_y) / scale, 0.0, height)
        big = (x2 - x1 >= 1) & (y2 - y1 >= 1) & (y2 - y1 >= min_box * height)
        return [Detection("person", float(score), (float(a), float(b), float(c), float(d)))
                for score, a, b, c, d in zip(scores[:n][keep][big], x1[big], y1[big], x2[big], y2[big], strict=True)]
