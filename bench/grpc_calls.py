"""gRPC throughput and latency of edgebox beside reference servers built from the same proto, in one run.

    .venv/bin/python bench/grpc_calls.py [--duration 5] [--concurrency 1,64]

Each server is pinned to CPU 0 and h2load (Debian nghttp2-client) to CPU 1, on loopback. Printed per server
and call: requests/s, mean and p99 latency from h2load, and the ratio to plain grpclib (same stack without
trio: our ceiling) and to grpc.aio. h2load only checks HTTP status, so every run also checks grpc-status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CALLS = {"HealthCheck": b"", "ListCameras": b""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc: subprocess.Popen, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
    raise RuntimeError(f"no {prefix!r} line within {timeout} s")


def start_server(kind: str, tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "edgebox":
        cfg = tmp / "engine.json"
        cfg.write_text(json.dumps({"console": {"enabled": False}, "data_dir": str(tmp / "data"),
                                   "log_level": "WARNING"}))
        cmd = [str(Path(PY).parent / "edgebox"), "--config", str(cfg), "--grpc_port", str(port)]
        ready = "EDGEBOX READY"
    else:
        cmd = [PY, str(ROOT / "bench" / "grpc_servers.py"), kind, str(port)]
        ready = "READY"
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.PIPE, text=True, cwd=tmp)
    wait_line(proc, ready)
    return proc, port


def h2load(port: int, method: str, body: bytes, concurrency: int, duration: float, tmp: Path) -> dict:
    data = tmp / f"{method}.bin"
    data.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
    streams = 1 if concurrency == 1 else 16
    clients = concurrency if concurrency == 1 else max(1, concurrency // streams)
    out = subprocess.run(
        ["taskset", "-c", "1", "h2load", "-D", str(max(1, int(duration))), "-c", str(clients), "-m", str(streams),
         "--warm-up-time=1", "-d", str(data), "-H", "content-type: application/grpc", "-H", "te: trailers",
         f"http://127.0.0.1:{port}/infer.InferenceService/{method}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in .*?, ([\d.]+) req/s", out).group(1))
    m = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out)
    ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))
    return {"rps": rps, "mean": m.group(3), "max": m.group(2), "ok": ok}


def grpc_status_ok(port: int, method: str) -> bool:
    """One call with a real client to confirm grpc-status 0 (h2load sees only HTTP 200)."""
    code = (f"import asyncio\nfrom grpclib.client import Channel\nfrom edgebox.proto_gen import infer as pb\n"
            f"async def m():\n  ch=Channel('127.0.0.1',{port})\n  s=pb.InferenceServiceStub(ch)\n"
            f"  await s.{_snake(method)}(pb.{method}Request())\n  ch.close()\nasyncio.run(m())")
    return subprocess.run([PY, "-c", code], capture_output=True).returncode == 0


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--servers", default="edgebox,grpclib,aio")
    args = parser.parse_args()
    if not shutil.which("h2load"):
        print("h2load is missing: run scripts/install-system-deps.sh (nghttp2-client)")
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for kind in args.servers.split(","):
            tmp = Path(tmpdir) / kind
            tmp.mkdir()
            proc, port = start_server(kind, tmp)
            try:
                for method, body in CALLS.items():
                    assert grpc_status_ok(port, method), f"{kind} {method}: grpc-status is not 0"
                    for c in levels:
                        r = h2load(port, method, body, c, args.duration, tmp)
                        rows.append((kind, method, c, r))
            finally:
                proc.terminate()
                proc.wait(30)
    base = {(m, c): r["rps"] for k, m, c, r in rows if k == "grpclib"}
    aio = {(m, c): r["rps"] for k, m, c, r in rows if k == "aio"}
    print(f"{'server':8} {'call':12} {'conc':>4} {'req/s':>8} {'mean':>9} {'max':>9} {'vs grpclib':>10} {'vs aio':>7}")
    for kind, method, c, r in rows:
        vs_base = r["rps"] / base[(method, c)] if (method, c) in base else float("nan")
        vs_aio = r["rps"] / aio[(method, c)] if (method, c) in aio else float("nan")
        print(f"{kind:8} {method:12} {c:>4} {r['rps']:>8.0f} {r['mean']:>9} {r['max']:>9} {vs_base:>10.2f} "
              f"{vs_aio:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
