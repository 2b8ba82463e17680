"""Start time of edgebox builds: wall time from exec to the READY line, and the CPU time of the run.

Rounds interleave the builds (in a new random order each round) so that a busy machine slows them alike; it
prints medians. Each start runs in a clean environment (`env -i`-like: PATH=/usr/bin:/bin, HOME=a temp folder)
from an empty folder, with the example config on ephemeral ports, and is stopped by SIGTERM right after READY.
Standard library only: run it with the system Python.

    /usr/bin/python3 packaging/measure_start.py --rounds 7 NAME=COMMAND [NAME=COMMAND ...]
    e.g. launcher=dist/edgebox onefile=dist/edgebox-onefile 'shm=TMPDIR=/dev/shm dist/edgebox-onefile'
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "packaging" / "engine.example.json"
READY_TIMEOUT_S = 180.0


def start_once(command: list[str], env_extra: dict[str, str], home: Path) -> tuple[float, float]:
    """One start: (seconds from exec to READY, CPU seconds user+sys of the whole run incl. children)."""
    with tempfile.TemporaryDirectory(prefix="edgebox-start.") as work:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), **env_extra}
        args = command + ["--config", str(CONFIG), "--grpc_port", "0", "--console_port", "0",
                          "--data_dir", str(Path(work) / "data")]
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        try:
            assert proc.stdout is not None
            ready = None
            for line in proc.stdout:
                if line.startswith("EDGEBOX READY "):
                    ready = time.perf_counter() - started
                    break
                if time.perf_counter() - started > READY_TIMEOUT_S:
                    break
            if ready is None:
                raise RuntimeError(f"{shlex.join(args)}: no READY line")
            proc.send_signal(signal.SIGTERM)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                raise RuntimeError(f"{shlex.join(args)}: exit {proc.returncode} after SIGTERM")
            return ready, usage.ru_utime + usage.ru_stime
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
    name, _, rest = text.partition("=")
    words = shlex.split(rest)
    env = {}
    while words and "=" in words[0] and not words[0].startswith(("/", ".")):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return name, env, [str((ROOT / w).resolve()) if i == 0 and not w.startswith("/") else w
                       for i, w in enumerate(words)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("variants", nargs="+", help="NAME=[VAR=VALUE ...] COMMAND")
    args = p.parse_args()
    variants = [parse_variant(v) for v in args.variants]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="edgebox-home.") as home:
        for name, env, command in variants:  # warm-up: page cache, and the launcher's one-time unpacking
            ready, cpu = start_once(command, env, Path(home))
            print(f"warm-up {name}: READY {ready:.2f} s, CPU {cpu:.2f} s", flush=True)
        for round_no in range(args.rounds):
            order = list(variants)
            random.shuffle(order)
            for name, env, command in order:
                results[name].append(start_once(command, env, Path(home)))
            print(f"round {round_no + 1}/{args.rounds} done", flush=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(f"\n{'build':<22} {'READY median':>12} {'min':>6} {'max':>6} {'CPU median':>11}   (load {load}, "
          f"{os.cpu_count()} cores, {args.rounds} rounds)")
    for name, _, _ in variants:
        walls = [r[0] for r in results[name]]
        cpus = [r[1] for r in results[name]]
        print(f"{name:<22} {statistics.median(walls):>11.2f}s {min(walls):>5.2f}s {max(walls):>5.2f}s "
              f"{statistics.median(cpus):>10.2f}s")


if __name__ == "__main__":
    main()
