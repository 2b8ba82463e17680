"""gRPC throughput and latency of edgebox beside reference servers built from the same proto, in one run, with ghz.

    .venv/bin/python bench/grpc_calls.py                      # every server, call and level once; ~2.5 minutes
    .venv/bin/python bench/grpc_calls.py --rounds 3           # alternate the servers 3 times, report medians
    .venv/bin/python bench/grpc_calls.py --servers edgebox,edgebox=/tmp/before --rounds 5   # A/B two checkouts
    .venv/bin/python bench/grpc_calls.py --cameras 50         # HealthCheck/ListCameras while 50 cameras run
    .venv/bin/python bench/grpc_calls.py --cameras 50 --source rtsp   # ... 50 real RTSP streams
    .venv/bin/python bench/grpc_calls.py --cameras 50 --source rtsp --fps 5 --trace-waits   # ... and what the
                                                               # gRPC thread waits for: a core or the GIL

Servers: `edgebox` (this checkout; `edgebox=PATH` runs the edgebox package of another checkout, e.g. a git
worktree of an older commit), `grpclib` (plain grpclib on uvloop, no trio: the ceiling of this design), `aio`
(grpcio's grpc.aio) and `go` (grpc-go, bench/go/refserver). Calls: HealthCheck and ListCameras (no camera: a
small reply) and InferSingleFrame with edgebox/demo/astronaut.jpg (68 KB, 512x512). The reference servers receive
that frame and answer an empty result: their figure is the transport's cost. edgebox runs the `motion` plugin on
it, which decodes the JPEG and, for a single frame, finds nothing: the cheapest real inference path.

Each server is pinned to CPU 0 and ghz to CPU 1 (`--cpus 1`), on loopback. ghz (bojand/ghz, the version pinned
in GHZ below) and the grpc-go server are built into bench/go/.bin on first use; that needs `go` and, the first
time, the Go module proxy for ghz (later runs build offline from the module cache; the reference server needs
only the modules that scripts/setup-go.sh fetches). Every ghz run must end with every call OK, or the bench
fails (exit 2, one line saying why). With `--cameras N` the engine is not pinned; it runs a `person` workflow on
N demo cameras (every 5th demo://person; with `--source rtsp`, real H.264 streams from a local gst-rtsp-server,
decoded in the engine's camera decoding process, or its reader threads with engine.camera_decoding threads) while ghz sends HealthCheck and ListCameras one at a time at
--probe-rps; admission control is off unless --admission-max-load turns it on, and then the probe runs with the
cameras it admitted. bench/README.md says how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GO_DIR = ROOT / "bench" / "go"
BIN = GO_DIR / ".bin"
PROTO = ROOT / "proto" / "infer_service.proto"
PHOTO = ROOT / "edgebox" / "demo" / "astronaut.jpg"
sys.path.insert(0, str(ROOT))  # so that a checkout runs it without installing edgebox

from bench.process_tree import cpu_seconds, tree_cpu_seconds
from bench.thread_waits import (  # found through ROOT, as a checkout runs
    CoreWaits,
    GilTrace,
    find_thread,
    pyspy_path,
    schedstat,
)

PY = sys.executable
CALLS = ("HealthCheck", "ListCameras", "InferSingleFrame")
SERVER_START_TIMEOUT_S = 90.0
GO_BUILD_TIMEOUT_S = 600.0
GHZ = "github.com/bojand/ghz/cmd/ghz@v0.120.0"  # the load generator, pinned; `go install` checks its go.sum


class BenchError(Exception):
    """The bench cannot run or a measurement is invalid; the message says why."""


# -- tools ------------------------------------------------------------------------------------------------------
def build_go_tools() -> tuple[Path, Path]:
    """Build ghz and the grpc-go reference server into bench/go/.bin (only when their sources changed)."""
    go = shutil.which("go")
    if go is None:
        raise BenchError("'go' is not on PATH: install Go >= 1.26 (see scripts/setup-go.sh); ghz and the grpc-go "
                         "reference server are built from bench/go")
    digest = hashlib.sha256(GHZ.encode())
    for path in sorted([GO_DIR / "go.mod", GO_DIR / "go.sum", *GO_DIR.glob("refserver/*.go"),
                        *(ROOT / "clients" / "go" / "inferpb").glob("*.go")]):
        digest.update(path.read_bytes())
    stamp = BIN / f".stamp-{digest.hexdigest()[:16]}"
    ghz, refserver = BIN / "ghz", BIN / "refserver"
    if stamp.exists() and ghz.exists() and refserver.exists():
        return ghz, refserver
    BIN.mkdir(exist_ok=True)
    print("building ghz and bench/go/refserver into bench/go/.bin ...", flush=True)
    env = {**os.environ, "GOBIN": str(BIN)}
    for cmd in ([go, "install", GHZ], [go, "build", "-o", str(refserver), "./refserver"]):
        try:
            done = subprocess.run(cmd, cwd=GO_DIR, env=env, capture_output=True, text=True, check=False,
                                  timeout=GO_BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BenchError(f"`{' '.join(cmd)}` in bench/go took over {GO_BUILD_TIMEOUT_S:.0f} s (no module proxy "
                             "and an empty module cache?)") from None
        if done.returncode != 0:
            raise BenchError(f"`{' '.join(cmd)}` in bench/go failed (the first build needs the Go module proxy):\n"
                             + done.stderr[-2000:])
    for old in BIN.glob(".stamp-*"):
        old.unlink()
    stamp.touch()
    return ghz, refserver


# -- servers ----------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """The first stdout line starting with prefix; fails (never hangs) if the server exits or stays silent."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line
            if not line:
                proc.wait(5)
                raise BenchError(f"the server exited with {proc.returncode} before {prefix!r}")
    raise BenchError(f"no {prefix!r} line from the server within {timeout:.0f} s")


