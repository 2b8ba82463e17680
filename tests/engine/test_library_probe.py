"""Probing onnxruntime and OpenVINO in a child process: the real child, a broken one, a hung one, and an engine
that keeps both libraries out of its memory until a model needs them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from edgebox.engine.hardware import LibraryProbe, probe_libraries
from edgebox.engine.library_probe import ProbeChild, ProbeChildFailed, parse_probe, probe_libraries_isolated
from tests.support.engine import AsyncioThread, connect, photo_png, start_engine_process


async def test_the_child_answers_what_this_process_finds():
    in_child = await ProbeChild().answer(timeout_s=60)
    assert in_child == probe_libraries()
    assert "CPUExecutionProvider" in in_child.onnxruntime_providers and "CPU" in in_child.openvino_devices


@pytest.mark.parametrize("stdout, problem", [
    (b"", "printed nothing"),
    (b"warming up\n[1, 2]\n", "not a JSON object"),
    (b'{"onnxruntime_providers": []}\n', "lacks 'openvino_devices'"),
    (b"{not json\n", "Expecting property name"),
])
def test_an_answer_that_is_not_a_probe_is_refused_with_the_reason(stdout: bytes, problem: str):
    with pytest.raises(ValueError, match=problem):
        parse_probe(stdout)


def test_the_answer_is_the_last_line_so_library_chatter_before_it_is_harmless():
    answer = b'OpenVINO says hello\n{"onnxruntime_providers": ["CPUExecutionProvider"], "openvino_devices": ' \
             b'["CPU", "GPU.0"], "tensorrt_installed": false, "problems": ["x"]}\n'
    assert parse_probe(answer) == LibraryProbe(("CPUExecutionProvider",), ("CPU", "GPU.0"), False, ("x",))


async def test_a_crashing_child_is_reported_with_its_status_and_stderr():
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('libopenvino.so: cannot open'); sys.exit(3)"]
    with pytest.raises(ProbeChildFailed, match="status 3: libopenvino.so: cannot open"):
        await ProbeChild(argv).answer(timeout_s=60)


async def test_a_hung_child_is_killed_at_the_deadline(autojump_clock: trio.testing.MockClock):
    started = trio.current_time()
    with pytest.raises(ProbeChildFailed, match="did not answer within 60 s and was killed"):
        await ProbeChild([sys.executable, "-c", "import time; time.sleep(600)"]).answer(timeout_s=60)
    assert trio.current_time() - started == pytest.approx(60)


async def test_a_child_that_cannot_start_is_reported():
    with pytest.raises(ProbeChildFailed, match="could not be started: .*No such file"):
        await ProbeChild(["/nonexistent/edgebox"]).answer(timeout_s=60)


async def test_a_failed_child_falls_back_to_probing_here_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, "edgebox.engine.hardware"):
        found = await probe_libraries_isolated(ProbeChild([sys.executable, "-c", "raise SystemExit(9)"]))
    assert found == probe_libraries()
    [warning] = [r.getMessage() for r in caplog.records if "FALLBACK" in r.getMessage()]
    assert "status 9" in warning and "own process" in warning


def mapped_libraries(pid: int) -> set[str]:
    names = set()
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        for line in maps:
            path = line.split(maxsplit=5)[-1].strip()
            for library in ("onnxruntime_pybind11_state", "libopenvino.so", "libopenvino_intel_cpu_plugin"):
                if library in Path(path).name:
                    names.add(library)
    return names


async def test_an_idle_engine_maps_neither_library_until_a_model_loads(tmp_path: Path, aio: AsyncioThread):
    engine = start_engine_process(tmp_path, {"log_level": "INFO"})
    try:
        assert engine.proc is not None
        assert mapped_libraries(engine.proc.pid) == set()
        with connect(aio, engine.host, engine.port) as client:
            health = await client.health()  # the child's answer is what HealthCheck reports
            assert {"openvino-cpu", "onnxruntime-cpu"} <= set(health.backends)
            result = await client.infer(photo_png("astronaut"), plugin="person")
        assert '"person"' in result.json_data
        assert {"libopenvino.so", "libopenvino_intel_cpu_plugin"} <= mapped_libraries(engine.proc.pid)
    finally:
        engine.stop()
    assert "FALLBACK" not in engine.log()
