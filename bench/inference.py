"""Inference throughput: the raw backend beside edgebox's scheduler and beside end-to-end gRPC, in one table.

    .venv/bin/python bench/inference.py [--quick] [--batches 1,2,4,8] [--backends openvino-cpu] [--models person]
                                        [--cpu-executions 1,2] [--openvino-precisions auto,f32]

For each usable backend (onnxruntime-cpu, openvino-cpu; onnxruntime-cuda and onnxruntime-tensorrt where usable),
each model (person, face) and each batch size it measures frames/s and latency four ways, one right after the
other, on the same preprocessed astronaut photo:

  raw      LoadedModel.run on a stacked batch in a tight loop (the ceiling; measured before and after the rest,
           and averaged, so that a drift of the machine's load hits both sides of the ratio alike); on CPU
           backends in as many threads at once as the engine runs batches (engine.cpu_executions, `x2` in
           the table)
  sched    edgebox's ModelQueue in this process with max_batch_size = batch and 2 x batch concurrent submitters
  grpc-b   a real engine subprocess (engine.max_batch_size = batch) on loopback: 2 InferBatch calls of `batch`
           JPEG frames in flight; includes JPEG decode, preprocessing, postprocessing and protobuf both ways
  grpc-1   the same engine, 2 x batch concurrent InferSingleFrame calls

OpenVINO rows name the precision the model really ran at (`bf16` where the CPU has AMX or AVX-512 BF16 and
engine.openvino_precision is "auto"); `--openvino-precisions auto,f32` measures both in one run.

Throughput is frames completed between two completions divided by the time between them (exact for bursty
batch completions). Ratios to raw are what to compare across machines: the absolute numbers move with the load.
Latency is per call (raw: one batch; sched: one frame; grpc-b: one InferBatch; grpc-1: one frame).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgebox.client import EdgeboxClient, pb
from edgebox.config import EngineConfig
from edgebox.engine.backends import BACKEND_LOADERS, LoadedModel, LoadOptions
from edgebox.engine.hardware import cpu_name, detect_hardware
from edgebox.engine.models import cpu_executions
from edgebox.engine.scheduler import ModelQueue, QueueSettings
from edgebox.metrics import Metrics
from edgebox.plugins_loader import builtin_plugin_dir, load_plugins

PHOTO = ROOT / "tests" / "data" / "astronaut.png"
BACKENDS = ("onnxruntime-cpu", "openvino-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt")
DEPLOY_TIMEOUT_S = 900.0  # a first TensorRT load builds an engine per model: minutes
MODELS = ("person", "face")
MODES = ("raw", "sched", "grpc-b", "grpc-1")
ENGINE_START_TIMEOUT_S = 60.0
MIN_CALLS = 8  # a cell measures at least this many calls (latency samples) ...
MIN_BATCHES = 6  # ... and this many batches' worth of frames after the first, even past --duration ...
MAX_STRETCH = 6  # ... but for no more than this many times --duration


@dataclass
class Samples:
    """When frames completed (perf_counter, frames) and how long each call took, after the warm-up."""

    completions: list[tuple[float, int]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu_s: float = float("nan")  # CPU seconds the measured process used while measuring
    client_cpu_s: float = float("nan")  # gRPC: CPU seconds of this process (the client) meanwhile

    def add(self, started: float, frames: int) -> None:
        now = time.perf_counter()
        self.completions.append((now, frames))
        self.latencies.append(now - started)


@dataclass
class Measurement:
    fps: float
    p50_ms: float
    p99_ms: float
    calls: int
    cpu_ms: float = float("nan")  # CPU per frame: this process (raw, sched) or the engine process (gRPC)
    client_cpu_ms: float = float("nan")  # gRPC: CPU per frame of this process, the client (also on this box)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process, or of process `pid` (all threads)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summarize(samples: Samples, burst_s: float = 0.0) -> Measurement:
    """Frames/s between the first and the last completion, and latency percentiles.

    A batch completes as a burst of frames. Counting from the end of the first burst to the last completion
    counts whole batches over whole batch intervals, so a window that starts or ends between two batches
    does not add or lose part of a batch. `burst_s`: completions closer than this to the first one belong to
    its burst (a fraction of one batch's compute time).
    """
    done = sorted(samples.completions)
    lat = sorted(samples.latencies)
    if not done:
        return Measurement(float("nan"), float("nan"), float("nan"), 0)
    first = done[0][0]
    later = [(t, n) for t, n in done if t > first + burst_s]
    p50, p99 = _pct(lat, 0.50) * 1000, _pct(lat, 0.99) * 1000
    frames = sum(n for _, n in done)
    cpu_ms, client_ms = samples.cpu_s / frames * 1000, samples.client_cpu_s / frames * 1000
    fps = sum(n for _, n in later) / (later[-1][0] - first) if later else float("nan")
    return Measurement(fps, p50, p99, len(lat), cpu_ms, client_ms)


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# -- raw and in-process scheduler ----------------------------------------------------------------------------
def measure_raw(model: LoadedModel, tensor: np.ndarray, batch: int, warmup: float, duration: float) -> Measurement:
    """`model.parallel` threads each running the stacked batch back to back, as many as the engine runs at once."""
    stacked = np.stack([tensor] * batch)
    samples = Samples()
    state = {"measuring": False, "stop": False}

    def loop() -> None:
        while not state["stop"]:
            started = time.perf_counter()
            model.run(stacked)
            if state["measuring"]:
                samples.add(started, batch)

    runners = [threading.Thread(target=loop) for _ in range(model.parallel)]
    for runner in runners:
        runner.start()
    time.sleep(warmup)
    since, cpu = time.perf_counter(), cpu_seconds()
    state["measuring"] = True
    while not _enough(samples, since, duration, batch):
        time.sleep(0.01)
    state["measuring"] = False
    samples.cpu_s = cpu_seconds() - cpu
    state["stop"] = True
    for runner in runners:
        runner.join()
    return summarize(samples)


def _enough(samples: Samples, since: float, duration: float, batch: int) -> bool:
    elapsed = time.perf_counter() - since
    if elapsed >= duration * MAX_STRETCH:
        return True
    frames = sum(n for _, n in samples.completions)
    return elapsed >= duration and len(samples.latencies) >= MIN_CALLS and frames >= (MIN_BATCHES + 1) * batch


def measure_scheduler(model: LoadedModel, tensor: np.ndarray, batch: int, warmup: float, duration: float,
                      burst_s: float) -> Measurement:
    async def main() -> Measurement:
        settings = QueueSettings(max_batch_size=batch, max_queue_delay_s=0.1, capacity=64, timeout_s=60.0)
        queue = ModelQueue("bench", model, settings, Metrics())
        samples = Samples()
        state = {"measuring": False, "stop": False}

        async def submitter() -> None:
            while not state["stop"]:
                started = time.perf_counter()
                await queue.infer(tensor, droppable=False)
                if state["measuring"]:
                    samples.add(started, 1)

        async with trio.open_nursery() as nursery:
            await nursery.start(queue.run)
            async with trio.open_nursery() as submitters:
                for _ in range(2 * batch):
                    submitters.start_soon(submitter)
                await trio.sleep(warmup)
                state["measuring"] = True
                since, cpu = time.perf_counter(), cpu_seconds()
                while not _enough(samples, since, duration, batch):
                    await trio.sleep(0.05)
                state["measuring"] = False
                samples.cpu_s = cpu_seconds() - cpu
                state["stop"] = True  # submitters finish the frame they wait for: nothing is left on the device
            nursery.cancel_scope.cancel()
        return summarize(samples, burst_s)

    return trio.run(main)


# -- end to end through a real engine ------------------------------------------------------------------------
class Engine:
    """An `edgebox` subprocess on loopback with one workflow per (backend, model)."""

    def __init__(self, batch: int, tmp: Path, cpu_executions: int, openvino_precision: str = "auto") -> None:
        name = f"{batch}-{cpu_executions}-{openvino_precision}"
        config = tmp / f"engine-{name}.json"
        config.write_text(json.dumps({"console": {"enabled": False}, "log_level": "WARNING",
                                      "engine": {"max_batch_size": batch, "cpu_executions": cpu_executions,
                                                 "openvino_precision": openvino_precision}}))
        cmd = [str(Path(sys.executable).parent / "edgebox"), "--config", str(config), "--grpc_port", "0",
               "--data_dir", str(tmp / f"data-{name}")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
        self.output: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            self.output.append(line)
            if line.startswith("EDGEBOX READY"):
                host, port = line.split()[2].removeprefix("grpc=").rsplit(":", 1)
                self.host, self.port = host, int(port)
                # keep reading its log, or a full pipe would block the engine
                threading.Thread(target=self.output.extend, args=(self.proc.stdout,), daemon=True).start()
                return
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise RuntimeError("the engine did not start:\n" + "".join(self.output[-20:]))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def deploy(self, backend: str, model: str, jpeg: bytes) -> str:
        workflow_id = f"{model}-{backend}"
        async with EdgeboxClient(self.host, self.port, timeout=DEPLOY_TIMEOUT_S) as client:
            await client.deploy_workflow(pb.WorkflowSpec(workflow_id=workflow_id, plugins=[model], backend=backend,
                                                         min_score=0.5, attach_snapshot=False))
            result = await client.infer(jpeg, workflow_id=workflow_id)  # warm, and check that it finds something
        if f'"label":"{model}"' not in result.json_data:
            raise RuntimeError(f"{workflow_id} found no {model} in the photo: {result.json_data}")
        return workflow_id


def measure_grpc(engine: Engine, workflow_id: str, jpeg: bytes, batch: int, single: bool, warmup: float,
                 duration: float, burst_s: float) -> Measurement:
    async def main() -> Measurement:
        samples = Samples()
        measuring = False
        async with EdgeboxClient(engine.host, engine.port, timeout=120) as client:

            async def caller(call: Callable[[], Awaitable[int]]) -> None:
                while True:
                    started = time.perf_counter()
                    frames = await call()
                    if measuring:
                        samples.add(started, frames)

            async def one() -> int:
                await client.infer(jpeg, workflow_id=workflow_id)
                return 1

            async def many() -> int:
                items = await client.infer_batch([jpeg] * batch, workflow_id=workflow_id)
                failed = [i.error_message for i in items if i.error_code]
                if failed:
                    raise RuntimeError(f"InferBatch failed: {failed[0]}")
                return len(items)

            tasks = [asyncio.create_task(caller(one if single else many)) for _ in range(2 * batch if single else 2)]
            await asyncio.sleep(warmup)
            measuring = True
            since, cpu, client_cpu = time.perf_counter(), cpu_seconds(engine.proc.pid), cpu_seconds()
            while not _enough(samples, since, duration, batch):
                await asyncio.sleep(0.05)
            measuring = False
            samples.cpu_s = cpu_seconds(engine.proc.pid) - cpu
            samples.client_cpu_s = cpu_seconds() - client_cpu
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        return summarize(samples, burst_s)

    return asyncio.run(main())


# -- the run ---------------------------------------------------------------------------------------------------
@dataclass
class Row:
    backend: str
    model: str
    batch: int
    rounds: list[dict[str, Measurement]]  # one dict per --repeat, measured one mode right after the other

    @property
    def results(self) -> dict[str, Measurement]:
        """Per mode, the round with the median frames/s."""
        return {m: sorted((r[m] for r in self.rounds), key=lambda x: x.fps)[len(self.rounds) // 2] for m in MODES}

    def ratio(self, mode: str) -> float:
        """Median over rounds of (mode frames/s / raw frames/s of the same round)."""
        return statistics.median(r[mode].fps / r["raw"].fps for r in self.rounds)


def measure_cell(args: argparse.Namespace, engine: Engine, workflow: str, model: LoadedModel, tensor: np.ndarray,
                 jpeg: bytes, batch: int) -> dict[str, Measurement]:
    """One round of the four modes on one (backend, model, batch), back to back."""
    w, d = args.warmup, args.duration
    raw_before = measure_raw(model, tensor, batch, w, d)
    burst = 0.3 * raw_before.p50_ms / 1000  # a fraction of one batch's compute time
    results = {
        "sched": measure_scheduler(model, tensor, batch, w, d, burst),
        "grpc-b": measure_grpc(engine, workflow, jpeg, batch, False, w, d, burst),
        "grpc-1": measure_grpc(engine, workflow, jpeg, batch, True, w, d, burst),
    }
    raw_after = raw_before if args.quick else measure_raw(model, tensor, batch, w, d)
    results["raw"] = _mean(raw_before, raw_after)
    return results


def run(args: argparse.Namespace) -> list[Row]:
    registry = load_plugins([builtin_plugin_dir()])
    usable = detect_hardware().usable_backends()
    backends = [b for b in args.backends if b in usable]
    skipped = [b for b in args.backends if b not in usable]
    if skipped:
        print(f"# not usable here, skipped: {', '.join(skipped)}", flush=True)
    jpeg = cv2.imencode(".jpg", cv2.imread(str(PHOTO)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    tensors = {m: registry.get(m).preprocess(image, {})[0] for m in args.models}
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="edgebox-bench-") as tmp:
        for executions, precision in itertools.product(args.cpu_executions, args.openvino_precisions):
            # The precision only changes OpenVINO: the other backends are measured with the first one alone.
            measured = [b for b in backends if b.startswith("openvino") or precision == args.openvino_precisions[0]]
            if not measured:
                continue
            # TensorRT needs an engine folder and its largest batch size up front; the other backends ignore both.
            # Raw runs as many batches at once as the engine will (engine.cpu_executions, the same value).
            options = LoadOptions(max_batch_size=max(args.batches), cache_dir=Path(tmp) / "raw-engines",
                                  cpu_executions=executions or cpu_executions(EngineConfig()),
                                  openvino_precision=precision)
            loaded = {(b, m): BACKEND_LOADERS[b](registry.get(m).model, options)
                      for b in measured for m in args.models}
            for batch in args.batches:
                engine = Engine(batch, Path(tmp), executions, precision)
                try:
                    workflows = {(b, m): asyncio.run(engine.deploy(b, m, jpeg)) for b in measured for m in args.models}
                    for backend in measured:
                        for name in args.models:
                            model = loaded[(backend, name)]
                            label = f"{backend} x{model.parallel}" if backend.endswith("-cpu") else backend
                            if backend.startswith("openvino") and model.precision:
                                label += f" {model.precision}"
                            row = Row(label, name, batch, [
                                measure_cell(args, engine, workflows[(backend, name)], model, tensors[name], jpeg,
                                             batch) for _ in range(args.repeat)])
                            rows.append(row)
                            print(f"# {label} {name} batch {batch}: raw {row.results['raw'].fps:.1f} fps, "
                                  + ", ".join(f"{m} {row.ratio(m):.2f}" for m in MODES[1:]), flush=True)
                finally:
                    engine.stop()
    return rows


def _mean(a: Measurement, b: Measurement) -> Measurement:
    return Measurement((a.fps + b.fps) / 2, (a.p50_ms + b.p50_ms) / 2, max(a.p99_ms, b.p99_ms), a.calls + b.calls,
                       (a.cpu_ms + b.cpu_ms) / 2)


def table(rows: list[Row]) -> str:
    head = ("| backend | model | batch | raw fps | sched fps (/raw) | gRPC batch fps (/raw) | gRPC single fps (/raw) "
            "| CPU ms/frame raw / sched / gRPC b+client / gRPC 1+client | p50/p99 ms raw | sched | gRPC batch | gRPC single |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        res = r.results
        cells = " | ".join(f"{res[m].fps:.1f} ({r.ratio(m):.2f})" for m in MODES[1:])
        cpu = " / ".join(f"{res[m].cpu_ms:.0f}" + (f"+{res[m].client_cpu_ms:.0f}" if m.startswith("grpc") else "")
                         for m in MODES)
        lat = " | ".join(f"{res[m].p50_ms:.0f}/{res[m].p99_ms:.0f}" for m in MODES)
        lines.append(f"| {r.backend} | {r.model} | {r.batch} | {res['raw'].fps:.1f} | {cells} | {cpu} | {lat} |")
    return "\n".join(lines)


def best(rows: list[Row]) -> str:
    lines = ["| backend | model | best sched/raw (batch) | best gRPC batch/raw (batch) | best gRPC single/raw (batch) |",
             "|---|---|---|---|---|"]
    for key in dict.fromkeys((r.backend, r.model) for r in rows):
        mine = [r for r in rows if (r.backend, r.model) == key]
        cells = []
        for mode in MODES[1:]:
            top = max(mine, key=lambda r: r.results[mode].fps)  # the best batch size is the fastest one
            cells.append(f"{top.ratio(mode):.2f} ({top.batch})")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> str:
    import onnxruntime
    import openvino

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu_name()}, {cores} cores available ({os.cpu_count()} online), load average {load}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
            f"OpenVINO {openvino.__version__.split('-')[0]}, {datetime.date.today().isoformat()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 4, short windows (under a minute)")
    parser.add_argument("--batches", default="", help="comma-separated batch sizes (default 1,2,4,8)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--duration", type=float, default=0.0, help="seconds measured per cell (default 2, quick 0.8)")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds before measuring (default 0.4, quick 0.3)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds per cell; ratios are the median of per-round ratios (for noisy machines)")
    parser.add_argument("--cpu-executions", default="0",
                        help="comma-separated engine.cpu_executions values, each measured in turn (raw alike); "
                             "0 = the engine's default")
    parser.add_argument("--openvino-precisions", default="auto",
                        help="comma-separated engine.openvino_precision values (auto, f32), each measured in turn")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    args.batches = [int(b) for b in (args.batches or ("1,4" if args.quick else "1,2,4,8")).split(",")]
    args.backends = args.backends.split(",")
    args.models = args.models.split(",")
    args.cpu_executions = [int(v) for v in args.cpu_executions.split(",")]
    args.openvino_precisions = args.openvino_precisions.split(",")
    args.duration = args.duration or (0.8 if args.quick else 2.0)
    args.warmup = args.warmup or (0.3 if args.quick else 0.4)
    started = time.monotonic()
    print(f"# {machine()}", flush=True)
    rows = run(args)
    print()
    print(f"Command: `.venv/bin/python bench/inference.py {' '.join(sys.argv[1:])}`".replace("  `", " `"))
    print(f"Machine: {machine()}; run took {time.monotonic() - started:.0f} s")
    print()
    print(table(rows))
    print()
    print(best(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
