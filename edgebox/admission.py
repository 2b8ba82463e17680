"""Admission control for AddCamera: does one more camera fit this node's decode and inference budgets?

Owns the estimate and its explanation. It reads measured figures (decode CPU per pixel from the frame sources,
seconds per frame from the model queues) and changes nothing; the fleet asks it before adding a camera and
refuses with RESOURCE_EXHAUSTED rather than letting every camera degrade.

    decode:    sum over cameras of width x height x source fps  <=  max_load x cores x (pixels/s one core decodes)
    inference: per model queue, sum of sampled fps x seconds per frame  <=  max_load x 1 s per second
               (a queue runs one batch at a time, so 1 s of execution per second is its whole capacity)

A camera counts with what it was measured doing while it streams; before that with its `expected_stream` option
(the operator's 'WIDTHxHEIGHT@FPS') if set, else like the streaming cameras on average, else with ASSUMED_*. A
model queue that has never run is not judged (nothing is measured yet): only decode and engine.max_cameras apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from edgebox.cameras import CameraOptions, CameraState, CameraStatus, decode_meter
from edgebox.engine.hardware import usable_cores
from edgebox.engine.scheduler import ModelQueue
from edgebox.errors import ResourceExhausted
from edgebox.workflows.runtime import WorkflowRuntime

# H.264 decode rate assumed until this process has measured its own: one core of the 2-core AMD EPYC test machine
# decodes 230-340 Mpx/s of the synthetic 640x360 test streams (reading included); real footage costs more.
DEFAULT_DECODE_PIXELS_PER_CORE_S = 200e6
MIN_MEASURED_DECODE_CPU_S = 2.0  # decode CPU seconds measured before the measured rate replaces the default
# A camera not seen streaming yet (new, or not connected) counts like the streaming cameras do on average; while
# none streams, at this size and rate (a typical analytics sub-stream is smaller, a main stream larger).
ASSUMED_WIDTH, ASSUMED_HEIGHT, ASSUMED_SOURCE_FPS = 1280, 720, 15.0


@dataclass(frozen=True)
class CameraLoad:
    """What one camera asks of the node: decoded pixels per second and sampled frames per second."""

    camera_id: str
    pixels_per_s: float
    sampled_fps: float
    queues: tuple[ModelQueue, ...]
    measured: bool  # False: the stream has not been seen, the figures are declared or the ASSUMED_* ones
    declared: bool = False  # not measured yet, the figures are its expected_stream option


@dataclass(frozen=True)
class Budget:
    """One budget's state with and without the new camera, in `unit`s."""

    name: str
    used: float
    need: float
    capacity: float
    unit: str
    basis: str  # how used and need were estimated, for the message

    @property
    def fits(self) -> bool:
        return self.used + self.need <= self.capacity

    def describe(self) -> str:
        return (f"{self.name}: {self.used:.2f} of {self.capacity:.2f} {self.unit} in use, the new camera needs "
                f"{self.need:.2f} more ({self.basis})")


@dataclass(frozen=True)
class AdmissionSettings:
    max_load: float  # fraction of each capacity that cameras may use; 0 disables admission control
    cores: int
    default_decode_rate: float = DEFAULT_DECODE_PIXELS_PER_CORE_S


def decode_rate_per_core(default: float) -> tuple[float, bool]:
    """(decoded pixels per CPU second, measured?) from what this process's sources have decoded so far."""
    pixels, cpu_s = decode_meter.totals()
    if cpu_s >= MIN_MEASURED_DECODE_CPU_S and pixels > 0:
        return pixels / cpu_s, True
    return default, False


def camera_load(camera_id: str, options: CameraOptions, status: CameraStatus | None,
                queues: Sequence[ModelQueue]) -> CameraLoad:
    """A camera's demand: measured while it streams; before that its expected_stream option if it has one, else
    ASSUMED_* (and its fps option)."""
    width, height = _resolution(status.resolution if status else "")
    source_fps = status.fps_in if status is not None and status.state is CameraState.STREAMING else 0.0
    measured = bool(width) and source_fps > 0
    declared = not measured and options.expected_stream is not None
    if declared:
        assert options.expected_stream is not None
        width, height, source_fps = options.expected_stream
    elif not measured:
        width, height, source_fps = ASSUMED_WIDTH, ASSUMED_HEIGHT, ASSUMED_SOURCE_FPS
    sampled = min(options.fps, source_fps) if measured or declared else options.fps
    return CameraLoad(camera_id, width * height * source_fps, sampled, tuple(queues), measured, declared)


