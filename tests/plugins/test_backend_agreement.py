"""The person and face models give the same detections on onnxruntime-cpu and openvino-cpu."""

from __future__ import annotations

import pytest

from tests.plugins.conftest import PHOTOS, photo

BACKENDS = ("onnxruntime-cpu", "openvino-cpu")
BOX_PX = 1.0
SCORE = 0.01


def _same(a, b) -> bool:
    return (a.label == b.label and abs(a.score - b.score) <= SCORE
            and all(abs(p - q) <= BOX_PX for p, q in zip(a.box, b.box)))


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("plugin", ["person", "face"])
def test_onnxruntime_and_openvino_agree_within_1px_and_001(detect, hardware, plugin, name):
    for backend in BACKENDS:
        if backend not in hardware.usable_backends():
            pytest.skip(f"{backend} is not usable here")
    image = photo(name)
    ort, ov = (detect(plugin, image, backend) for backend in BACKENDS)
    # Compare every detection that a workflow could keep (score >= 0.3); near the plugin's own floor a
    # detection may sit on either side of it, so the match is searched among all of the other backend's.
    for mine, theirs in ((ort, ov), (ov, ort)):
        for det in (d for d in mine if d.score >= 0.3):
            assert any(_same(det, other) for other in theirs), f"{det} has no match in {theirs[:5]}"
    if plugin == "face":
        for a, b in zip(sorted(ort, key=lambda d: -d.score), sorted(ov, key=lambda d: -d.score)):
            for (ax, ay), (bx, by) in zip(a.extra["landmarks"], b.extra["landmarks"]):
                assert abs(ax - bx) <= BOX_PX and abs(ay - by) <= BOX_PX
