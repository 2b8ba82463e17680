"""Soak: run the engine with N cameras for a while and fail if its memory keeps growing.

    .venv/bin/python bench/soak.py                         # 50 demo cameras at 2 fps for 10 minutes
    .venv/bin/python bench/soak.py --cameras 10 --duration 60 --json soak.json
    .venv/bin/python bench/soak.py --source rtsp --plugins motion   # real RTSP streams (gst-rtsp-server)

The engine runs as a subprocess (`python -m edgebox`, console off). Its resident memory (VmRSS, with its camera
decoding process's: bench/process_tree.py) is read first
with the workflow's models loaded and run at every batch size but no camera (the baseline: what the models and
the runtime cost), then every --interval seconds while N cameras stream (every --person-every-th one demo://person, the
others demo://empty). A least-squares line is fitted to the samples after --warmup; the run fails (exit 1) when
that slope, projected over the whole run, exceeds --threshold-mb (default 100 MB, Triton's soak rule), when
the engine dies, or when a camera is not streaming at the end. Exit 2: the engine could not be started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so that a checkout runs it without installing edgebox

from bench.process_tree import tree_rss_mb
from edgebox.client import EdgeboxClient
from edgebox.config import EngineConfig
from edgebox.proto_gen import infer as pb

PHOTO = ROOT / "edgebox" / "demo" / "astronaut.jpg"
READY_TIMEOUT_S = 120.0
STREAMING_TIMEOUT_S = 180.0


@dataclass
class Sample:
    t: float  # seconds since the cameras were added
    rss_mb: float
    results: int  # inference requests served so far (GetMetrics.total_infer_requests_64)
    dropped: int
    active: int


@dataclass
class Report:
    cameras: int
    fps: float
    duration_s: float
    warmup_s: float
    threshold_mb: float
    source: str = "demo"
    rss_start_mb: float = 0.0  # engine started, no workflow
    rss_model_once_mb: float = 0.0  # models loaded and run once (batch 1)
    rss_baseline_mb: float = 0.0  # models run at every batch size, no camera
    rss_with_cameras_mb: float = 0.0  # median after warm-up
    rss_after_removal_mb: float = 0.0
    slope_mb_per_hour: float = 0.0
    projected_growth_mb: float = 0.0
    streaming_after_s: float = 0.0
    results_per_s: float = 0.0
    frames_dropped: int = 0
    active_at_end: int = 0
    engine_exit: int | None = None
    failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def rss_mb(pid: int) -> float:
    """The engine's resident memory with its decoding process's (bench/process_tree.py)."""
    if not Path(f"/proc/{pid}").exists():
        raise RuntimeError(f"no process {pid}")
    return tree_rss_mb(pid)


def slope_per_s(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def start_engine(folder: Path, cameras: int, camera_decoding: str | None = None
                 ) -> tuple[subprocess.Popen[str], str, int]:
    engine: dict = {"max_cameras": cameras, "queue_capacity": max(64, cameras * 2)}
    if camera_decoding:
        engine["camera_decoding"] = camera_decoding
    if "admission_max_load" in EngineConfig.__dataclass_fields__:
        engine["admission_max_load"] = 0  # measure memory at the requested load, not what admission would allow
    config = {"data_dir": str(folder / "data"), "log_level": "WARNING", "console": {"enabled": False},
              "engine": engine}
    (folder / "engine.json").write_text(json.dumps(config))
    log = open(folder / "engine.log", "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the engine
    proc = subprocess.Popen([sys.executable, "-m", "edgebox", "--config", str(folder / "engine.json"),
                             "--grpc_port", "0"], stdout=subprocess.PIPE, stderr=log, text=True, cwd=folder)
    deadline = time.monotonic() + READY_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("EDGEBOX READY "):
            address = line.split()[2].split("=", 1)[1]
            host, _, port = address.rpartition(":")
            return proc, host, int(port)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"the engine did not start; see {folder / 'engine.log'}")


async def soak(args: argparse.Namespace, proc: subprocess.Popen[str], host: str, port: int, report: Report) -> None:
    client = EdgeboxClient(host, port, timeout=120)
    try:
        report.rss_start_mb = rss_mb(proc.pid)
        await client.deploy_workflow(pb.WorkflowSpec(workflow_id="soak", plugins=args.plugins.split(",")))
        # Models loaded and run once at every batch size the scheduler may form: the backends' buffers for each
        # batch shape belong to the baseline (what the models cost), not to the cameras' growth.
        for size in range(1, EngineConfig.max_batch_size + 1):
            await client.infer_batch([PHOTO.read_bytes()] * size, workflow_id="soak")
            if size == 1:
                report.rss_model_once_mb = rss_mb(proc.pid)
        await asyncio.sleep(2)
        report.rss_baseline_mb = statistics.median([rss_mb(proc.pid) for _ in range(3)])
        print(f"RSS {report.rss_start_mb:.0f} MB at start, {report.rss_model_once_mb:.0f} MB with the models run "
              f"once, {report.rss_baseline_mb:.0f} MB after every batch size 1..{EngineConfig.max_batch_size} "
              "(the baseline, no camera)", flush=True)

        ids = [f"soak-{i:03d}" for i in range(args.cameras)]
        for i, camera_id in enumerate(ids):
            if args.urls:
                url = args.urls[i % len(args.urls)]
            else:
                url = "demo://person" if args.person_every and i % args.person_every == 0 else "demo://empty"
            await client.add_camera(camera_id, url, "soak", {"fps": f"{args.fps:g}"})
        added = time.monotonic()
        while True:
            cameras = await client.list_cameras()
            states = [c.state for c in cameras]
            if states.count(pb.CameraState.STREAMING) == len(ids):
                break
            if time.monotonic() - added > STREAMING_TIMEOUT_S:
                report.failures.append(f"only {states.count(pb.CameraState.STREAMING)} of {len(ids)} cameras "
                                       f"STREAMING after {STREAMING_TIMEOUT_S:g} s")
                print_not_streaming(cameras)
                return
            await asyncio.sleep(0.5)
        report.streaming_after_s = time.monotonic() - added
        print(f"{len(ids)} cameras STREAMING after {report.streaming_after_s:.1f} s; sampling for "
              f"{args.duration:g} s every {args.interval:g} s (warm-up {report.warmup_s:g} s)", flush=True)

        started = time.monotonic()
        next_print = started
        while (now := time.monotonic()) - started < args.duration:
            if proc.poll() is not None:
                report.failures.append(f"the engine exited with {proc.returncode} during the soak")
                return
            metrics = await client.metrics()
            sample = Sample(now - started, rss_mb(proc.pid), metrics.total_infer_requests_64,
                            metrics.frames_dropped, metrics.active_cameras)
            report.samples.append(sample)
            if now >= next_print:
                print(f"  t={sample.t:6.0f} s  RSS {sample.rss_mb:7.1f} MB  results {sample.results:8d}  "
                      f"dropped {sample.dropped:7d}  streaming {sample.active}", flush=True)
                next_print = now + 30
            await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - now)))

        last = report.samples[-1]
        first = report.samples[0]
        report.results_per_s = (last.results - first.results) / max(1e-9, last.t - first.t)
        report.frames_dropped = last.dropped
        report.active_at_end = last.active
        if last.active != len(ids):
            report.failures.append(f"{last.active} of {len(ids)} cameras STREAMING at the end")
            print_not_streaming(await client.list_cameras())

        for camera_id in ids:
            await client.remove_camera(camera_id)
        await asyncio.sleep(3)
        report.rss_after_removal_mb = rss_mb(proc.pid)
    finally:
        client.close()


def print_not_streaming(cameras: list[pb.CameraInfo]) -> None:
    """What each camera that is not streaming is doing, for whoever reads a failure."""
    for c in cameras:
        if c.state != pb.CameraState.STREAMING:
            print(f"  {c.camera_id}: {c.state.name}, {c.reconnects} reconnects, {c.last_error!r}", file=sys.stderr)


def analyse(report: Report) -> None:
    fitted = [(s.t, s.rss_mb) for s in report.samples if s.t >= report.warmup_s]
    if len(fitted) < 3:
        report.failures.append(f"only {len(fitted)} samples after the warm-up; run longer or sample more often")
        return
    slope = slope_per_s(fitted)
    report.slope_mb_per_hour = slope * 3600
    report.projected_growth_mb = slope * report.duration_s
    report.rss_with_cameras_mb = statistics.median(rss for _, rss in fitted)
    if report.projected_growth_mb > report.threshold_mb:
        report.failures.append(f"RSS grows {report.slope_mb_per_hour:.0f} MB/hour: {report.projected_growth_mb:.0f} "
                               f"MB over the {report.duration_s:g} s run, above the {report.threshold_mb:g} MB limit")


def print_report(report: Report) -> None:
    print()
    print(f"soak: {report.cameras} {report.source} cameras at {report.fps:g} fps for {report.duration_s:g} s")
    rows = [
        ("RSS at start (no workflow)", f"{report.rss_start_mb:.0f} MB"),
        ("RSS with models run once (batch 1)", f"{report.rss_model_once_mb:.0f} MB"),
        ("RSS after every batch size, 0 cameras", f"{report.rss_baseline_mb:.0f} MB (baseline)"),
        (f"RSS with {report.cameras} cameras (median)",
         (f"{report.rss_with_cameras_mb:.0f} MB (+{report.rss_with_cameras_mb - report.rss_baseline_mb:.0f} MB "
         f"over the baseline, {(report.rss_with_cameras_mb - report.rss_baseline_mb) / max(1, report.cameras):.1f}"
         " MB per camera)")),
        ("RSS after removing every camera", f"{report.rss_after_removal_mb:.0f} MB"),
        ("growth after warm-up (least squares)",
         (f"{report.slope_mb_per_hour:+.1f} MB/hour = {report.projected_growth_mb:+.1f} MB over the run "
         f"(limit {report.threshold_mb:g} MB)")),
        ("results per second", f"{report.results_per_s:.1f} (asked {report.cameras * report.fps:g})"),
        ("frames dropped (overload policy)", str(report.frames_dropped)),
        ("cameras streaming at the end", f"{report.active_at_end} of {report.cameras}"),
        ("engine exit code after SIGTERM", str(report.engine_exit)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    print("PASS" if report.passed else "FAIL: " + "; ".join(report.failures), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=50)
    p.add_argument("--fps", type=float, default=2.0, help="sampled frames per second per camera")
    p.add_argument("--duration", type=float, default=600.0, help="seconds of sampling with the cameras running")
    p.add_argument("--warmup", type=float, help="seconds left out of the fit (default: a quarter, 10..120)")
    p.add_argument("--interval", type=float, help="seconds between samples (default: 5, less for short runs)")
    p.add_argument("--person-every", type=int, default=5, help="every Nth camera is demo://person (0 = none)")
    p.add_argument("--plugins", default="person", help="the cameras' workflow, comma-separated plugins")
    p.add_argument("--source", choices=("demo", "rtsp"), default="demo",
                   help="demo:// cameras (default) or real RTSP streams from a local gst-rtsp-server")
    p.add_argument("--mounts", type=int, default=4, help="with --source rtsp: distinct mounts the cameras share")
    p.add_argument("--camera-decoding", choices=("threads", "process"),
                   help="engine.camera_decoding (default: the engine's)")
    p.add_argument("--threshold-mb", type=float, default=100.0, help="allowed growth over the run")
    p.add_argument("--json", type=Path, help="also write the report (with every sample) here")
    p.add_argument("--keep", action="store_true", help="keep the engine's folder (config, log, state)")
    args = p.parse_args(argv)
    if args.warmup is None:  # a quarter of the run, at least 10 s (but at most half of it), at most 120 s
        args.warmup = min(120.0, max(args.duration / 4, min(10.0, args.duration / 2)))
    args.interval = min(5.0, max(0.5, args.duration / 20)) if args.interval is None else args.interval
    report = Report(args.cameras, args.fps, args.duration, args.warmup, args.threshold_mb, args.source)
    with contextlib.ExitStack() as stack:
        args.urls = []
        if args.source == "rtsp":
            from tests.support.rtsp import RtspServer, gi_rtsp_available, person_and_ball_mounts

            ok, reason = gi_rtsp_available()
            if not ok:
                print(f"soak: the RTSP test server cannot run here: {reason}", file=sys.stderr)
                return 2
            photo = ROOT / "tests" / "data" / "astronaut.png"
            mounts = person_and_ball_mounts(args.mounts, photo)
            server = stack.enter_context(RtspServer(mounts))
            args.urls = [server.url(m["path"]) for m in mounts]
        return run(args, report)


def run(args: argparse.Namespace, report: Report) -> int:
    folder = Path(tempfile.mkdtemp(prefix="edgebox-soak-"))
    try:
        proc, host, port = start_engine(folder, args.cameras, args.camera_decoding)
    except RuntimeError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(soak(args, proc, host, port, report))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                report.engine_exit = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                report.engine_exit = proc.wait(10)
        else:
            report.engine_exit = proc.returncode
    if report.engine_exit != 0:
        report.failures.append(f"the engine exited with {report.engine_exit} after SIGTERM")
    if not report.failures:
        analyse(report)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "passed": report.passed}, indent=2))
    if args.keep or not report.passed:
        print(f"engine folder (config, log): {folder}")
    else:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    return 0 if report.passed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
