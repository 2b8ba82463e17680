"""edgebox.memory: glibc's thresholds are fixed, so per-frame buffers are reused and large ones given back, its
arenas are capped at one per core, and an operator's own setting wins."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from tests.support.engine import engine_config, running_engine, wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")

CHECK = "from edgebox.memory import fix_malloc_thresholds; print(fix_malloc_thresholds())"
CLEAN_ENV = {"PATH": "/usr/bin:/bin"}

# In a fresh process: how many page faults a frame-sized (1 MiB) buffer costs each time it is made, written and
# freed, and how much of a 24 MiB block stays resident after its second free (the first teaches a dynamic
# threshold to serve that size from the heap).
PROBE = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "fixed":
    from edgebox.memory import fix_malloc_thresholds
    assert fix_malloc_thresholds()
from edgebox.metrics import process_rss_bytes as rss
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    np.full(1 << 20, 7, np.uint8)
before = faults()
for _ in range(50):
    np.full(1 << 20, 7, np.uint8)
frame_faults = (faults() - before) / 50
np.full(24 << 20, 7, np.uint8)
base = rss()
np.full(24 << 20, 7, np.uint8)
print(json.dumps({"frame_faults": frame_faults, "kept_mib": (rss() - base) / (1 << 20)}))
"""

# 64 frame-sized blocks from the heap, freed below a block that is still in use, so that glibc cannot trim them
# off the top: how much of them stays resident, and how much after give_back_freed_memory.
TRIM_PROBE = """
import json
import numpy as np
from edgebox.memory import fix_malloc_thresholds, give_back_freed_memory
assert fix_malloc_thresholds()
from edgebox.metrics import process_rss_bytes as rss
base = rss()
frames = [np.full(1 << 20, 7, np.uint8) for _ in range(64)]
pinned = np.full(1 << 16, 7, np.uint8)
del frames
kept = rss()
gave_back = give_back_freed_memory()
print(json.dumps({"kept_mib": (kept - base) / (1 << 20), "after_mib": (rss() - base) / (1 << 20),
                  "gave_back": gave_back}))
"""


# In a fresh process: how many arenas glibc made for twice as many threads as cores (plus two), each holding a
# block it allocated, all alive at once (so none can take over an exited thread's arena). malloc_stats() prints
# one "Arena N:" line per arena to stderr.
ARENA_PROBE = """
import ctypes, json, os, sys, threading
if sys.argv[1] == "limited":
    from edgebox.memory import limit_malloc_arenas
    print(json.dumps({"cap": limit_malloc_arenas()}))
threads = 2 * len(os.sched_getaffinity(0)) + 2
barrier, held = threading.Barrier(threads + 1), []
def allocate():
    held.append(bytearray(1 << 16))
    barrier.wait()
    barrier.wait()
workers = [threading.Thread(target=allocate) for _ in range(threads)]
for w in workers:
    w.start()
barrier.wait()
ctypes.CDLL("libc.so.6").malloc_stats()
barrier.wait()
for w in workers:
    w.join()
"""


def _run_probe(source: str, mode: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`source` in a fresh interpreter that sees this one's packages and none of glibc's malloc variables."""
    return subprocess.run([sys.executable, "-c", source, mode], capture_output=True, text=True, check=True,
                          env=CLEAN_ENV | {"PYTHONPATH": ":".join(sys.path)} | (extra_env or {}))


def _probe(mode: str, source: str = PROBE) -> dict[str, float]:
    return json.loads(_run_probe(source, mode).stdout)


def test_thresholds_are_fixed_on_glibc_unless_the_operator_set_them():
    fresh = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, env=CLEAN_ENV)
    assert fresh.stdout.strip() == "True"
    for name, value in (("MALLOC_MMAP_THRESHOLD_", "262144"), ("MALLOC_TRIM_THRESHOLD_", "262144"),
                        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=262144")):
        overridden = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True,
                                    env=CLEAN_ENV | {name: value})
        assert overridden.stdout.strip() == "False", name


def _arenas(mode: str, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    done = _run_probe(ARENA_PROBE, mode, extra_env)
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines()), done.stdout


def test_arenas_are_capped_at_one_per_core_unless_the_operator_set_them():
    cores = len(os.sched_getaffinity(0))
    limited, said = _arenas("limited")
    assert json.loads(said) == {"cap": cores}
    assert 1 <= limited <= cores
    # the control: glibc left to itself gives each of the 2 x cores + 2 threads an arena of its own
    default, _ = _arenas("default")
    assert default > cores
    for name, value in (("MALLOC_ARENA_MAX", "64"), ("GLIBC_TUNABLES", "glibc.malloc.arena_max=64")):
        overridden, said = _arenas("limited", {name: value})
        assert json.loads(said) == {"cap": None}, name
        assert overridden > cores, name


def test_frame_sized_buffers_are_reused_and_large_blocks_given_back():
    fixed = _probe("fixed")
    assert fixed["frame_faults"] < 16  # mapped afresh each time, 1 MiB is 256 faults
    assert fixed["kept_mib"] < 4
    # the control: glibc left to itself keeps the large block, so the check above can tell the difference
    assert _probe("dynamic")["kept_mib"] > 16


def test_freed_frames_below_a_live_block_go_back_only_when_trimmed():
    probe = _probe("fixed", TRIM_PROBE)
    assert probe["kept_mib"] > 48  # the control: freed, yet resident, as a removed camera's frames were
    assert probe["gave_back"] is True
    assert probe["after_mib"] < 16


async def test_removing_a_camera_gives_its_freed_memory_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="edgebox.fleet")
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        node = engine.node
        await node.deploy_workflow({"workflow_id": "moving", "plugins": ["motion"]})
        await node.add_camera("gate", "demo://person", "moving", {"fps": "5"})
        await wait_until(lambda: node.fleet.get("gate").state.name == "STREAMING", what="gate streams")
        await node.remove_camera("gate")
        await wait_until(lambda: any("went back to the system" in r.getMessage() for r in caplog.records),
                         what="the memory trim after the removal")
