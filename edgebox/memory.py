"""Process-wide malloc tuning for the engine: fixed glibc thresholds, so that memory use neither ratchets up nor
turns every frame into page faults.

glibc serves blocks above its mmap threshold with mmap and, when left to itself, raises that threshold each time
such a block is freed (up to 32 MB), after which blocks of that size come from the heap and, once freed, mostly
stay in the process. OpenVINO's CPU plugin re-sizes its activation buffers at each new batch size, so RSS
ratcheted up (person model, batch sizes 1..8: 562 MB resident against 382 MB with a fixed threshold). A threshold
fixed too low costs the other way: every block above it is a fresh mapping, faulted in page by page and unmapped
at free, and a decoded frame, its letterboxed copy and a model's input tensor are all such blocks (person: 518
page faults and +1.1 ms of CPU per frame for decoding and preprocessing at 128 KiB; face: 1,756 and +4-5 ms).
Fixed at 4 MiB, with the trim threshold at twice that as glibc itself would set it, per-frame buffers are reused
from the heap while large model buffers are still mapped and given back (docs/benchmarks.md, "Memory"); the cost
is freed frames kept in glibc's arenas, which `give_back_freed_memory` returns after a camera is removed.

glibc also gives each new thread its own arena, up to 8 per core, and every camera has a reader thread: with 50
cameras on 2 cores that is 16 arenas, each keeping its own free blocks. `limit_malloc_arenas` caps them at one per
usable core, since no more threads than cores run malloc at once: per 640x360 camera 4.1 -> 3.5 MB resident, and
after the cameras are removed and trimmed 2.1 -> 0.1 MB per camera is left (bench/capture_memory.py,
docs/benchmarks.md "Memory"). Nothing else is decided here; glibc's own MALLOC_*_THRESHOLD_ and MALLOC_ARENA_MAX
variables (or GLIBC_TUNABLES) set by the operator win.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

from edgebox.libc import libc

log = logging.getLogger("edgebox.memory")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt() parameter numbers in glibc's malloc.h
# Frames up to 720p BGR (2.8 MB) and the face model's input (2.9 MB) fit under it; a 1080p frame (6.2 MB) is still
# mapped, about 1 ms per frame: 8 MiB would cover it but kept 70 MB more of the person model's buffers.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # glibc's rule when it moves the threshold itself
OPERATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _operator_set(variables: tuple[str, ...], tunables: tuple[str, ...]) -> bool:
    """True if the environment sets any of glibc's `variables` or of its `tunables` in GLIBC_TUNABLES."""
    given = os.environ.get("GLIBC_TUNABLES", "")
    return any(name in os.environ for name in variables) or any(f"malloc.{t}" in given for t in tunables)


@functools.cache
def _mallopt():  # a ctypes function, or None
    """glibc's mallopt(int, int), or None (not Linux, or musl or another libc without it)."""
    mallopt = getattr(libc(), "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def fix_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds; True if they were set (glibc on Linux, the operator set neither)."""
    if _operator_set(OPERATOR_VARIABLES, ("mmap_threshold", "trim_threshold")):
        return False
    mallopt = _mallopt()
    if mallopt is None:
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    log.debug("malloc thresholds fixed (mmap %d, trim %d bytes): %s", MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES, ok)
    return ok


def limit_malloc_arenas() -> int | None:
    """Cap glibc's arenas at one per core this process may run on; the cap, or None where it was not set (the
    operator set MALLOC_ARENA_MAX or glibc.malloc.arena_max, or the C library has no mallopt). Call it before the
    threads start: a thread keeps the arena it got at its first allocation."""
    if _operator_set(("MALLOC_ARENA_MAX",), ("arena_max",)):
        log.debug("malloc arenas left as the environment sets them")
        return None
    mallopt = _mallopt()
    if mallopt is None:
        return None
    cores = len(os.sched_getaffinity(0))
    ok = mallopt(M_ARENA_MAX, cores) == 1
    log.debug("malloc arenas limited to %d: %s", cores, ok)
    return cores if ok else None


def give_back_freed_memory() -> bool:
    """glibc's malloc_trim(0): return the free pages inside every arena to the system; True if it gave any back.

    Blocking (it walks each arena under that arena's lock; measured 8 ms to give back 64 MB, 31 ms for 300 MB,
    0.05 ms with nothing to give): call it from a worker thread. The engine calls it after a camera is removed
    (edgebox.fleet), when that camera's freed frames are the memory glibc would otherwise keep for the next one.
    """
    trim = getattr(libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim(0) == 1