def runtime_queues(runtime: WorkflowRuntime, all_queues: Iterable[ModelQueue]) -> list[ModelQueue]:
    """The model queues a workflow's frames go through (one per model plugin)."""
    names = {p.name for p in runtime.plugins if p.model is not None}
    backends = set(runtime.backends)
    return [q for q in all_queues if q.model_name in names and q.model.backend in backends]


def assess(new: CameraLoad, others: Sequence[CameraLoad], settings: AdmissionSettings,
           decode_rate: tuple[float, bool]) -> list[Budget]:
    """Every budget the new camera touches, with the load of `others` and the new camera's need.

    decode_rate is (pixels per second one core decodes, whether it was measured), see decode_rate_per_core.
    """
    rate, rate_measured = decode_rate
    measured = [c.pixels_per_s for c in others if c.measured]
    # A fleet is usually alike: a camera not streaming yet is expected to decode what the streaming ones do.
    typical = sum(measured) / len(measured) if measured else None

    def pixels(c: CameraLoad) -> float:
        return c.pixels_per_s if c.measured or c.declared or typical is None else typical

    need = pixels(new)
    if new.declared:
        expected = "as its expected_stream option declares"
    elif typical is not None:
        expected = "like the streaming cameras"
    else:
        expected = (f"assumed {ASSUMED_WIDTH}x{ASSUMED_HEIGHT} at {ASSUMED_SOURCE_FPS:g} fps until one streams; "
                    "declare it with the expected_stream option")
    budgets = [Budget(
        name="decode", used=sum(pixels(c) for c in others) / rate, need=need / rate,
        capacity=settings.max_load * settings.cores, unit="cores",
        basis=f"{need / 1e6:.1f} Mpx/s ({expected}) at {rate / 1e6:.0f} Mpx/s per core "
              f"({'measured' if rate_measured else 'assumed until measured'}), {settings.cores} cores")]
    for queue in new.queues:
        frame_s = queue.mean_frame_s
        if frame_s is None:
            continue  # never run yet: nothing measured to judge by; the next AddCamera will be
        demand = sum(c.sampled_fps for c in others if queue in c.queues)
        budgets.append(Budget(
            name=f"inference ({queue.model_name} on {queue.model.backend})", used=demand * frame_s,
            need=new.sampled_fps * frame_s, capacity=settings.max_load * queue.parallel,
            unit="s of execution per s",
            basis=f"cameras sample {demand:.1f} frames/s, this one {new.sampled_fps:g}, at "
                  f"{frame_s * 1000:.1f} ms per frame (measured), {queue.parallel} execution(s) at once"))
    return budgets


def check(new: CameraLoad, others: Sequence[CameraLoad], settings: AdmissionSettings,
          decode_rate: tuple[float, bool]) -> list[Budget]:
    """Raise RESOURCE_EXHAUSTED naming the first budget the new camera would exceed; else return the budgets."""
    if settings.max_load <= 0:
        return []
    budgets = assess(new, others, settings, decode_rate)
    for budget in budgets:
        if not budget.fits:
            raise ResourceExhausted(
                f"camera {new.camera_id!r} does not fit this node: {budget.describe()}; the limit is "
                f"{settings.max_load:g} of capacity (engine.admission_max_load). Lower its fps option, remove a "
                "camera, or add it to another node")
    return budgets


class Admission:
    """The fleet's view: builds each camera's load from its status and workflow, then calls `check`."""

    def __init__(self, max_load: float, queues: Callable[[], Iterable[ModelQueue]], cores: int | None = None,
                 default_decode_rate: float = DEFAULT_DECODE_PIXELS_PER_CORE_S) -> None:
        self.settings = AdmissionSettings(max_load, cores or usable_cores(), default_decode_rate)
        self._queues = queues

    def load(self, camera_id: str, options: CameraOptions, status: CameraStatus | None,
             runtime: WorkflowRuntime | None) -> CameraLoad:
        queues = runtime_queues(runtime, self._queues()) if runtime is not None else []
        return camera_load(camera_id, options, status, queues)

    def check(self, new: CameraLoad, others: Sequence[CameraLoad]) -> list[Budget]:
        """RESOURCE_EXHAUSTED if `new` does not fit next to `others`; else the budgets, for the log."""
        return check(new, others, self.settings, decode_rate_per_core(self.settings.default_decode_rate))


def _resolution(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    try:
        return int(width), int(height)
    except ValueError:
        return 0, 0
