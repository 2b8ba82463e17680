"""bench/soak.py as a test: a 20 s run always, a 60 s run with 10 cameras under --run-slow.

The script itself decides pass or fail (RSS slope after warm-up, projected over the run, against 100 MB); the
test checks its exit code and that the report it wrote is complete, and records its figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.helpers import Figures

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"


def run_soak(tmp_path: Path, *args: str, timeout: float) -> dict:
    report_path = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SOAK), *args, "--json", str(report_path)], capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"soak failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    report = json.loads(report_path.read_text())
    assert report["passed"] and report["engine_exit"] == 0, report["failures"]
    assert report["active_at_end"] == report["cameras"]
    assert report["results_per_s"] > 0
    assert 0 < report["rss_baseline_mb"] <= report["rss_with_cameras_mb"] * 1.5
    return report


def record(figures: Figures, report: dict) -> None:
    figures.add(f"soak {report['cameras']} cameras x {report['fps']:g} fps, {report['duration_s']:g} s",
                f"RSS {report['rss_model_once_mb']:.0f} MB with the model run once, baseline "
                f"{report['rss_baseline_mb']:.0f} MB after batch sizes 1-8 (0 cameras), "
                f"{report['rss_with_cameras_mb']:.0f} MB with cameras, slope {report['slope_mb_per_hour']:+.0f} MB/h "
                f"= {report['projected_growth_mb']:+.1f} MB over the run (limit 100); "
                f"{report['results_per_s']:.1f} results/s, {report['frames_dropped']} dropped")


def test_short_soak_of_4_cameras_for_20_s_keeps_memory_flat(tmp_path, figures):
    report = run_soak(tmp_path, "--cameras", "4", "--duration", "20", timeout=300)
    assert len(report["samples"]) >= 10
    record(figures, report)


@pytest.mark.slow
def test_soak_of_10_cameras_for_60_s_keeps_memory_flat(tmp_path, figures):
    report = run_soak(tmp_path, "--cameras", "10", "--duration", "60", timeout=600)
    record(figures, report)
