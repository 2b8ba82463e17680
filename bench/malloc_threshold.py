"""What edgebox/memory.py's fixed malloc mmap threshold costs a model: frames/s, CPU and page faults per frame.

    .venv/bin/python bench/malloc_threshold.py                       # person (OpenVINO, b4) and face (onnxruntime, b2)
    .venv/bin/python bench/malloc_threshold.py --rounds 3 --seconds 8

Each measurement is a fresh process (the threshold is process-wide and set before anything allocates): load the
model, run every batch size 1..8 once (as the scheduler forms them), then time --seconds of batches of b, 1, b, 2.
"fixed" calls edgebox.memory.fix_mmap_threshold() first; "dynamic" is glibc's default. Rounds alternate the two.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "astronaut.png"
CASES = (("openvino-cpu", "person", 4), ("onnxruntime-cpu", "face", 2))


def measure(mode: str, backend: str, model: str, batch: int, seconds: float) -> str:
    """Runs in the child process; returns one line: fps, CPU ms per frame, minor faults per frame."""
    if mode == "fixed":
        from edgebox.memory import fix_mmap_threshold

        assert fix_mmap_threshold(), "glibc mallopt unavailable or MALLOC_MMAP_THRESHOLD_ set"
    import cv2
    import numpy as np

    from edgebox.engine.backends import BACKEND_LOADERS, LoadOptions
    from edgebox.plugins_loader import builtin_plugin_dir, load_plugins

    plugin = load_plugins([builtin_plugin_dir()]).get(model)
    loaded = BACKEND_LOADERS[backend](plugin.model, LoadOptions())
    tensor, _ = plugin.preprocess(cv2.imread(str(PHOTO)), {})
    for size in range(1, 9):
        loaded.run(np.stack([tensor] * size))

    def usage() -> tuple[float, int]:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])

    cpu0, faults0 = usage()
    started = time.perf_counter()
    frames = 0
    while time.perf_counter() - started < seconds:
        for size in (batch, 1, batch, 2):
            loaded.run(np.stack([tensor] * size))
            frames += size
    wall = time.perf_counter() - started
    cpu1, faults1 = usage()
    return (f"{frames / wall:.1f} fps, CPU {1000 * (cpu1 - cpu0) / frames:.1f} ms/frame, "
            f"{(faults1 - faults0) / frames:.0f} minor faults/frame")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--child", nargs=4, metavar=("MODE", "BACKEND", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, backend, model, batch = args.child
        print(measure(mode, backend, model, int(batch), args.seconds), flush=True)
        return 0
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| round | backend | model | batch | threshold | result |\n|---|---|---|---|---|---|")
    for round_no in range(1, args.rounds + 1):
        for backend, model, batch in CASES:
            for mode in ("dynamic", "fixed") if round_no % 2 else ("fixed", "dynamic"):
                out = subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--child", mode,
                                      backend, model, str(batch)], check=False, cwd=ROOT,
                                     capture_output=True, text=True)
                line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed: {out.stderr[-300:]}"
                print(f"| {round_no} | {backend} | {model} | {batch} | {mode} | {line} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
