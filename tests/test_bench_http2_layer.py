"""bench/http2_layer.py runs, briefly, and every call it times was answered OK on both stacks (the bench itself
exits non-zero otherwise); its figures are for docs/benchmarks.md, not asserted here."""

from __future__ import annotations

import subprocess
import sys

from tests.support.engine import REPO


def test_the_http2_layer_bench_runs_both_stacks_and_prints_both_rows():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "http2_layer.py"), "--calls", "300", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HTTP/2 connection alone" in done.stdout and "whole call through grpclib" in done.stdout, done.stdout
