"""The kernel's name for the calling thread, so that `top -H`, `ps -L`, perf and /proc tell the engine's threads apart.

Python 3.11 leaves every thread it starts with the program's name ("python", "edgebox"); trio names its own worker
threads, the engine names the ones it starts (the gRPC thread, the camera readers). Linux keeps 15 bytes of it
(`comm`); elsewhere, or without a C library to call, nothing happens: a name is for people, never needed to run.
"""

from __future__ import annotations

from edgebox.libc import libc

PR_SET_NAME = 15  # prctl(2)
MAX_BYTES = 15  # TASK_COMM_LEN 16, with the terminating NUL


def set_os_thread_name(name: str) -> None:
    """Name the calling thread (its first 15 bytes) where the kernel keeps thread names."""
    prctl = getattr(libc(), "prctl", None)
    if prctl is not None:
        prctl(PR_SET_NAME, name.encode("utf-8", "replace")[:MAX_BYTES], 0, 0, 0)
