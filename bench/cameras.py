"""How many real RTSP cameras this machine carries through edgebox with a real plugin, none dropped.

    .venv/bin/python bench/cameras.py [--max 50] [--step 10] [--duration 25] [--fps 2] [--mounts 4] [--plugin person]
                                       [--openvino-precision auto|f32]
    .venv/bin/python bench/cameras.py --in-process --max 50      # decoding alone: runners in this process

One RTSP server (Debian's gst-rtsp-server, tests/support/rtsp.py) serves `--mounts` shared 10 fps H.264 mounts (640x360
unless `--size`), half a still photo of a person and half a moving test pattern; camera i reads mount i % mounts, so every
camera decodes its own stream while the server encodes only `--mounts` streams. The engine runs as a subprocess
(`edgebox --config`) with one workflow running `--plugin` (person: the SSDLite model; motion: frame differencing,
no model), snapshots on; cameras sample `--fps` frames per second.

The ramp adds cameras 10, 20, 30... up to --max. Each step waits for every camera to stream, lets it settle, then
measures for --duration seconds: sampled frames dropped (frames_dropped from ListCameras plus frame_seq gaps in
SubscribeResults), engine CPU % and RSS (/proc of the engine and its decoding process; the memory line adds the
PSS, which counts the pages they share once), frame age p50/p99 (capture to result, from
the results' latency_ms), frames in per second (decoded) and results out per second. It ends with the highest N
that dropped nothing. AddCamera runs under admission control unless --admission-max-load 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.process_tree import cpu_seconds, rss_mb, tree, tree_cpu_seconds, tree_rss_mb, tree_threads
from edgebox.client import EdgeboxClient, EdgeboxClientError
from edgebox.config import CAMERA_DECODING, OPENVINO_PRECISIONS, EngineConfig
from edgebox.proto_gen import infer as pb
from tests.support.rtsp import RtspServer, gi_rtsp_available, image_mount, pattern_mount

PERSON_PNG = ROOT / "tests" / "data" / "astronaut.png"
STREAMING_TIMEOUT_S = 60.0
STEP_OVERHEAD_S = 20.0  # adding cameras and waiting for them to stream, typically


@dataclass
class Step:
    cameras: int
    refused: str = ""
    dropped: int = 0
    seq_gaps: int = 0
    missed: int = 0  # results this benchmark's own subscription missed (its client was too slow)
    errors: int = 0  # results that carry an error code (e.g. INFERENCE_TIMEOUT)
    cpu_percent: float = 0.0
    rss_mb: float = 0.0
    memory: str = ""  # smaps_rollup breakdown and thread count
    server_cpu_percent: float = 0.0
    ages_ms: list[float] = field(default_factory=list)
    fps_in: float = 0.0
    fps_out: float = 0.0
    expected_out: float = 0.0

    @property
    def ok(self) -> bool:
        return (not self.refused and self.dropped == self.seq_gaps == self.missed == self.errors == 0
                and self.fps_out > 0)

    def row(self) -> str:
        if self.refused:
            return f"| {self.cameras} | no: {self.refused} |"
        p50 = statistics.median(self.ages_ms) if self.ages_ms else 0.0
        p99 = percentile(self.ages_ms, 0.99)
        extra = "".join(f", {n} {what}" for n, what in ((self.missed, "missed by the benchmark client"),
                                                         (self.errors, "error results")) if n)
        return (f"| {self.cameras} | {'yes' if self.ok else 'no'} ({self.dropped} dropped, {self.seq_gaps} gaps"
                f"{extra}) | "
                f"{self.cpu_percent:.0f} % | {self.rss_mb:.0f} MB | {p50:.0f} / {p99:.0f} ms | {self.fps_in:.0f} | "
                f"{self.fps_out:.1f} of {self.expected_out:.1f} | {self.server_cpu_percent:.0f} % |")


HEADER = ("| cameras | zero dropped sampled frames | engine CPU | engine RSS | frame age p50 / p99 | fps in | "
          "results/s out | RTSP server CPU |\n|---|---|---|---|---|---|---|---|")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def os_thread_count() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def memory_breakdown(pid: int) -> str:
    """Anonymous vs file-backed resident memory (/proc/PID/smaps_rollup) and the thread count, summed over the
    engine and its decoding process, then each process's own. The RSS sum counts the pages the two share (their
    libraries) twice; the PSS sum counts every page once, split among the processes that map it."""
    per_process: list[dict[str, int]] = []
    for each in tree(pid):
        fields: dict[str, int] = {}
        with contextlib.suppress(OSError), open(f"/proc/{each}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    fields[name] = int(rest.split()[0])
        per_process.append(fields)

    def mb(fields: dict[str, int], name: str) -> str:
        return f"{fields.get(name, 0) / 1024:.0f}"

    total = {name: sum(f.get(name, 0) for f in per_process) for name in ("Rss", "Anonymous", "Pss")}
    total["File"] = total["Rss"] - total["Anonymous"]
    parts = "" if len(per_process) < 2 else " (" + "; ".join(
        f"{'engine' if i == 0 else 'child'} anonymous {mb(f, 'Anonymous')}, PSS {mb(f, 'Pss')}"
        for i, f in enumerate(per_process)) + ")"
    return (f"RSS {mb(total, 'Rss')} MB = anonymous {mb(total, 'Anonymous')} + file-backed {mb(total, 'File')}; "
            f"PSS {mb(total, 'Pss')} MB{parts}; {tree_threads(pid)} threads in {len(per_process)} process(es)")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def start_engine(workdir: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, str, Path]:
    config = {"log_level": args.log_level, "console": {"enabled": False},
              "engine": {"max_cameras": 10_000, "admission_max_load": args.admission_max_load,
                         "openvino_precision": args.openvino_precision,
                         "camera_decoding": args.camera_decoding}}
    config_path = workdir / "engine.json"
    config_path.write_text(json.dumps(config))
    log_path = workdir / "engine.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the engine
    proc = subprocess.Popen([sys.executable, "-m", "edgebox", "--config", str(config_path), "--grpc_port", "0",
                             "--data_dir", str(workdir / "data")], stdout=subprocess.PIPE, stderr=log,
                            text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("EDGEBOX READY"):
            target = line.split()[2].split("=", 1)[1]
            return proc, target, log_path
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the engine did not start; see {log_path}:\n{log_path.read_text()[-3000:]}")


class Results:
    """Collects SubscribeResults (without images): per camera frame_seq, and ages, in a measuring window."""

    def __init__(self) -> None:
        self.window_open = False
        self.last_seq: dict[str, int] = {}
        self.gaps = 0
        self.missed = 0
        self.count = 0
        self.ages_ms: list[float] = []
        self.errors = 0

    def reset(self) -> None:
        self.gaps = self.count = self.missed = self.errors = 0
        self.ages_ms = []

    def add(self, r: pb.InferResult) -> None:
        previous = self.last_seq.get(r.camera_id)
        self.last_seq[r.camera_id] = r.frame_seq
        if not self.window_open:
            return
        self.count += 1
        self.missed += r.missed_before
        self.errors += bool(r.error_code)
        self.ages_ms.append(r.latency_ms)
        if previous is not None and r.frame_seq != previous + 1:
            self.gaps += max(0, r.frame_seq - previous - 1)


async def collect(client: EdgeboxClient, results: Results) -> None:
    async for r in client.subscribe(omit_images=True):
        results.add(r)


async def run_step(client: EdgeboxClient, n: int, args: argparse.Namespace, urls: list[str], engine_pid: int,
                   server_pid: int, results: Results) -> Step:
    step = Step(n)
    existing = {c.camera_id for c in await client.list_cameras()}
    for i in range(n):
        camera_id = f"cam{i:03d}"
        if camera_id in existing:
            continue
        try:
            # The mounts' profile, declared as an operator would, so that admission counts what the cameras are
            # before they stream (else a fresh engine reserves 1280x720@15 for each one of a burst).
            await client.add_camera(camera_id, urls[i % len(urls)], "people",
                                    {"fps": f"{args.fps:g}", "expected_stream": f"{args.width}x{args.height}@10"})
        except EdgeboxClientError as exc:
            step.refused = f"AddCamera of camera {i + 1} refused: {exc.message}"
            return step
    deadline = time.monotonic() + STREAMING_TIMEOUT_S
    while True:
        cameras = await client.list_cameras()
        if all(c.state == pb.CameraState.STREAMING for c in cameras):
            break
        if time.monotonic() > deadline:
            bad = [f"{c.camera_id}={c.state.name} ({c.last_error})" for c in cameras
                   if c.state != pb.CameraState.STREAMING]
            step.refused = f"{len(bad)} cameras not STREAMING after {STREAMING_TIMEOUT_S:g} s, e.g. {bad[:3]}"
            return step
        await asyncio.sleep(0.5)
    await asyncio.sleep(args.settle)
    dropped_before = sum(c.frames_dropped for c in await client.list_cameras())
    cpu_before, server_before, started = tree_cpu_seconds(engine_pid), cpu_seconds(server_pid), time.monotonic()
    results.reset()
    results.window_open = True
    await asyncio.sleep(args.duration)
    results.window_open = False
    elapsed = time.monotonic() - started
    cameras = await client.list_cameras()
    step.cpu_percent = 100 * (tree_cpu_seconds(engine_pid) - cpu_before) / elapsed
    step.server_cpu_percent = 100 * (cpu_seconds(server_pid) - server_before) / elapsed
    step.rss_mb = tree_rss_mb(engine_pid)
    step.memory = memory_breakdown(engine_pid)
    step.dropped = sum(c.frames_dropped for c in cameras) - dropped_before
    step.seq_gaps, step.missed, step.errors = results.gaps, results.missed, results.errors
    step.ages_ms = list(results.ages_ms)
    step.fps_in = sum(c.fps_in for c in cameras)
    step.fps_out = results.count / elapsed
    step.expected_out = sum(min(args.fps, c.fps_in) for c in cameras)
    return step


def rtsp_mounts(args: argparse.Namespace) -> list[dict]:
    """The shared mounts: a still photo of a person on the even ones, a moving pattern on the odd ones."""
    size = {"width": args.width, "height": args.height}
    return [image_mount(f"/person{i}", PERSON_PNG, **size) if i % 2 == 0 else pattern_mount(f"/ball{i}", **size)
            for i in range(args.mounts)]


async def bench(args: argparse.Namespace) -> list[Step]:
    ok, reason = gi_rtsp_available()
    if not ok:
        raise SystemExit(f"the RTSP test server cannot run here: {reason} (scripts/install-system-deps.sh)")
    mounts = rtsp_mounts(args)
    steps: list[Step] = []
    started = time.monotonic()
    with RtspServer(mounts) as server, tempfile.TemporaryDirectory(prefix="edgebox-bench-") as tmp:
        urls = [server.url(m["path"]) for m in mounts]
        engine, target, log_path = start_engine(Path(tmp), args)
        print(f"# engine started, no workflow: {memory_breakdown(engine.pid)}", flush=True)
        try:
            host, _, port = target.rpartition(":")
            async with EdgeboxClient(host, int(port), timeout=60) as client:
                await client.deploy_workflow(pb.WorkflowSpec(workflow_id="people", plugins=[args.plugin],
                                                             min_score=0.5, attach_snapshot=True))
                print(f"# workflow {args.plugin} deployed, 0 cameras: {memory_breakdown(engine.pid)}", flush=True)
                results = Results()
                collector = asyncio.create_task(collect(client, results))
                for n in range(args.step, args.max + 1, args.step):
                    if time.monotonic() - started + args.settle + args.duration + STEP_OVERHEAD_S > args.budget:
                        print(f"(stopped before {n} cameras: the --budget of {args.budget:g} s would be exceeded)")
                        break
                    step = await run_step(client, n, args, urls, engine.pid, server.pid, results)
                    steps.append(step)
                    print(step.row(), flush=True)
                    if step.memory:
                        print(f"# memory at {n} cameras: {step.memory}", flush=True)
                    if step.refused:
                        break
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError, EdgeboxClientError, OSError):
                    await collector
        finally:
            engine.terminate()
            try:
                engine.wait(timeout=20)
            except subprocess.TimeoutExpired:
                engine.kill()
            if args.keep_log:
                print(f"engine log:\n{log_path.read_text()[-5000:]}")
    return steps


async def bench_in_process(args: argparse.Namespace) -> None:
    """--in-process: N CameraRunners in this process, no engine and no plugin: what decoding alone costs."""
    import threading

    import trio

    from edgebox.cameras import CameraRunner, CameraState, parse_camera_options

    ok, reason = gi_rtsp_available()
    if not ok:
        raise SystemExit(f"the RTSP test server cannot run here: {reason} (scripts/install-system-deps.sh)")
    mounts = rtsp_mounts(args)
    with RtspServer(mounts) as server:
        urls = [server.url(m["path"]) for m in mounts]
        options = parse_camera_options({"fps": f"{args.fps:g}"})
        gate = trio.CapacityLimiter(2)  # as the fleet does (edgebox/fleet.py, OPEN_CONCURRENCY)
        sampled = [0]

        def on_frame(frame: object) -> None:
            sampled[0] += 1

        runners = [CameraRunner(f"cam{i:03d}", urls[i % len(urls)], options, on_frame, open_gate=gate)
                   for i in range(args.max)]
        rss_before = rss_mb(os.getpid())
        async with trio.open_nursery() as nursery:
            for runner in runners:
                await nursery.start(runner.run)
            with trio.move_on_after(STREAMING_TIMEOUT_S):
                while not all(r.status.state is CameraState.STREAMING for r in runners):
                    await trio.sleep(0.2)
            streaming = sum(r.status.state is CameraState.STREAMING for r in runners)
            await trio.sleep(args.settle)
            frames0, sampled0 = sum(r.status.frames_in for r in runners), sampled[0]
            cpu0, t0 = cpu_seconds(os.getpid()), time.monotonic()
            await trio.sleep(args.duration)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds(os.getpid()) - cpu0
            frames = sum(r.status.frames_in for r in runners) - frames0
            taken = sampled[0] - sampled0
            threads, os_threads, rss = threading.active_count(), os_thread_count(), rss_mb(os.getpid())
            nursery.cancel_scope.cancel()
        print(f"| {args.max} ({streaming} streaming) | {frames / elapsed:.0f} | {taken / elapsed:.1f} | "
              f"{100 * cpu / elapsed:.0f} % | {1000 * cpu / max(1, frames):.2f} ms | {threads} / {os_threads} | "
              f"{rss_before:.0f} -> {rss:.0f} MB |")
        await trio.sleep(1.0)
        print(f"# Python threads 1 s after every runner was cancelled: {threading.active_count()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max", type=int, default=50, help="most cameras (default 50)")
    p.add_argument("--step", type=int, default=10, help="cameras added per step (default 10)")
    p.add_argument("--duration", type=float, default=25.0, help="seconds measured per step (default 25)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds between all-streaming and measuring")
    p.add_argument("--fps", type=float, default=2.0, help="sampled frames per second per camera (default 2)")
    p.add_argument("--mounts", type=int, default=4, help="distinct RTSP mounts the cameras share (default 4)")
    p.add_argument("--size", default="640x360", help="the mounts' picture size, WIDTHxHEIGHT (default 640x360)")
    p.add_argument("--plugin", default="person",
                   help="the workflow's built-in plugin: person (SSDLite model, default), motion (no model), face")
    p.add_argument("--admission-max-load", type=float, default=0.9,
                   help="engine.admission_max_load (default 0.9; 0 = no admission control)")
    p.add_argument("--openvino-precision", choices=OPENVINO_PRECISIONS, default="auto",
                   help="engine.openvino_precision (default auto: bf16 where the CPU has it)")
    p.add_argument("--camera-decoding", choices=CAMERA_DECODING, default=EngineConfig.camera_decoding,
                   help="engine.camera_decoding: in the engine's reader threads or in its decoding process")
    p.add_argument("--log-level", default="WARNING", help="engine log level (default WARNING)")
    p.add_argument("--budget", type=float, default=330.0,
                   help="seconds the whole run may take; no step starts that would pass it (default 330)")
    p.add_argument("--keep-log", action="store_true", help="print the end of the engine log")
    p.add_argument("--in-process", action="store_true",
                   help="run --max CameraRunners in this process (no engine, no plugin) and print the CPU per "
                        "decoded frame, threads and RSS of decoding alone")
    args = p.parse_args()
    try:
        args.width, args.height = (int(side) for side in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size takes WIDTHxHEIGHT, e.g. 1920x1080, not {args.size!r}")
    if args.in_process:
        import trio

        print(f"# edgebox camera runners in-process, {time.strftime('%Y-%m-%d %H:%M')}, {args.mounts} mounts, "
              f"sampling {args.fps:g} fps, {args.duration:g} s; load average before {os.getloadavg()[0]:.2f}")
        print("| cameras | frames in/s | sampled/s | process CPU | CPU per decoded frame | threads (Python / OS) | "
              "RSS |\n|---|---|---|---|---|---|---|", flush=True)
        trio.run(bench_in_process, args)
        print(f"# load average after {os.getloadavg()[0]:.2f}")
        return
    print(f"# edgebox cameras benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} cores, load average before {os.getloadavg()[0]:.2f}")
    print(f"# {args.mounts} shared RTSP mounts {args.width}x{args.height} at 10 fps (H.264), {args.plugin} workflow, sampling {args.fps:g} "
          f"fps per camera, {args.duration:g} s per step, admission_max_load {args.admission_max_load:g}, "
          f"openvino_precision {args.openvino_precision}, camera_decoding {args.camera_decoding}")
    print(HEADER, flush=True)
    started = time.monotonic()
    steps = asyncio.run(bench(args))
    best = max((s.cameras for s in steps if s.ok), default=0)
    print(f"\nhighest N with zero dropped sampled frames: {best} (sampling {args.fps:g} fps per camera); "
          f"load average after {os.getloadavg()[0]:.2f}; took {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
