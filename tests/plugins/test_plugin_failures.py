"""A plugin that fails at run time fails only its own part of a workflow's result."""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from edgebox.errors import ErrorCode, InvalidRequest
from edgebox.frames import decode_frame
from edgebox.plugins_loader import builtin_plugin_dir, load_plugins
from edgebox.workflows.crash_log import CRASH_REPEAT_WINDOW_S
from edgebox.workflows.runtime import WorkflowRuntime
from edgebox.workflows.spec import parse_workflow_spec
from tests.plugins.conftest import photo

BOOM = """
from edgebox.plugin_api import Plugin

class Boom(Plugin):
    def process(self, image, state, params):
        raise ZeroDivisionError("the plugin's own bug")
"""


def _boom_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "boom"
    folder.mkdir()
    (folder / "plugin.json").write_text('{"name": "boom", "module": "plugin.py", "class": "Boom"}')
    (folder / "plugin.py").write_text(BOOM)
    return tmp_path


async def test_plugin_raising_at_run_time_fails_only_its_part_of_a_two_plugin_workflow(tmp_path, open_pool):
    registry = load_plugins([builtin_plugin_dir(), _boom_dir(tmp_path)])
    spec = parse_workflow_spec({"workflow_id": "wf", "plugins": ["person", "boom"]})
    async with open_pool() as (pool, _):
        runtime = await WorkflowRuntime.load(spec, 1, registry, pool)
        verdict = await runtime.evaluate(photo("astronaut"), runtime.new_source_state(), now_ms=0,
                                         droppable=False)
    assert [d.label for d in verdict.detections] == ["person"]
    assert list(verdict.plugin_errors) == ["boom"]
    assert "ZeroDivisionError: the plugin's own bug" in verdict.plugin_errors["boom"]
    assert verdict.first_error is not None and verdict.first_error.code == ErrorCode.INTERNAL_ERROR
    assert verdict.alarm  # the person alone raises the alarm


async def test_backend_failure_fails_only_the_model_plugin(open_pool, monkeypatch):
    registry = load_plugins([builtin_plugin_dir()])
    spec = parse_workflow_spec({"workflow_id": "wf", "plugins": ["person", "motion"]})
    async with open_pool() as (pool, _):
        runtime = await WorkflowRuntime.load(spec, 1, registry, pool)
        [queue] = pool.queues

        def broken(batch):
            raise RuntimeError("device lost")

        monkeypatch.setattr(queue.model, "run", broken)
        state = runtime.new_source_state()
        image = photo("astronaut")
        await runtime.evaluate(image, state, now_ms=0, droppable=False)
        verdict = await runtime.evaluate(image[:, ::-1].copy(), state, now_ms=100, droppable=False)
    assert "motion" in {d.label for d in verdict.detections}
    assert list(verdict.plugin_errors) == ["person"]
    assert "[9999 INTERNAL_ERROR]" in verdict.plugin_errors["person"] and "device lost" in verdict.plugin_errors["person"]


BAD_PREPROCESS = """
from edgebox.plugin_api import Plugin

class BadPre(Plugin):
    def preprocess(self, image, params):
        raise ValueError("preprocess bug")
"""


async def test_decoding_and_first_preprocess_share_a_hop_yet_a_preprocess_bug_fails_only_its_plugin(
        tmp_path, open_pool):
    folder = tmp_path / "badpre"
    folder.mkdir()
    (folder / "plugin.json").write_text('{"name": "badpre", "module": "plugin.py", "class": "BadPre", '
                                        '"model": "m.onnx"}')
    (folder / "plugin.py").write_text(BAD_PREPROCESS)
    (folder / "m.onnx").write_bytes((builtin_plugin_dir() / "person" / "ssdlite_person.onnx").read_bytes())
    registry = load_plugins([builtin_plugin_dir(), tmp_path])
    spec = parse_workflow_spec({"workflow_id": "wf", "plugins": ["badpre", "person"]})
    image = photo("astronaut")
    async with open_pool() as (pool, _):
        runtime = await WorkflowRuntime.load(spec, 1, registry, pool)
        decoded, verdict = await runtime.evaluate_encoded(image.copy, runtime.new_source_state(), now_ms=0,
                                                          droppable=False)
    assert np.array_equal(decoded, image)
    assert [d.label for d in verdict.detections] == ["person"]
    assert list(verdict.plugin_errors) == ["badpre"] and "preprocess bug" in verdict.plugin_errors["badpre"]


async def test_a_frame_that_does_not_decode_fails_the_frame_not_a_plugin(open_pool):
    registry = load_plugins([builtin_plugin_dir()])
    spec = parse_workflow_spec({"workflow_id": "wf", "plugins": ["person"]})
    async with open_pool() as (pool, _):
        runtime = await WorkflowRuntime.load(spec, 1, registry, pool)
        with pytest.raises(InvalidRequest, match="corrupt or truncated"):
            await runtime.evaluate_encoded(functools.partial(decode_frame, b"\xff\xd8" + b"\xff\xc0\x00\x11\x08"
                                                             b"\x00\x10\x00\x10\x03" + bytes(12), 0),
                                           runtime.new_source_state(), now_ms=0, droppable=False)


INCIDENT = re.compile(r"incident ([0-9a-f]{12})")


async def test_a_plugin_crashing_on_every_frame_logs_one_traceback_per_window_and_counts_the_rest(
        tmp_path, open_pool, mock_clock, caplog):
    caplog.set_level(logging.ERROR, logger="edgebox.workflows")
    registry = load_plugins([builtin_plugin_dir(), _boom_dir(tmp_path)])
    spec = parse_workflow_spec({"workflow_id": "wf", "plugins": ["boom"]})
    image = photo("astronaut")

    async def incident_of_one_frame() -> str:
        verdict = await runtime.evaluate(image, runtime.new_source_state(), now_ms=0, droppable=False)
        assert verdict.first_error is not None and verdict.first_error.code == ErrorCode.INTERNAL_ERROR
        [in_result] = INCIDENT.findall(verdict.plugin_errors["boom"])
        [in_error] = INCIDENT.findall(verdict.first_error.client_message())
        assert in_result == in_error
        return in_result

    async with open_pool() as (pool, _):
        runtime = await WorkflowRuntime.load(spec, 1, registry, pool)
        first_window = {await incident_of_one_frame() for _ in range(5)}
        mock_clock.jump(CRASH_REPEAT_WINDOW_S - 0.5)
        first_window.add(await incident_of_one_frame())
        mock_clock.jump(0.5)
        second_window = await incident_of_one_frame()

    [first] = first_window  # six crashes, one incident
    assert second_window != first
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert [INCIDENT.search(r.getMessage()).group(1) for r in tracebacks] == [first, second_window]
    assert all(r.exc_info[0] is ZeroDivisionError for r in tracebacks)
    [summary] = [r.getMessage() for r in caplog.records if "more time(s)" in r.getMessage()]
    assert f"5 more time(s) within {CRASH_REPEAT_WINDOW_S:g} s of incident {first}" in summary
    assert len(caplog.records) == 3  # two tracebacks and the count between them, for seven crashes
