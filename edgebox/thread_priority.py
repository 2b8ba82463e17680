"""The libraries' own compute threads at a lower CPU priority than the engine's Python threads (Linux).

When a model saturates the cores, the kernel shares them by weight, and a gRPC call that arrives waits for a core
behind the model's compute threads. The threads that answer calls, run trio and read the cameras are Python
threads; the ones the libraries start for their own work (OpenVINO's and onnxruntime's compute pools, uvloop's
resolver threads) never run Python, so they never hold the GIL. (FFmpeg decodes in the camera reader threads, one
decode thread per capture, edgebox/cameras/opencv_source.py: decoding keeps the process's priority.) Giving the
library threads a higher nice value lets a Python thread that wakes up take a core first, and cannot leave a
Python thread waiting on a descheduled GIL holder, which is what went wrong when the camera reader threads (Python
threads) were niced instead (docs/benchmarks.md).

Linux keeps a nice value per thread, and a thread inherits its creator's: a pool thread that a lowered thread
starts is lowered too, and Python threads, started by Python threads, keep the process's value. A thread is
lowered only once two scans in a row have seen it and neither found it among Python's threads: the kernel has a
Python thread a moment before `threading` records its native id. Raising a nice value needs no privilege;
lowering it back would, so nothing here ever does.

The one case this would get wrong is a library thread that calls back into Python (an async-inference callback,
say): it would be lowered and then take the GIL. The engine uses none: inference is synchronous on both backends,
and OpenCV, uvloop's resolver threads and SQLite never call Python from their own threads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import trio

log = logging.getLogger("edgebox.threads")

MAX_NICE = 19
SCAN_INTERVAL_S = 2.0  # new pools appear when a model loads or first runs; a scan costs ~0.1 ms


def supported() -> bool:
    """Per-thread nice values through setpriority(PRIO_PROCESS, tid) are a Linux behaviour."""
    return sys.platform.startswith("linux") and Path("/proc/self/task").is_dir()


class ComputeThreadPriority:
    """Raises the nice value of the process's non-Python threads by `increment` (1..19), once each."""

    def __init__(self, increment: int, *, task_dir: Path = Path("/proc/self/task")) -> None:
        if not 1 <= increment <= MAX_NICE:
            raise ValueError(f"increment must be 1..{MAX_NICE}, not {increment}")
        self._task_dir = task_dir
        self._target = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, 0) + increment)
        self._seen_once: set[int] = set()
        self._lowered: set[int] = set()

    @property
    def target_nice(self) -> int:
        return self._target

    @property
    def lowered(self) -> frozenset[int]:
        """Thread ids lowered by this object that are still alive at the last scan."""
        return frozenset(self._lowered)

    def scan(self) -> int:
        """One pass over the process's threads; returns how many it lowered now."""
        try:
            alive = {int(name) for name in os.listdir(self._task_dir)}
        except OSError:
            return 0
        python = {t.native_id for t in threading.enumerate()}
        self._lowered &= alive  # a dead thread's id may be reused by a new thread
        candidates = alive - python - self._lowered
        ready = candidates & self._seen_once
        self._seen_once = candidates - ready
        lowered = 0
        for tid in ready:
            try:
                if os.getpriority(os.PRIO_PROCESS, tid) < self._target:
                    os.setpriority(os.PRIO_PROCESS, tid, self._target)
                    lowered += 1
            except OSError:  # it ended since the listing, or a policy forbids it: leave it as it is
                continue
            self._lowered.add(tid)
        return lowered

    async def keep_lowered(self, interval_s: float = SCAN_INTERVAL_S) -> None:
        """Scan every `interval_s` until cancelled (a task of the root nursery)."""
        total = 0
        while True:
            lowered = self.scan()
            if lowered:
                level = logging.INFO if not total else logging.DEBUG  # the first ones say that this is on
                total += lowered
                log.log(level, "compute threads: lowered %d more to nice %d (%d in all; engine.compute_thread_nice)",
                        lowered, self._target, total)
            await trio.sleep(interval_s)
