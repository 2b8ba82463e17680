"""Process-wide malloc tuning for the engine: keep glibc from holding on to memory the engine has freed.

glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MB), after which blocks of
that size come from the heap and, once freed, mostly stay in the process. OpenVINO's CPU plugin re-sizes its
activation buffers at each new batch size (and frames are 0.7 MB each), so with a dynamic threshold RSS ratchets
up. Measured on the person model (docs/benchmarks.md, "Memory"): batch sizes 1..8 in turn left 562 MB resident,
382 MB with the threshold fixed at 128 KiB (the same as malloc_trim afterwards); the engine's no-camera baseline
fell from 773-809 MB to 456 MB. It does not decide anything else; a MALLOC_MMAP_THRESHOLD_ set by the operator wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("edgebox.memory")

M_MMAP_THRESHOLD = -3  # mallopt() parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value; setting it explicitly turns off the ratchet


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES; True if it was set (glibc on Linux, not overridden)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    log.debug("malloc mmap threshold fixed at %d bytes: %s", MMAP_THRESHOLD_BYTES, ok)
    return ok
