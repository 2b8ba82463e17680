"""bench/gc_pauses.py runs end to end on a short window: two real engines, demo cameras, /metrics read twice.

The benchmark shares its camera set-up with bench/grpc_calls.py; this keeps the two in step (a changed signature
there once broke this script without any test noticing) and checks that the `nofreeze` variant really runs the
engine without gc.freeze while the engine as shipped freezes its long-lived objects.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

GC_PAUSES = Path(__file__).resolve().parent.parent / "bench" / "gc_pauses.py"
RUN_TIMEOUT_S = 240.0  # two engine starts; a bound against hangs, not a timing assertion


def test_gc_pauses_bench_compares_a_frozen_engine_with_an_unfrozen_one():
    proc = subprocess.run([sys.executable, str(GC_PAUSES), "--cameras", "2", "--plugins", "motion",
                           "--duration", "2", "--variants", "freeze,nofreeze"],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"gc_pauses failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = dict(re.findall(r"^\| (freeze|nofreeze) \| (\d+) \|", proc.stdout, re.MULTILINE))
    assert set(rows) == {"freeze", "nofreeze"}, proc.stdout
    assert int(rows["freeze"]) > 1000, "the engine froze no long-lived objects when it became ready"
    assert int(rows["nofreeze"]) == 0, "the nofreeze variant still froze objects"