@dataclass
class Server:
    label: str
    proc: subprocess.Popen[str]
    port: int
    folder: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_server(spec: str, tmp: Path, refserver: Path, *, pin: bool = True, engine: dict | None = None,
                 switch_interval_ms: float = 0) -> Server:
    kind, _, checkout = spec.partition("=")
    label = spec if not checkout else f"edgebox@{Path(checkout).name}"
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=tmp))
    port = free_port()
    env = dict(os.environ)
    log = open(folder / "server.log", "w", encoding="utf-8")  # noqa: SIM115 - closed with the server's folder
    if kind == "edgebox":
        config = {"console": {"enabled": False}, "data_dir": str(folder / "data"), "log_level": "WARNING",
                  "engine": {"admission_max_load": 0, **(engine or {})}}
        (folder / "engine.json").write_text(json.dumps(config))
        cmd = [PY, "-m", "edgebox", "--config", str(folder / "engine.json"), "--grpc_port", str(port)]
        if switch_interval_ms:  # an experiment: the GIL hand-over interval (Python's default is 5 ms)
            cmd[1:3] = ["-c", (f"import runpy, sys; sys.setswitchinterval({switch_interval_ms / 1000!r}); "
                               "sys.argv[0] = 'edgebox'; runpy.run_module('edgebox', run_name='__main__')")]
        ready = "EDGEBOX READY"
        if checkout:
            if not (Path(checkout) / "edgebox" / "__init__.py").exists():
                raise BenchError(f"{checkout} has no edgebox package (give a checkout's root, e.g. a git worktree)")
            env["PYTHONPATH"] = str(Path(checkout).resolve())
    elif kind in ("grpclib", "aio"):
        cmd, ready = [PY, str(ROOT / "bench" / "grpc_servers.py"), kind, str(port)], "READY"
    elif kind == "go":
        cmd, ready = [str(refserver), "-port", str(port)], "READY"
    else:
        raise BenchError(f"unknown server {spec!r}: edgebox, edgebox=CHECKOUT, grpclib, aio or go")
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=folder, env=env)
    server = Server(label, proc, port, folder)
    try:
        wait_line(proc, ready, SERVER_START_TIMEOUT_S)
    except BenchError as exc:
        server.stop()
        raise BenchError(f"{label}: {exc}; see {folder / 'server.log'}") from None
    return server


