"""edgebox.thread_priority: the libraries' native threads are lowered, Python threads never.

The real thing in fresh processes (nice values cannot be lowered back without privilege, so the test process's
own threads are left alone): OpenVINO's compute pool, made by loading the person model and running it, and the
engine itself with a model running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgebox import thread_priority
from edgebox.thread_priority import ComputeThreadPriority
from tests.support.engine import PERSON_MODEL, start_engine_process

pytestmark = pytest.mark.skipif(not thread_priority.supported(), reason="per-thread nice values are Linux's")

# Load the person model with two executions and run it once (OpenVINO starts its compute pool), hold one more
# Python thread and one trio worker thread, then scan once and twice and report every thread's nice value.
POOL_SCRIPT = """
import json, os, sys, threading
from pathlib import Path
import numpy as np
import trio
from edgebox.engine.backends.openvino_backend import load_openvino
from edgebox.plugin_api import ModelSpec
from edgebox.thread_priority import ComputeThreadPriority

def nice_values():
    return {int(t): os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}

model = load_openvino(ModelSpec(Path(sys.argv[1])), 2, "CPU", executions=2)
model.run(np.zeros((1, 320, 320, 3), np.uint8))
release = threading.Event()
held = threading.Thread(target=release.wait, name="held")
held.start()

async def main():
    await trio.to_thread.run_sync(lambda: None)  # leaves a cached trio worker thread
trio.run(main)
priority = ComputeThreadPriority(10)
first = priority.scan()
after_one = nice_values()
second = priority.scan()
print(json.dumps({
    "base": os.getpriority(os.PRIO_PROCESS, 0), "target": priority.target_nice,
    "lowered_first": first, "lowered_second": second, "after_one": after_one, "after_two": nice_values(),
    "python": [t.native_id for t in threading.enumerate()], "recorded": sorted(priority.lowered),
}))
release.set()
"""


def test_the_model_pool_is_lowered_after_two_scans_and_python_threads_never():
    done = subprocess.run([sys.executable, "-c", POOL_SCRIPT, str(PERSON_MODEL)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    base, target = report["base"], report["target"]
    assert target == min(19, base + 10)
    python = set(report["python"])
    assert len(python) >= 3  # the main thread, "held" and the trio worker at least
    after_one = {int(t): n for t, n in report["after_one"].items()}
    after_two = {int(t): n for t, n in report["after_two"].items()}
    native = set(after_two) - python
    assert native, "OpenVINO started no compute threads"
    # One scan only notes a thread; the second lowers it.
    assert report["lowered_first"] == 0 and all(after_one[t] == base for t in native if t in after_one)
    assert report["lowered_second"] == len(native)
    assert {t: after_two[t] for t in native} == dict.fromkeys(native, target)
    assert {t: after_two[t] for t in python} == dict.fromkeys(python, base)
    assert set(report["recorded"]) == native


def test_increment_outside_the_nice_range_is_refused():
    with pytest.raises(ValueError, match="1..19"):
        ComputeThreadPriority(0)
    with pytest.raises(ValueError, match="1..19"):
        ComputeThreadPriority(20)


def test_a_folder_that_cannot_be_listed_lowers_nothing(tmp_path):
    assert ComputeThreadPriority(5, task_dir=tmp_path / "missing").scan() == 0


def _nice_of_every_thread(pid: int) -> dict[int, int]:
    values = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # it ended
        values[int(tid)] = int(stat.rsplit(")", 1)[1].split()[16])  # field 19 of proc_pid_stat(5): nice
    return values


def test_the_running_engine_lowers_its_model_threads_but_not_its_main_thread(tmp_path):
    people = {"workflows": [{"workflow_id": "people", "plugins": ["person"]}],
              "cameras": [{"camera_id": "lobby", "url": "demo://person", "workflow_id": "people",
                           "config": {"fps": "2"}}]}
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the engine inherits this process's value
    target = min(19, base + 10)  # engine.compute_thread_nice's default
    if target == base:
        pytest.skip(f"this process already runs at nice {base}: nothing could be lowered")
    engine = start_engine_process(tmp_path, {"provision": people})
    try:
        deadline = time.monotonic() + 60  # the model loads, runs, then two scans: a limit against hangs
        while True:
            values = _nice_of_every_thread(engine.proc.pid)
            if target in values.values() or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert values[engine.proc.pid] == base, values  # the main thread runs trio
        assert target in values.values(), f"no thread at nice {target} within 60 s: {values}\n{engine.log()}"
    finally:
        engine.kill()
