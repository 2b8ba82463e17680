"""Zones and alarm rules (edgebox.workflows.rules): which detections count and when a frame is an ALARM.

Pure functions with the time passed in, so sequences of frames are tested without sleeping.
"""

from __future__ import annotations

import pytest

from edgebox.errors import InvalidRequest
from edgebox.plugin_api import Detection
from edgebox.workflows.rules import (
    AlarmState,
    alarm_triggers,
    evaluate_alarm,
    filter_detections,
    point_in_polygon,
    zone_of,
)
from edgebox.workflows.spec import parse_workflow_spec

W, H = 640, 360
LEFT_HALF = [{"x": 0, "y": 0}, {"x": 0.5, "y": 0}, {"x": 0.5, "y": 1}, {"x": 0, "y": 1}]
DOOR = [{"x": 0.6, "y": 0.5}, {"x": 0.9, "y": 0.5}, {"x": 0.9, "y": 1}, {"x": 0.6, "y": 1}]


def spec(**fields):
    return parse_workflow_spec({"workflow_id": "wf", "plugins": ["person", "face"], **fields})


def person(score: float = 0.9, box=(100, 50, 200, 300), label: str = "person") -> Detection:
    return Detection(label, score, box)


def test_point_in_polygon_handles_concave_shapes():
    l_shape = [(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]
    assert point_in_polygon(0.5, 1.5, l_shape)
    assert point_in_polygon(1.5, 0.5, l_shape)
    assert not point_in_polygon(1.5, 1.5, l_shape)  # the notch
    assert not point_in_polygon(3, 0.5, l_shape)


def test_a_detection_is_in_the_zone_where_it_stands():
    zones = spec(zones=[{"name": "left", "points": LEFT_HALF}, {"name": "door", "points": DOOR}]).zones
    # The box's bottom-centre decides: this box reaches into the door zone but stands on the left half.
    assert zone_of(person(box=(200, 10, 420, 340)), zones, W, H) == "left"
    assert zone_of(person(box=(420, 200, 540, 350)), zones, W, H) == "door"
    assert zone_of(person(box=(580, 20, 638, 100)), zones, W, H) is None  # above the door zone


def test_filter_keeps_scores_at_or_over_min_score_and_tags_the_zone():
    s = spec(min_score=0.6, zones=[{"name": "left", "points": LEFT_HALF}])
    kept = filter_detections(s, [person(0.59), person(0.6), person(0.95, box=(400, 10, 500, 300))], W, H)
    assert [(d.score, d.extra.get("zone")) for d in kept] == [(0.6, "left")]


def test_without_zones_the_whole_frame_counts():
    kept = filter_detections(spec(), [person(box=(600, 10, 640, 360)), person(0.2)], W, H)
    assert len(kept) == 1 and "zone" not in kept[0].extra


def test_alarm_triggers_only_on_the_rule_labels_and_its_own_min_score():
    s = spec(min_score=0.5, alarm={"labels": ["person"], "min_score": 0.8})
    dets = [person(0.7), person(0.85), person(0.99, label="face")]
    assert [d.score for d in alarm_triggers(s, dets)] == [0.85]
    assert [d.label for d in alarm_triggers(spec(min_score=0.5), dets)] == ["person", "person", "face"]


def test_min_consecutive_frames_needs_an_unbroken_run():
    s = spec(alarm={"min_consecutive_frames": 3})
    state = AlarmState()
    frames = [[person()], [person()], [], [person()], [person()], [person()], [person()]]
    verdicts = [evaluate_alarm(s, dets, state, now_ms=i * 500) for i, dets in enumerate(frames)]
    assert verdicts == [False, False, False, False, False, True, True]


def test_cooldown_suppresses_alarms_until_it_has_passed():
    s = spec(alarm={"cooldown_ms": 10_000})
    state = AlarmState()
    times = [0, 1_000, 9_999, 10_000, 15_000, 20_000]
    assert [evaluate_alarm(s, [person()], state, now_ms=t) for t in times] == [True, False, False, True, False, True]


def test_cooldown_and_consecutive_frames_combine():
    s = spec(alarm={"min_consecutive_frames": 2, "cooldown_ms": 5_000})
    state = AlarmState()
    seq = [(0, True), (500, True), (1_000, True), (1_500, False), (6_000, True), (6_500, True)]
    got = [evaluate_alarm(s, [person()] if present else [], state, now_ms=t) for t, present in seq]
    # 500: second frame in a row -> ALARM; 1000: cooling down; 6000: first of a new run; 6500: run of 2, cooled.
    assert got == [False, True, False, False, False, True]


def test_a_frame_without_triggers_is_normal_and_resets_the_run():
    s = spec(alarm={"min_consecutive_frames": 2})
    state = AlarmState()
    assert not evaluate_alarm(s, [person()], state, now_ms=0)
    assert not evaluate_alarm(s, [person(0.1)], state, now_ms=1)  # under min_score: no trigger
    assert state.consecutive == 0


@pytest.mark.parametrize(("alarm", "message"), [
    ({"min_consecutive_frames": -1}, "alarm.min_consecutive_frames"),
    ({"cooldown_ms": "soon"}, "alarm.cooldown_ms"),
    ({"labels": "person"}, "alarm.labels"),
    ({"min_score": 1.5}, "alarm.min_score"),
])
def test_bad_alarm_rules_are_refused_with_the_field_path(alarm, message):
    with pytest.raises(InvalidRequest, match=message.replace(".", r"\.")):
        spec(alarm=alarm)


def test_zones_need_three_points_inside_the_frame():
    with pytest.raises(InvalidRequest, match=r"zones\[0\]\.points"):
        spec(zones=[{"name": "x", "points": LEFT_HALF[:2]}])
    with pytest.raises(InvalidRequest, match=r"zones\[0\]\.points\[1\]\.x"):
        spec(zones=[{"name": "x", "points": [{"x": 0, "y": 0}, {"x": 1.2, "y": 0}, {"x": 0, "y": 1}]}])
