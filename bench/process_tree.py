"""A process and its descendants, from /proc: what an engine costs with its child processes included.

The engine decodes cameras in a child process (engine.camera_decoding, edgebox/cameras/decoder_process.py), so
its memory and CPU are those of the whole tree; a figure of the engine's own process alone would leave them out.
"""

from __future__ import annotations

import os
from pathlib import Path


def tree(pid: int) -> list[int]:
    """`pid` and every living descendant, parents first."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        found.append(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                queue.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                pass
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
    except OSError:  # it ended while we looked
        return 0


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of one process; 0 once it is gone."""
    return _status_kb(pid, "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds one process has used so far (its threads included); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_rss_mb(pid: int) -> float:
    """Resident memory of the process and its descendants (VmRSS summed: their shared pages count twice)."""
    return sum(rss_mb(p) for p in tree(pid))


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process and its living descendants so far."""
    return sum(cpu_seconds(p) for p in tree(pid))


def tree_threads(pid: int) -> int:
    return sum(_status_kb(p, "Threads") for p in tree(pid))