# -- load -------------------------------------------------------------------------------------------------------
def request_file(method: str, tmp: Path) -> Path:
    """The serialized request message for ghz's --binary-file."""
    from edgebox.proto_gen import infer as pb

    if method == "InferSingleFrame":
        message = pb.InferRequest(plugin="motion", source_id="bench",
                                  frame=pb.Frame(image_data=PHOTO.read_bytes(), format=pb.PixelFormat.ENCODED))
    else:
        message = getattr(pb, f"{method}Request")()
    path = tmp / f"{method}.bin"
    path.write_bytes(bytes(message))
    return path


def ghz(ghz_bin: Path, port: int, method: str, body: Path, concurrency: int, duration: float,
        rps: float = 0, pin: bool = True) -> dict:
    """One ghz run; returns req/s and p50/p99 in microseconds. Raises unless every call answered OK."""
    warm = concurrency * 2 + 10  # left out of the figures: connection set-up, first calls
    cmd = [str(ghz_bin), "--insecure", "--proto", str(PROTO), "--import-paths", str(PROTO.parent),
           "--call", f"infer.InferenceService.{method}",
           *(["--binary-file", str(body)] if body.stat().st_size else ["-d", "{}"]),  # ghz refuses empty files
           "-c", str(concurrency), "--connections", str(max(1, concurrency // 16)), "-z", f"{duration:g}s",
           "--skipFirst", str(warm), "--timeout", "20s", "--cpus", "1", "-O", "json", f"127.0.0.1:{port}"]
    if rps:
        cmd[1:1] = ["--rps", f"{rps:g}"]
    if pin:
        cmd = ["taskset", "-c", "1", *cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"ghz {method} c={concurrency} did not finish within {duration + 60:.0f} s") from None
    if done.returncode != 0 and not done.stdout.strip():
        raise BenchError(f"ghz {method} c={concurrency} failed: {done.stderr.strip()[-1000:]}")
    report = json.loads(done.stdout)
    codes = dict(report.get("statusCodeDistribution") or {})
    errors = report.get("errorDistribution") or {}
    # ghz cuts the calls still in flight when -z ends ("the client connection is closing", "transport is closing",
    # "use of closed network connection")
    if all("clos" in e for e in errors) and sum(errors.values()) <= concurrency:
        codes.pop("Canceled", None)
        codes.pop("Unavailable", None)
    if not codes:
        raise BenchError(f"ghz {method} c={concurrency}: no call finished after the first {warm}; run longer")
    if set(codes) != {"OK"}:
        raise BenchError(f"ghz {method} c={concurrency}: not every call OK: {codes} "
                         f"{report.get('errorDistribution')}")
    pct = {int(p["percentage"]): p["latency"] / 1000 for p in report.get("latencyDistribution") or []}
    return {"rps": report["rps"], "p50": pct[50], "p99": pct[99], "max_us": report["slowest"] / 1000,
            "count": report["count"]}


# -- the comparison ---------------------------------------------------------------------------------------------
def compare(args: argparse.Namespace, ghz_bin: Path, refserver: Path, tmp: Path) -> list[dict]:
    specs = args.servers.split(",")
    calls = args.calls.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    bodies = {m: request_file(m, tmp) for m in calls}
    samples: dict[tuple[str, str, int], list[dict]] = {}
    for r in range(args.rounds):
        order = specs if r % 2 == 0 else specs[::-1]  # alternate so that a drift in load hits every server
        for spec in order:
            server = start_server(spec, tmp, refserver)
            try:
                for method in calls:
                    for c in levels:
                        spy = None
                        if args.profile and spec.startswith("edgebox"):
                            out = args.profile / f"{server.label}-{method}-c{c}-r{r + 1}.txt"
                            spy = start_profile(server.proc.pid, out, args.duration)
                        m = ghz(ghz_bin, server.port, method, bodies[method], c, args.duration)
                        if spy is not None:
                            print(summarize_profile(finish_profile(spy, out)), flush=True)
                        samples.setdefault((server.label, method, c), []).append(m)
                        print(f"  round {r + 1} {server.label:14} {method:16} c={c:<3} {m['rps']:8.0f} req/s  "
                              f"p50 {m['p50']:7.0f} us  p99 {m['p99']:7.0f} us", flush=True)
            finally:
                server.stop()
    rows = []
    for (label, method, c), ms in samples.items():
        rows.append({"server": label, "call": method, "concurrency": c, "rounds": len(ms),
                     **{k: statistics.median(m[k] for m in ms) for k in ("rps", "p50", "p99")}})
    return rows


# -- profiles -----------------------------------------------------------------------------------------------------
AREAS = (  # (area, substring of the leaf frame), first match wins; py-spy writes "func (package/file.py:line)"
    ("uvloop's C loop (run_forever)", "thread_main (edgebox/bridge.py"),
    ("thread hand-off (trio wakes, waits for the GIL)", "EpollIOManager.get_events"),
    ("thread hand-off (trio wakes, waits for the GIL)", "wakeup_thread_and_signal_safe"),
    ("h2 + hpack + hyperframe (HTTP/2)", "(h2/"), ("h2 + hpack + hyperframe (HTTP/2)", "(hpack/"),
    ("h2 + hpack + hyperframe (HTTP/2)", "(hyperframe/"), ("grpclib", "(grpclib/"),
    ("betterproto2 (encode/decode)", "(betterproto2/"), ("betterproto2 (encode/decode)", "(edgebox/proto_gen/"),
    ("edgebox bridge", "(edgebox/bridge.py"), ("edgebox HTTP/2 (edgebox.api.http2)", "(edgebox/api/http2/"),
    ("edgebox api", "(edgebox/api/"), ("edgebox other", "(edgebox/"),
    ("metrics (prometheus_client)", "(prometheus_client/"), ("trio", "(trio/"), ("asyncio / uvloop", "(asyncio/"),
    ("asyncio / uvloop", "(uvloop/"),
    ("logging", "(logging/"), ("warnings (betterproto2's catch_warnings)", "(warnings.py"),
)


def start_profile(pid: int, out: Path, duration: float) -> subprocess.Popen[bytes]:
    """py-spy record (all non-idle threads, native frames off) on the server while ghz runs."""
    spy = pyspy_path()
    if spy is None:
        raise BenchError("--profile needs py-spy: .venv/bin/pip install -e '.[dev]'")
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", "200", "--duration", f"{duration:.0f}",
                             "--nonblocking", "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_profile(spy: subprocess.Popen[bytes], out: Path) -> Path:
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        raise BenchError("py-spy did not stop within 60 s after its --duration") from None
    if spy.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed (ptrace allowed? run as the engine's user): {err.decode()[-500:]}")
    return out


def summarize_profile(path: Path, top: int = 12) -> str:
    """Self time by area and by function from py-spy's collapsed stacks."""
    by_area: dict[str, int] = {}
    by_func: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        leaf = stack.rsplit(";", 1)[-1]
        n = int(count)
        total += n
        area = next((a for a, key in AREAS if key in leaf), "other")
        by_area[area] = by_area.get(area, 0) + n
        by_func[leaf] = by_func.get(leaf, 0) + n
    lines = [f"  profile {path.name}: {total} samples; self time by area:"]
    lines += [f"    {100 * n / total:5.1f} %  {a}" for a, n in sorted(by_area.items(), key=lambda x: -x[1])]
    lines.append("  top functions (self):")
    lines += [f"    {100 * n / total:5.1f} %  {f}" for f, n in sorted(by_func.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines)


def print_table(rows: list[dict]) -> None:
    by = {(r["server"], r["call"], r["concurrency"]): r for r in rows}
    print(f"\n{'server':14} {'call':16} {'c':>3} {'req/s':>8} {'p50 us':>8} {'p99 us':>8} "
          f"{'vs aio':>7} {'vs go':>6} {'p50 vs aio':>10}")
    for r in rows:
        aio = by.get(("aio", r["call"], r["concurrency"]))
        go = by.get(("go", r["call"], r["concurrency"]))
        print(f"{r['server']:14} {r['call']:16} {r['concurrency']:>3} {r['rps']:>8.0f} {r['p50']:>8.0f} "
              f"{r['p99']:>8.0f} {r['rps'] / aio['rps'] if aio else float('nan'):>7.2f} "
              f"{r['rps'] / go['rps'] if go else float('nan'):>6.2f} "
              f"{r['p50'] / aio['p50'] if aio else float('nan'):>10.2f}")
    print("(medians over rounds; vs aio / vs go = req/s ratio; p50 vs aio = latency ratio, lower is better)")


# -- under camera load ------------------------------------------------------------------------------------------
async def add_cameras(port: int, n: int, fps: float, plugins: str, urls: list[str]) -> int:
    """Add up to n cameras and wait until all are STREAMING; returns how many admission control let in."""
    from grpclib.const import Status

    from edgebox.client import EdgeboxClient, EdgeboxClientError
    from edgebox.proto_gen import infer as pb

    async with EdgeboxClient("127.0.0.1", port, timeout=120) as client:
        await client.deploy_workflow(pb.WorkflowSpec(workflow_id="bench", plugins=plugins.split(",")))
        await client.infer(PHOTO.read_bytes(), workflow_id="bench")  # load the models before the cameras
        admitted = n
        for i in range(n):
            url = urls[i % len(urls)] if urls else "demo://person" if i % 5 == 0 else "demo://empty"
            try:
                # demo:// and the test server's mounts are both 640x360 at 10 fps: said, so that admission control
                # (if on) counts what each camera really decodes rather than its 1280x720@15 default guess
                await client.add_camera(f"cam-{i:03d}", url, "bench", {"fps": f"{fps:g}",
                                                                        "expected_stream": "640x360@10"})
            except EdgeboxClientError as exc:  # only with --admission-max-load: the node is full
                if exc.status != Status.RESOURCE_EXHAUSTED:
                    raise
                admitted = i
                print(f"  camera {i + 1} refused: {exc.message}", flush=True)
                break
        started = time.monotonic()
        while time.monotonic() - started < 180:
            cameras = await client.list_cameras()
            if sum(c.state == pb.CameraState.STREAMING for c in cameras) == admitted:
                await asyncio.sleep(5)  # let the scheduler reach its steady state
                return admitted
            await asyncio.sleep(0.5)
    raise BenchError(f"not every one of the {admitted} cameras was STREAMING after 180 s")


def under_cameras(args: argparse.Namespace, ghz_bin: Path, refserver: Path, tmp: Path) -> list[dict]:
    rows = []
    with contextlib.ExitStack() as stack:
        args.urls, args.rtsp_pid = [], None
        if args.source == "rtsp":  # one server for every engine of the run, as bench/soak.py sets it up
            from tests.support.rtsp import RtspServer, gi_rtsp_available, person_and_ball_mounts

            ok, reason = gi_rtsp_available()
            if not ok:
                raise BenchError(f"the RTSP test server cannot run here: {reason}")
            photo = ROOT / "tests" / "data" / "astronaut.png"
            mounts = person_and_ball_mounts(4, photo)
            server = stack.enter_context(RtspServer(mounts))
            args.urls, args.rtsp_pid = [server.url(m["path"]) for m in mounts], server.pid
        engines = [spec for spec in args.servers.split(",") if spec.startswith("edgebox")]  # the others run none
        modes = args.camera_decoding.split(",") if args.camera_decoding else [""]
        for i, spec in enumerate(engines):
            rows += under_cameras_one(spec, args, ghz_bin, refserver, tmp, modes[i % len(modes)])
    return rows


def under_cameras_one(spec: str, args: argparse.Namespace, ghz_bin: Path, refserver: Path, tmp: Path,
                      camera_decoding: str = "") -> list[dict]:
    engine = {"max_cameras": args.cameras, "queue_capacity": max(64, args.cameras * 2),
              "admission_max_load": args.admission_max_load}
    if camera_decoding:
        engine["camera_decoding"] = camera_decoding
    server = start_server(spec, tmp, refserver, pin=False, switch_interval_ms=args.switch_interval_ms, engine=engine)
    if camera_decoding:
        server.label = f"{server.label}[{camera_decoding}]"
    rows = []
    try:
        cameras = asyncio.run(add_cameras(server.port, args.cameras, args.fps, args.plugins, args.urls))
        # On this box the streams' encoder shares the engine's cores; its share during the probes says how much.
        probe_start = time.monotonic()
        encoder_start = cpu_seconds(args.rtsp_pid) if args.rtsp_pid else 0.0
        grpc_thread = find_grpc_thread(server) if args.trace_waits else 0
        for method in ("HealthCheck", "ListCameras"):
            before = schedstat(server.proc.pid, grpc_thread) if grpc_thread else None
            m = ghz(ghz_bin, server.port, method, request_file(method, tmp), 1, args.duration * 4,
                    rps=args.probe_rps, pin=False)
            rows.append({"server": server.label, "call": method, **m})
            print(f"  {server.label}, {cameras} cameras: {method:12} {m['count']} calls at {args.probe_rps:g}/s  "
                  f"p50 {m['p50']:.0f} us  p99 {m['p99']:.0f} us  max {m['max_us']:.0f} us", flush=True)
            if before is not None:
                cores = CoreWaits.between(before, schedstat(server.proc.pid, grpc_thread))
                print(f"    gRPC thread during it: {cores.summary()}", flush=True)
        if grpc_thread:
            traced_probe(server, grpc_thread, args, ghz_bin, tmp, cameras)
        if server.proc.poll() is not None:
            raise BenchError(f"the engine exited with {server.proc.returncode} during the run")
        if args.rtsp_pid:
            share = (cpu_seconds(args.rtsp_pid) - encoder_start) / (time.monotonic() - probe_start)
            print(f"  RTSP test server (encoding {len(args.urls)} streams, serving {cameras}) during the probes: "
                  f"{share:.2f} of a core")
        print(f"  engine CPU so far {tree_cpu_seconds(server.proc.pid):.0f} s (with its decoding process); load average {os.getloadavg()[0]:.2f}")
    finally:
        server.stop()
    return rows


def find_grpc_thread(server: Server) -> int:
    from edgebox.bridge import GRPC_THREAD_NAME

    try:
        return find_thread(server.proc.pid, GRPC_THREAD_NAME)
    except LookupError as exc:
        raise BenchError(f"--trace-waits: {exc} (checkouts before the threads were named cannot be traced)") from None


def traced_probe(server: Server, tid: int, args: argparse.Namespace, ghz_bin: Path, tmp: Path, cameras: int) -> None:
    """One more HealthCheck probe with the engine's gRPC thread traced: its waits for the GIL, and how busy the GIL
    is (bench/thread_waits.py). strace slows the thread, so this probe's latencies are printed apart from the
    untraced ones and are not the engine's own."""
    seconds = args.duration * 4
    trace = GilTrace(server.proc.pid, tid, seconds, Path(tempfile.mkdtemp(prefix="waits-", dir=tmp)), pyspy_path())
    trace.start()
    try:
        m = ghz(ghz_bin, server.port, "HealthCheck", request_file("HealthCheck", tmp), 1, seconds,
                rps=args.probe_rps, pin=False)
    finally:
        waits = trace.stop()
    print(f"  {server.label}, {cameras} cameras: HealthCheck traced {m['count']} calls  p50 {m['p50']:.0f} us  "
          f"p99 {m['p99']:.0f} us (slowed by strace)\n    gRPC thread over {seconds:g} s: {waits.summary(m['count'])}",
          flush=True)


# -- the parts of a small call ----------------------------------------------------------------------------------
PARTS_CODE = r"""
import asyncio, statistics, sys, time
import trio
from edgebox.bridge import open_bridge
from edgebox.proto_gen import infer as pb

def per_call_us(fn, n):
    best = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(best)

reply = pb.HealthCheckResponse(status=pb.HealthStatus.SERVING, timestamp=1763900000000, plugin_count=3,
                               version="0.1.0", uptime_s=12.5, plugins=["face", "motion", "person"],
                               backends=["openvino-cpu", "onnxruntime-cpu"])
data = bytes(reply)
fields = dict(status=pb.HealthStatus.SERVING, timestamp=1763900000000, plugin_count=3, version="0.1.0", uptime_s=12.5,
              plugins=["face", "motion", "person"], backends=["openvino-cpu", "onnxruntime-cpu"])
print(f"betterproto2 build HealthCheckResponse            {per_call_us(lambda: pb.HealthCheckResponse(**fields), 2000):.1f} us")
print(f"betterproto2 encode HealthCheckResponse ({len(data)} B)  {per_call_us(lambda: bytes(reply), 2000):.1f} us")
try:
    from edgebox.api.codec import encode_message
    print(f"edgebox encode_message HealthCheckResponse      {per_call_us(lambda: encode_message(reply), 2000):.1f} us")
except ImportError:  # older checkouts
    pass
print(f"betterproto2 decode HealthCheckResponse          {per_call_us(lambda: pb.HealthCheckResponse.FromString(data), 2000):.1f} us")
print(f"betterproto2 decode an empty HealthCheckRequest   {per_call_us(lambda: pb.HealthCheckRequest.FromString(b''), 2000):.1f} us")

async def main():
    async with open_bridge() as bridge:
        async def hops(n, concurrent):
            def noop():
                return None
            async def task_noop():
                return None
            t = time.perf_counter()
            sync = getattr(bridge, "call_sync_in_trio", None)  # not in older checkouts
            if sync is None:
                pass
            elif concurrent:
                for _ in range(n // 64):
                    await asyncio.gather(*(sync(noop) for _ in range(64)))
            else:
                for _ in range(n):
                    await sync(noop)
            sync_us = (time.perf_counter() - t) / (n // 64 * 64 if concurrent else n) * 1e6
            t = time.perf_counter()
            if concurrent:
                for _ in range(n // 64):
                    await asyncio.gather(*(bridge.call_in_trio(task_noop) for _ in range(64)))
            else:
                for _ in range(n):
                    await bridge.call_in_trio(task_noop)
            return sync_us, (time.perf_counter() - t) / (n // 64 * 64 if concurrent else n) * 1e6
        for concurrent in (False, True):
            runs = [await bridge.call_in_asyncio(hops, 2000, concurrent) for _ in range(5)]
            sync_us = statistics.median(r[0] for r in runs)
            task_us = statistics.median(r[1] for r in runs)
            how = "64 at a time" if concurrent else "one at a time"
            print(f"bridge round trip, {how:13}: call_sync_in_trio {sync_us:.1f} us, call_in_trio {task_us:.1f} us")

trio.run(main)
"""


def parts(specs: list[str]) -> None:
    """Per-call costs of the pieces of a small call, one core (taskset CPU 0), for each edgebox checkout."""
    for spec in specs:
        kind, _, checkout = spec.partition("=")
        if kind != "edgebox":
            continue
        env = dict(os.environ, PYTHONPATH=str(Path(checkout).resolve())) if checkout else None
        done = subprocess.run(["taskset", "-c", "0", PY, "-c", PARTS_CODE], capture_output=True, text=True,
                              check=False, timeout=300, cwd=tempfile.gettempdir(), env=env)  # not ROOT: it would
        # come first on sys.path and shadow the checkout under test
        if done.returncode != 0:
            raise BenchError(f"the parts measurement failed:\n{done.stderr[-2000:]}")
        print(f"{spec}:\n{done.stdout}", end="", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per ghz run (after its warm-up calls)")
    parser.add_argument("--concurrency", default="1,64", help="calls in flight, comma-separated")
    parser.add_argument("--servers", default="edgebox,grpclib,aio,go")
    parser.add_argument("--calls", default=",".join(CALLS))
    parser.add_argument("--rounds", type=int, default=1, help="measure every server this many times, alternating")
    parser.add_argument("--cameras", type=int, default=0, help="instead: probe edgebox while N demo cameras run")
    parser.add_argument("--fps", type=float, default=2.0, help="with --cameras: frames per second per camera")
    parser.add_argument("--plugins", default="person", help="with --cameras: the cameras' workflow")
    parser.add_argument("--source", choices=("demo", "rtsp"), default="demo",
                        help="with --cameras: demo:// cameras (drawn on the event loop) or real RTSP streams from a "
                             "local gst-rtsp-server (decoded in the engine's decoding process)")
    parser.add_argument("--probe-rps", type=float, default=20.0, help="with --cameras: probe calls per second")
    parser.add_argument("--admission-max-load", type=float, default=0.0,
                        help="with --cameras: run the engine's admission control at this load (0: off, the default; "
                             "the engine's own default is 0.9): cameras past it are refused and the probe runs with "
                             "those admitted, i.e. at the heaviest load the engine accepts")
    parser.add_argument("--camera-decoding", default="",
                        help="with --cameras: engine.camera_decoding for the engines in turn, e.g. threads,process "
                             "with --servers edgebox,edgebox,edgebox,edgebox (default: the engine's own)")
    parser.add_argument("--switch-interval-ms", type=float, default=0,
                        help="with --cameras: run the engine with sys.setswitchinterval(this) (an experiment)")
    parser.add_argument("--trace-waits", action="store_true",
                        help="with --cameras: one more HealthCheck probe with the gRPC thread traced: its waits for a "
                             "core (schedstat) and for the GIL (strace), and the GIL's busy share (py-spy --gil)")
    parser.add_argument("--parts", action="store_true", help="instead: time protobuf encoding and the bridge hop")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--profile", type=Path, help="py-spy every edgebox run; collapsed stacks go to this folder")
    args = parser.parse_args()
    if args.camera_decoding and not set(args.camera_decoding.split(",")) <= {"threads", "process"}:
        parser.error("--camera-decoding takes threads and process, comma-separated")
    if not shutil.which("taskset"):
        print("grpc_calls: taskset (util-linux) is missing", file=sys.stderr)
        return 2
    print(f"$ {' '.join([Path(PY).name, *sys.argv])}\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        ghz_bin, refserver = build_go_tools() if not args.parts else (Path(), Path())
        with tempfile.TemporaryDirectory(prefix="edgebox-grpc-bench-") as tmpdir:
            if args.parts:
                parts(args.servers.split(","))
                rows = []
            elif args.cameras:
                rows = under_cameras(args, ghz_bin, refserver, Path(tmpdir))
            else:
                rows = compare(args, ghz_bin, refserver, Path(tmpdir))
                print_table(rows)
    except BenchError as exc:
        print(f"grpc_calls: {exc}", file=sys.stderr)
        return 2
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
