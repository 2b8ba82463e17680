"""edgebox.thread_priority: the libraries' native threads are lowered, Python threads never; the gRPC thread raised.

The real thing in fresh processes (nice values cannot be lowered back without privilege, so the test process's
own threads are left alone): OpenVINO's compute pool, made by loading the person model and running it, the
engine itself with a model running, and a thread raised with privilege, with only an RLIMIT_NICE, and with neither.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgebox import thread_priority
from edgebox.thread_priority import ComputeThreadPriority
from tests.support.engine import PERSON_MODEL, EngineProcess, engine_config_data, start_engine_process, write_config

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


# Raise one thread (not the main one) by -5 and report both threads' nice values. With an RLIMIT_NICE argument the
# process first sets that limit and becomes `nobody`, which has no CAP_SYS_NICE (needs root to start with).
RAISE_SCRIPT = """
import json, os, resource, sys, threading
from edgebox.thread_priority import raise_this_thread

if sys.argv[1] != "privileged":
    limit = int(sys.argv[1])
    try:
        resource.setrlimit(resource.RLIMIT_NICE, (limit, limit))
    except ValueError as exc:  # raising the hard limit needs CAP_SYS_RESOURCE, which containers often drop
        print(json.dumps({"skip": f"cannot set RLIMIT_NICE to {limit}: {exc}"}))
        sys.exit(0)
    os.setgid(65534)
    os.setuid(65534)
report = {"before": os.getpriority(os.PRIO_PROCESS, 0)}

def raise_and_look():
    report["returned"] = raise_this_thread(-5)
    report["thread"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

worker = threading.Thread(target=raise_and_look)
worker.start()
worker.join()
report["main"] = os.getpriority(os.PRIO_PROCESS, 0)
print(json.dumps(report))
"""

CAP_SYS_NICE = 23  # linux/capability.h


def _may_raise_priorities() -> bool:
    """Whether this process has CAP_SYS_NICE in its effective set (root in a container may not)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
    return False


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user to drop the right needs root")
needs_cap_sys_nice = pytest.mark.skipif(not _may_raise_priorities(), reason="raising a priority needs CAP_SYS_NICE")


def _raise_in_fresh_process(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", RAISE_SCRIPT, mode], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    if "skip" in report:
        pytest.skip(report["skip"])
    return report


def _rlimit_for(nice: int) -> int:
    return 20 - nice  # setpriority(2): RLIMIT_NICE lets an unprivileged thread go down to 20 - limit


@needs_cap_sys_nice
def test_with_privilege_only_the_calling_thread_is_raised():
    report = _raise_in_fresh_process("privileged")
    target = max(thread_priority.MIN_NICE, report["before"] - 5)
    assert report["returned"] == target
    assert report["thread"] == target
    assert report["main"] == report["before"]


@needs_root
def test_an_rlimit_nice_that_reaches_the_value_is_enough_without_privilege():
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the child starts with this process's value
    target = max(thread_priority.MIN_NICE, base - 5)
    report = _raise_in_fresh_process(str(_rlimit_for(target)))  # what LimitNICE= in a systemd unit sets
    assert report["returned"] == target
    assert report["thread"] == target
    assert report["main"] == base


@needs_root
def test_without_privilege_or_rlimit_it_is_refused_and_nothing_changes():
    report = _raise_in_fresh_process("0")
    assert report["returned"] is None
    assert report["thread"] == report["before"] == report["main"]


def test_a_raise_outside_the_nice_range_is_refused():
    with pytest.raises(ValueError, match="-20..-1"):
        thread_priority.raise_this_thread(0)
    with pytest.raises(ValueError, match="-20..-1"):
        thread_priority.raise_this_thread(-21)


@needs_cap_sys_nice
def test_the_running_engine_raises_its_grpc_thread_and_no_other(tmp_path):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    target = max(thread_priority.MIN_NICE, base - 5)  # grpc.thread_nice's default
    if target == base:
        pytest.skip(f"this process already runs at nice {base}: nothing could be raised")
    engine = start_engine_process(tmp_path)  # returns once the engine answers: the gRPC thread is raised by then
    try:
        values = _nice_of_every_thread(engine.proc.pid)
        raised = [tid for tid, nice in values.items() if nice == target]
        assert len(raised) == 1, f"threads at nice {target}: {raised}, all: {values}\n{engine.log()}"
        assert values[engine.proc.pid] == base, values  # the main thread runs trio
        assert f"gRPC thread at nice {target}" in engine.log()
    finally:
        engine.kill()


class _EngineWithoutCapSysNice(EngineProcess):
    """The engine started by `capsh --drop=cap_sys_nice` (libcap2-bin): root, but not allowed to raise priorities."""

    @property
    def command(self) -> list[str]:
        return ["capsh", "--drop=cap_sys_nice", "--", "-c", f"exec {shlex.join(super().command)}"]


@needs_root
@pytest.mark.skipif(shutil.which("capsh") is None, reason="capsh (libcap2-bin) is not installed")
def test_an_engine_that_may_not_raise_its_grpc_thread_says_so_and_serves(tmp_path):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    config = write_config(tmp_path / "engine.json", engine_config_data(tmp_path / "data"))
    engine = _EngineWithoutCapSysNice(config).start()
    try:
        values = _nice_of_every_thread(engine.proc.pid)
        assert min(values.values()) == base == values[engine.proc.pid], values  # nothing raised, nothing failed
        assert "gRPC thread keeps the process's nice value" in engine.log()
        assert "LimitNICE=-5" in engine.log()
        health = subprocess.run([sys.executable, "-m", "edgebox", "ctl", "--target", engine.grpc_address, "health"],
                                capture_output=True, text=True, timeout=60, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        assert "SERVING" in health.stdout, health.stdout
    finally:
        engine.kill()
