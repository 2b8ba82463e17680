"""bench/handoff.py runs, briefly, every frame of both ways crosses (it would hang otherwise), and it prints both
rows; its figures are for docs/benchmarks.md, not asserted here."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.engine import REPO


def test_the_handoff_bench_crosses_every_frame_both_ways_and_prints_both_rows():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "handoff.py"), "--readers", "4", "--frames", "400",
                           "--rounds", "1"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(r"^\| (from_thread\.run|semaphore \+ run_sync_soon) \| ([\d.]+) us \| ([\d.]+) us \|$",
                      done.stdout, re.MULTILINE)
    assert [name for name, _, _ in rows] == ["from_thread.run", "semaphore + run_sync_soon"], done.stdout
    assert all(float(trio_us) > 0 and float(process_us) >= float(trio_us) * 0.5 for _, trio_us, process_us in rows)
