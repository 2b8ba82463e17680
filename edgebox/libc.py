"""The C library, for the few glibc and Linux calls Python's standard library does not wrap (mallopt, malloc_trim,
prctl). Loaded once; None off Linux or where it cannot be loaded, and every caller then does without."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, loaded once (find_library may run ldconfig)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
