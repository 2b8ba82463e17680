"""bench/thread_waits.py, behind `bench/grpc_calls.py --trace-waits`: it finds a thread by its kernel name, reads its
run-queue delay, and measures its GIL waits (strace) and the GIL's busy share (py-spy) on a real process in which
one thread spins in Python while a named thread wakes every millisecond and must win the GIL back each time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.thread_waits import (
    CoreWaits,
    GilTrace,
    find_thread,
    futex_waits_ms,
    pyspy_path,
    pyspy_samples,
    schedstat,
)
from edgebox.os_thread_name import set_os_thread_name

LINUX_PROC = Path("/proc/self/task").is_dir()
STRACE = shutil.which("strace")
PYSPY = pyspy_path()
WAIT_S = 30.0  # bounds against hangs, not timing assertions

CONTENDED = r"""
import sys, threading, time
from edgebox.os_thread_name import set_os_thread_name

def spin():
    while True:  # pure Python: holds the GIL but for the switch-interval hand-overs
        sum(range(1000))

def woken():
    set_os_thread_name("bench-woken")
    while True:
        time.sleep(0.001)  # releases the GIL; taking it back means waiting for the spinning thread

threading.Thread(target=spin, daemon=True).start()
threading.Thread(target=woken, daemon=True).start()
print("READY", flush=True)
time.sleep(120)
"""


def may_trace() -> bool:
    """strace and py-spy attach with ptrace: as root, or where Yama allows attaching to a non-descendant."""
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    return os.geteuid() == 0 or not scope.exists() or scope.read_text().strip() == "0"


def test_futex_waits_are_read_from_strace_output_and_wakes_are_left_out():
    output = (
        'futex(0x7f3c2c0016b0, FUTEX_WAIT_BITSET_PRIVATE, 0, {tv_sec=1, tv_nsec=5}, FUTEX_BITSET_MATCH_ANY) = -1 '
        "ETIMEDOUT (Connection timed out) <0.005071>\n"
        "futex(0x7f3c2c0016b0, FUTEX_WAKE_PRIVATE, 1) = 1 <0.000012>\n"
        "futex(0x7f3c2c001680, FUTEX_WAIT_PRIVATE, 2, NULL) = 0 <0.000731>\n"
        "--- SIGTERM {si_signo=SIGTERM} ---\n"
        "futex(0x7f3c2c001680, FUTEX_WAIT_PRIVATE, 2, NULL <unfinished ...>\n"
    )
    assert futex_waits_ms(output) == pytest.approx([5.071, 0.731])


def test_pyspy_samples_add_up_the_counts_of_collapsed_stacks():
    raw = "thread (1): MainThread;f (a.py:1);g (a.py:2) 7\nthread (2): other;h (b.py:3) 5\n\n"
    assert pyspy_samples(raw) == 12


@pytest.mark.skipif(not LINUX_PROC, reason="thread names and schedstat are Linux's /proc")
def test_a_named_thread_is_found_and_its_runs_are_counted():
    ran = threading.Event()
    stop = threading.Event()
    tids: list[int] = []

    def named() -> None:
        set_os_thread_name("bench-named")
        tids.append(threading.get_native_id())
        ran.set()
        while not stop.wait(0.001):
            pass

    thread = threading.Thread(target=named, daemon=True)
    thread.start()
    try:
        assert ran.wait(WAIT_S)
        tid = find_thread(os.getpid(), "bench-named")
        before = schedstat(os.getpid(), tid)
        time.sleep(0.2)  # it wakes every millisecond meanwhile
        waits = CoreWaits.between(before, schedstat(os.getpid(), tid))
    finally:
        stop.set()
        thread.join(WAIT_S)
    assert tid == tids[0]
    assert waits.runs > 10 and waits.cpu_ms > 0 and waits.run_delay_ms >= 0
    with pytest.raises(LookupError, match="no thread named 'no-such-thread'"):
        find_thread(os.getpid(), "no-such-thread")


@pytest.mark.skipif(not LINUX_PROC, reason="thread names and schedstat are Linux's /proc")
@pytest.mark.skipif(STRACE is None or PYSPY is None, reason="needs strace (apt) and py-spy (.[dev])")
@pytest.mark.skipif(not may_trace(), reason="ptrace of a non-descendant is not allowed here (Yama ptrace_scope)")
def test_gil_waits_of_a_thread_behind_a_spinning_one_are_measured(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", CONTENDED], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                tid = find_thread(proc.pid, "bench-woken")
                break
            except LookupError:
                assert time.monotonic() < deadline, "the child never named its thread"
                time.sleep(0.05)
        trace = GilTrace(proc.pid, tid, 2.0, tmp_path, PYSPY)
        trace.start()
        time.sleep(2.0)
        waits = trace.stop()
    finally:
        proc.kill()
        proc.wait(WAIT_S)
    assert waits.futex_ms is not None, "strace did not attach"
    # every wake-up finds the GIL held by the spinning thread: most waits last until the switch interval (5 ms)
    # makes the spinner hand it over
    assert len(waits.futex_ms) >= 20
    assert sorted(waits.futex_ms)[len(waits.futex_ms) // 2] >= 1.0
    assert waits.gil_busy is not None and waits.gil_busy > 0.5, "the spinning thread holds the GIL nearly always"
    assert "GIL waits" in waits.summary(calls=100)
