"""The built-in plugins on real photos with their real models (tests/data, from scikit-image)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgebox.plugin_api import downscale, letterbox
from tests.plugins.conftest import photo

MIN_SCORE = 0.5  # the default workflow min_score


def confident(detections):
    return [d for d in detections if d.score >= MIN_SCORE]


def test_person_finds_the_astronaut(detect):
    [person] = confident(detect("person", photo("astronaut")))
    assert person.label == "person"
    assert person.score == pytest.approx(0.93, abs=0.02)
    x1, y1, x2, y2 = person.box
    # She fills the left two thirds of the 512x512 frame, head near the top, cut off by the bottom edge.
    assert x1 < 20 and y1 < 60 and 340 < x2 < 410 and y2 > 480


def test_person_finds_the_cameraman(detect):
    [person] = confident(detect("person", photo("camera")))
    assert person.score == pytest.approx(0.99, abs=0.02)


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_person_finds_nobody_in_photos_without_people(detect, name):
    assert confident(detect("person", photo(name))) == []


def test_person_boxes_stay_inside_a_wide_frame(detect):
    wide = np.zeros((360, 1280, 3), np.uint8)
    wide[:, 400:912] = photo("astronaut")[76:436]  # letterboxed, not squashed: the box maps back to this frame
    [person] = confident(detect("person", wide))
    x1, y1, x2, y2 = person.box
    assert 0 <= x1 and x2 <= 1280 and 0 <= y1 and y2 <= 360
    assert 390 < x1 < 430 and x2 < 830


def test_face_finds_the_astronauts_face_with_five_landmarks(detect):
    [face] = detect("face", photo("astronaut"))
    assert face.label == "face"
    assert face.score == pytest.approx(0.88, abs=0.02)
    x1, y1, x2, y2 = face.box
    assert 170 < x1 < 200 and 50 < y1 < 80 and 255 < x2 < 285 and 160 < y2 < 190
    landmarks = face.extra["landmarks"]
    assert len(landmarks) == 5
    for x, y in landmarks:
        assert x1 <= x <= x2 and y1 <= y <= y2
    (lx, ly), (rx, ry) = landmarks[0], landmarks[1]
    assert lx < rx and abs(ly - ry) < 10  # eyes side by side


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_face_finds_no_face_in_photos_without_people(detect, name):
    assert detect("face", photo(name)) == []


def test_face_threshold_parameter_filters(detect):
    assert detect("face", photo("astronaut"), params={"threshold": "0.95"}) == []


# -- motion (no model) -------------------------------------------------------------------------------------------
@pytest.fixture
def motion(registry):
    return registry.get("motion")


def test_motion_finds_the_moved_region_between_two_shifted_frames(motion):
    state = motion.new_state()
    first = photo("astronaut")
    assert motion.process(first, state, {}) == []  # the first frame only primes the state
    moved = np.roll(first, 24, axis=1)
    found = motion.process(moved, state, {})
    assert found and all(d.label == "motion" for d in found)
    assert sum(d.extra["area"] for d in found) > 0.05


def test_motion_finds_nothing_between_identical_frames(motion):
    state = motion.new_state()
    image = photo("astronaut")
    motion.process(image, state, {})
    assert motion.process(image.copy(), state, {}) == []


def test_motion_without_state_reports_nothing(motion):
    assert motion.process(photo("astronaut"), None, {}) == []


def test_motion_min_area_parameter_filters_small_changes(motion):
    state = motion.new_state()
    image = photo("coffee")
    motion.process(image, state, {})
    changed = image.copy()
    changed[10:30, 10:30] = 255 - changed[10:30, 10:30]  # a 20x20 change in a 600x400 frame
    assert motion.process(changed, state, {"min_area": "0.0001"})
    motion.process(image, state, {})
    assert motion.process(changed, state, {"min_area": "0.05"}) == []


def test_letterbox_swaps_to_rgb_while_copying_and_downscale_stays_near_inter_area():
    image = photo("astronaut")
    bgr, scale, pad_x, pad_y = letterbox(image, (300, 200))
    rgb, *_ = letterbox(image, (300, 200), rgb=True)
    assert (scale, pad_x, pad_y) == (200 / 512, 50, 0)
    assert np.array_equal(rgb, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    assert (bgr[:, :50] == 114).all() and (bgr[:, 250:] == 114).all()
    wide = cv2.resize(image, (1920, 1080))
    for source, size in ((image, (300, 300)), (wide, (300, 169)), (wide, (640, 360))):
        diff = np.abs(downscale(source, size).astype(int) - cv2.resize(source, size, interpolation=cv2.INTER_AREA))
        assert diff.mean() < 1.5, size
