"""How long Python's garbage collector stops the engine under camera load, with and without gc.freeze, in one run.

    .venv/bin/python bench/gc_pauses.py                                  # 50 demo cameras, person, 300 s per variant
    .venv/bin/python bench/gc_pauses.py --cameras 20 --duration 120 --variants nofreeze,freeze,nofreeze,freeze

Each variant is a fresh engine subprocess (console on an ephemeral port) with a `--plugins` workflow on N demo
cameras (every 5th demo://person) at --fps, set up as bench/grpc_calls.py --cameras does. Once every camera
streams, /metrics is read, then read again after --duration s; the difference of `edgebox_gc_pause_seconds` is
every collection in that window, by generation. `freeze` is the engine as it is (edgebox/gc_pauses.py freezes its
long-lived objects when it is ready and after each model load); `nofreeze` is the same engine with that call
replaced by a no-op before it starts (an experiment: nothing in the engine turns it off).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.grpc_calls import PY, BenchError, add_cameras, free_port, wait_line

START_TIMEOUT_S = 120.0
RUN_ENGINE = "import runpy, sys; sys.argv[0] = 'edgebox'; runpy.run_module('edgebox', run_name='__main__')"
NO_FREEZE = "import edgebox.app; edgebox.app.freeze_long_lived = lambda reason: 0; "


def scrape(console_port: int) -> dict[str, float]:
    """The gc series of /metrics: {'count 2': .., 'sum 2': .., 'le 0.005 2': .., 'frozen': ..}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{console_port}/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("edgebox_gc_pause_seconds_"):
            kind = name.split("{")[0].removeprefix("edgebox_gc_pause_seconds_")
            labels = dict(part.split("=") for part in name.split("{")[1].rstrip("}").split(","))
            generation = labels['generation'].strip('"')
            key = f"le {labels['le'].strip(chr(34))} {generation}" if kind == "bucket" else f"{kind} {generation}"
            out[key] = float(value)
        elif name == "edgebox_gc_frozen_objects":
            out["frozen"] = float(value)
    return out


def max_bucket(window: dict[str, float], generation: int) -> str:
    """The smallest bucket bound that holds every collection of the window ('-' if there was none)."""
    bounds = sorted(((float(k.split()[1]), k.split()[1]) for k in window
                     if k.startswith("le ") and k.endswith(f" {generation}")), key=lambda b: b[0])
    total = window.get(f"count {generation}", 0)
    if not total:
        return "-"
    for _, bound in bounds:
        if window[f"le {bound} {generation}"] >= total:
            return f"<= {float(bound) * 1000:g} ms" if bound != "+Inf" else "> 250 ms"
    return "?"


def run_variant(variant: str, args: argparse.Namespace, tmp: Path) -> dict:
    folder = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=tmp))
    grpc_port, console_port = free_port(), free_port()
    config = {"console": {"enabled": True, "port": console_port}, "data_dir": str(folder / "data"),
              "log_level": "WARNING", "engine": {"admission_max_load": 0, "max_cameras": args.cameras,
                                                 "queue_capacity": max(64, args.cameras * 2)}}
    (folder / "engine.json").write_text(json.dumps(config))
    code = (NO_FREEZE if variant == "nofreeze" else "") + RUN_ENGINE
    with open(folder / "server.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([PY, "-c", code, "--config", str(folder / "engine.json"), "--grpc_port",
                                 str(grpc_port)], stdout=subprocess.PIPE, stderr=log, text=True, cwd=folder,
                                env=dict(os.environ))
        try:
            wait_line(proc, "EDGEBOX READY", START_TIMEOUT_S)
            asyncio.run(add_cameras(grpc_port, args.cameras, args.fps, args.plugins, urls=[]))  # demo:// cameras
            before = scrape(console_port)
            time.sleep(args.duration)
            after = scrape(console_port)
            if proc.poll() is not None:
                raise BenchError(f"the engine exited with {proc.returncode} during the run; see {folder}")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    window = {k: after[k] - before.get(k, 0.0) for k in after if k != "frozen"}
    row = {"variant": variant, "frozen": after.get("frozen", 0), "duration_s": args.duration}
    for generation in (0, 1, 2):
        count = window.get(f"count {generation}", 0)
        row[f"count_{generation}"] = count
        row[f"mean_ms_{generation}"] = 1000 * window.get(f"sum {generation}", 0) / count if count else 0.0
        row[f"max_{generation}"] = max_bucket(window, generation)
    print(f"  {variant:8} frozen {row['frozen']:>6.0f}  full collections {row['count_2']:.0f} in {args.duration:g} s,"
          f" mean {row['mean_ms_2']:.2f} ms, all {row['max_2']}; gen 0 / 1: {row['count_0']:.0f} / "
          f"{row['count_1']:.0f}, mean {row['mean_ms_0']:.3f} / {row['mean_ms_1']:.3f} ms", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=50)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--plugins", default="person")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds measured per variant")
    parser.add_argument("--variants", default="nofreeze,freeze", help="comma-separated: freeze, nofreeze")
    args = parser.parse_args()
    print("$ python " + " ".join(sys.argv))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="edgebox-gc-") as tmp:
            for variant in args.variants.split(","):
                if variant not in ("freeze", "nofreeze"):
                    raise BenchError(f"unknown variant {variant!r}: freeze or nofreeze")
                rows.append(run_variant(variant, args, Path(tmp)))
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 2
    print(f"\n| variant | objects frozen | full collections in {args.duration:g} s | mean full pause | every full "
          "pause | gen 0 / 1 collections | gen 0 / 1 mean |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['frozen']:.0f} | {r['count_2']:.0f} | {r['mean_ms_2']:.2f} ms | {r['max_2']} | "
              f"{r['count_0']:.0f} / {r['count_1']:.0f} | {r['mean_ms_0']:.3f} / {r['mean_ms_1']:.3f} ms |")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
