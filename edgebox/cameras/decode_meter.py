"""A process-wide tally of decode work: the pixels of the frames read and the CPU seconds their reads took.

`OpenCvSource` adds to it from its worker threads (decoding runs in the reading thread, see DECODE_THREADS);
admission control divides one by the other for the decode rate of this machine. It decides nothing itself.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_pixels = 0
_cpu_s = 0.0


def add(pixels: int, cpu_s: float) -> None:
    """Record one decoded frame: its pixel count and the thread CPU seconds spent reading and decoding it."""
    global _pixels, _cpu_s
    with _lock:
        _pixels += pixels
        _cpu_s += cpu_s


def totals() -> tuple[int, float]:
    """(pixels decoded, CPU seconds spent) since the process started."""
    with _lock:
        return _pixels, _cpu_s
