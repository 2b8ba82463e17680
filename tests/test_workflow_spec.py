"""Workflow specs: a plain dict (from gRPC, the console, the config or the store) validated into a WorkflowSpec,
with every mistake an InvalidRequest naming the field; a stored spec reads back as the same spec.
"""

from __future__ import annotations

import pytest

from edgebox.errors import InvalidRequest
from edgebox.limits import MAX_PARAMS, MAX_PLUGINS_PER_WORKFLOW, MAX_ZONE_POINTS, MAX_ZONES
from edgebox.workflows.spec import DEFAULT_MIN_SCORE, AlarmRule, Zone, parse_workflow_spec

TRIANGLE = [{"x": 0, "y": 0}, {"x": 1, "y": 0}, {"x": 0.5, "y": 1}]


def spec(**fields):
    return {"workflow_id": "people", "plugins": ["person"], **fields}


def test_minimal_spec_gets_the_documented_defaults():
    parsed = parse_workflow_spec(spec())
    assert parsed.workflow_id == "people"
    assert parsed.plugins == ("person",)
    assert parsed.min_score == DEFAULT_MIN_SCORE
    assert parsed.zones == ()
    assert parsed.alarm == AlarmRule()
    assert parsed.backend == ""
    assert parsed.params == {}


def test_full_spec_is_parsed_into_typed_values():
    parsed = parse_workflow_spec(spec(
        plugins=["person", "face"], min_score=0.6, zones=[{"name": "door", "points": TRIANGLE}],
        alarm={"labels": ["person"], "min_score": 0.8, "min_consecutive_frames": 3, "cooldown_ms": 1000},
        attach_snapshot=False, backend="openvino-cpu", params={"person.min_box": "0.2", "face.threshold": "0.6"}))
    assert parsed.zones == (Zone("door", ((0.0, 0.0), (1.0, 0.0), (0.5, 1.0))),)
    assert parsed.alarm == AlarmRule(("person",), 0.8, 3, 1000)
    assert parsed.attach_snapshot is False
    assert parsed.plugin_params("person") == {"min_box": "0.2"}
    assert parsed.plugin_params("face") == {"threshold": "0.6"}
    assert parsed.plugin_params("motion") == {}


def test_stored_spec_reads_back_as_the_same_spec():
    parsed = parse_workflow_spec(spec(zones=[{"name": "z", "points": TRIANGLE}], alarm={"cooldown_ms": 5},
                                      params={"person.min_box": "0.1"}))
    assert parse_workflow_spec(parsed.to_dict()) == parsed


def test_zero_values_mean_defaults_as_in_proto3():
    parsed = parse_workflow_spec(spec(min_score=0, alarm={"min_score": 0, "min_consecutive_frames": 0}))
    assert parsed.min_score == DEFAULT_MIN_SCORE
    assert parsed.alarm.min_consecutive_frames == 1
    assert parsed.alarm.min_score == 0  # 0 = the workflow's min_score, resolved by the rules


def test_auto_and_empty_backend_are_accepted():
    assert parse_workflow_spec(spec(backend="auto")).backend == "auto"
    assert parse_workflow_spec(spec(backend="")).backend == ""


@pytest.mark.parametrize(("data", "words"), [
    ([], "must be an object"),
    ({"plugins": ["person"]}, "workflow_id is required"),
    (spec(workflow_id="has space"), "workflow_id 'has space' is invalid"),
    (spec(workflow_id="x" * 65), "workflow_id"),
    (spec(workflow_id=7), "workflow_id must be a string"),
    (spec(plugins=[]), "plugins"),
    (spec(plugins="person"), "plugins: must be a list"),
    (spec(plugins=["person", ""]), "plugins: must be a list of non-empty strings"),
    (spec(plugins=[f"p{i}" for i in range(MAX_PLUGINS_PER_WORKFLOW + 1)]), "plugins"),
    (spec(plugins=["person", "person"]), "lists a plugin twice"),
    (spec(min_score=1.5), "min_score: must be between 0 and 1"),
    (spec(min_score=-0.1), "min_score"),
    (spec(min_score="high"), "min_score: must be a number"),
    (spec(min_score=True), "min_score: must be a number"),
    (spec(min_score=float("nan")), "min_score: must be a number"),
    (spec(zones="door"), "zones"),
    (spec(zones=[{"name": "z", "points": TRIANGLE}] * (MAX_ZONES + 1)), "zones"),
    (spec(zones=["door"]), "zones[0]: must be an object"),
    (spec(zones=[{"name": "z", "points": TRIANGLE[:2]}]), "zones[0].points: needs 3"),
    (spec(zones=[{"name": "z", "points": TRIANGLE * 22}]), f"needs 3 to {MAX_ZONE_POINTS} points"),
    (spec(zones=[{"name": "z", "points": [*TRIANGLE[:2], {"x": 0.5, "y": 1.2}]}]), "zones[0].points[2].y"),
    (spec(zones=[{"name": "z", "points": [*TRIANGLE[:2], [0.5, 1]]}]), "zones[0].points[2]: must be an object"),
    (spec(zones=[{"name": 5, "points": TRIANGLE}]), "zones[0].name"),
    (spec(alarm="always"), "alarm: must be an object"),
    (spec(alarm={"labels": "person"}), "alarm.labels"),
    (spec(alarm={"min_score": 3}), "alarm.min_score"),
    (spec(alarm={"cooldown_ms": -1}), "alarm.cooldown_ms"),
    (spec(alarm={"min_consecutive_frames": 1e9}), "alarm.min_consecutive_frames"),
    (spec(backend="tpu"), "backend: must be one of"),
    (spec(params=["x"]), "params"),
    (spec(params={f"person.k{i}": "1" for i in range(MAX_PARAMS + 1)}), "params"),
    (spec(params={"min_box": "0.1"}), "params['min_box']"),
    (spec(params={"face.threshold": "0.5"}), "params['face.threshold']"),
    (spec(params={"person.min_box": 0.1}), "must be strings"),
    (spec(params={"person.min_box": "1" * 300}), "must be strings of at most"),
    (spec(attach_snapshot="yes"), "attach_snapshot"),
    (spec(colour="red"), "colour: unknown field"),
])
def test_bad_spec_raises_invalid_request_naming_the_field(data, words):
    with pytest.raises(InvalidRequest) as info:
        parse_workflow_spec(data)
    assert words in info.value.message
