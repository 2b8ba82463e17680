"""What glibc's malloc thresholds cost the frame path and the models: CPU, page faults and resident memory, side by side.

    .venv/bin/python bench/malloc_threshold.py                    # engine, 131072 (the setting before) and dynamic
    .venv/bin/python bench/malloc_threshold.py --modes engine,8388608:16777216 --rounds 3 --seconds 8

Each measurement is a fresh process (the thresholds are process-wide and set before anything allocates) that
works as the engine does: one thread decodes a JPEG of tests/data/astronaut.png and preprocesses it for the
plugin, another stacks those tensors into batches and runs the model; first every batch size 1..8 once (as the
scheduler forms them), then --seconds of batches of b, 1, b, 2. It prints frames/s, CPU and minor page faults per
frame of each thread, and the process's RSS at the end. Modes: `engine` calls edgebox.memory.fix_malloc_thresholds()
(what the engine runs with); `dynamic` is glibc's default (the threshold moves up to 32 MB); `MMAP[:TRIM]` sets
those byte values with mallopt (TRIM defaults to glibc's 128 KiB). Rounds rotate the order of the modes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "data" / "astronaut.png"
CASES = (("openvino-cpu", "person", 4), ("onnxruntime-cpu", "face", 2))
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def set_mode(mode: str) -> None:
    if mode == "engine":
        from edgebox.memory import fix_malloc_thresholds

        assert fix_malloc_thresholds(), "glibc mallopt unavailable or MALLOC_*_THRESHOLD_ set"
    elif mode != "dynamic":
        libc = ctypes.CDLL("libc.so.6")
        mmap, _, trim = mode.partition(":")
        assert libc.mallopt(M_MMAP_THRESHOLD, int(mmap)) == 1
        if trim:
            assert libc.mallopt(M_TRIM_THRESHOLD, int(trim)) == 1


def _thread_usage() -> tuple[float, int]:
    return time.thread_time(), resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


def measure(mode: str, backend: str, model: str, batch: int, seconds: float) -> str:
    """Runs in the child process; returns one table cell."""
    set_mode(mode)
    import cv2
    import numpy as np

    from edgebox.engine.backends import BACKEND_LOADERS, LoadOptions
    from edgebox.frames import decode_frame
    from edgebox.plugins_loader import builtin_plugin_dir, load_plugins

    plugin = load_plugins([builtin_plugin_dir()]).get(model)
    loaded = BACKEND_LOADERS[backend](plugin.model, LoadOptions())
    image = cv2.imread(str(PHOTO))
    jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    tensor, _ = plugin.preprocess(image, {})
    for size in range(1, 9):
        loaded.run(np.stack([tensor] * size))
    tensors: queue.Queue = queue.Queue(maxsize=16)
    stop = threading.Event()
    usage: dict[str, tuple[float, float]] = {}

    def decoder() -> None:
        cpu0, faults0 = _thread_usage()
        frames = 0
        while not stop.is_set():
            prepared, _ = plugin.preprocess(decode_frame(jpeg, 0), {})
            frames += 1
            try:
                tensors.put(prepared, timeout=0.5)
            except queue.Full:
                pass
        cpu1, faults1 = _thread_usage()
        usage["decode"] = (1000 * (cpu1 - cpu0) / frames, (faults1 - faults0) / frames)

    def runner() -> None:
        cpu0, faults0 = _thread_usage()
        frames, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for size in (batch, 1, batch, 2):
                loaded.run(np.stack([tensors.get() for _ in range(size)]))
                frames += size
        usage["fps"] = (frames / (time.perf_counter() - started), 0)
        cpu1, faults1 = _thread_usage()
        usage["model"] = (1000 * (cpu1 - cpu0) / frames, (faults1 - faults0) / frames)
        stop.set()

    threads = [threading.Thread(target=decoder), threading.Thread(target=runner)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rss_mb = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return (f"{usage['fps'][0]:.1f} | {usage['decode'][0]:.2f} ms, {usage['decode'][1]:.0f} | "
            f"{usage['model'][0]:.1f} ms, {usage['model'][1]:.0f} | {rss_mb:.0f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="engine,131072,dynamic", help="comma-separated: engine, dynamic, MMAP[:TRIM]")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--child", nargs=4, metavar=("MODE", "BACKEND", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, backend, model, batch = args.child
        print(measure(mode, backend, model, int(batch), args.seconds), flush=True)
        return 0
    modes = args.modes.split(",")
    print("$ python " + " ".join(sys.argv))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.1f}")
    print("| round | backend | model | batch | mode | frames/s | decode + preprocess: CPU, faults per frame | "
          "model: CPU, faults per frame | RSS at the end |\n|---|---|---|---|---|---|---|---|---|")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    for round_no in range(args.rounds):
        order = modes[round_no % len(modes):] + modes[:round_no % len(modes)]
        for backend, model, batch in CASES:
            for mode in order:
                out = subprocess.run([sys.executable, __file__, "--seconds", str(args.seconds), "--child", mode,
                                      backend, model, str(batch)], check=False, cwd=ROOT, env=env,
                                     capture_output=True, text=True)
                line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed: {out.stderr[-300:]}"
                print(f"| {round_no + 1} | {backend} | {model} | {batch} | {mode} | {line} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
