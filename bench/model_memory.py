"""Resident memory of a loaded model after it has run every batch size, with 1 or more executions at once.

    .venv/bin/python bench/model_memory.py [--backends openvino-cpu,onnxruntime-cpu] [--models person,face]
                                           [--cpu-executions 1,2] [--max-batch 8]

Each measurement is a fresh process (so nothing one leaves resident counts against the next): load the model
with `LoadOptions(cpu_executions=N)` as the engine does (the engine's malloc setting included), run batch sizes
1..max-batch, each in N threads at once (the scheduler's most), and print VmRSS. The engine's own ~72 MB and the
cameras are not in it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(backend: str, model_name: str, executions: int, max_batch: int) -> int:
    """In this process: RSS in MB after running batch sizes 1..max_batch with `executions` at once."""
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from edgebox.engine.backends import BACKEND_LOADERS, LoadOptions
    from edgebox.memory import fix_malloc_thresholds
    from edgebox.plugins_loader import builtin_plugin_dir, load_plugins

    fix_malloc_thresholds()
    plugin = load_plugins([builtin_plugin_dir()]).get(model_name)
    model = BACKEND_LOADERS[backend](plugin.model, LoadOptions(cpu_executions=executions))
    import cv2

    tensor, _ = plugin.preprocess(cv2.imread(str(ROOT / "tests" / "data" / "astronaut.png")), {})
    for batch in range(1, max_batch + 1):
        stacked = np.stack([tensor] * batch)
        runners = [threading.Thread(target=model.run, args=(stacked,)) for _ in range(model.parallel)]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="openvino-cpu,onnxruntime-cpu")
    parser.add_argument("--models", default="person,face")
    parser.add_argument("--cpu-executions", default="1,2")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--one", nargs=3, metavar=("BACKEND", "MODEL", "EXECUTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(measure(args.one[0], args.one[1], int(args.one[2]), args.max_batch))
        return
    values = [int(v) for v in args.cpu_executions.split(",")]
    print("| backend | model | " + " | ".join(f"RSS, {v} at once" for v in values) + " |")
    print("|---|---|" + "---|" * len(values))
    for backend in args.backends.split(","):
        for model_name in args.models.split(","):
            cells = []
            for executions in values:
                out = subprocess.run([sys.executable, __file__, "--one", backend, model_name, str(executions),
                                      "--max-batch", str(args.max_batch)],
                                     capture_output=True, text=True, check=True)
                cells.append(f"{int(out.stdout.split()[-1])} MB")
            print(f"| {backend} | {model_name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
