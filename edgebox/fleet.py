"""The cameras of this node: registration, durable storage, and one supervised task per camera.

Each camera runs its decode task (`cameras.CameraRunner`) and its pipeline in a nursery of its own under the
fleet's nursery. A crash in a camera's code is caught at that boundary, recorded as its last error and
restarted with back-off; it never reaches the other cameras or the fleet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from edgebox.admission import Admission
from edgebox.cameras import (
    CameraOptions,
    CameraRunner,
    CameraState,
    CameraStatus,
    mask_url,
    open_source,
    parse_camera_options,
    validate_source_url,
)
from edgebox.cameras.decoder_process import CameraDecoder
from edgebox.errors import AlreadyExists, CameraNotFound, EdgeboxError, InvalidRequest, ResourceExhausted
from edgebox.limits import MAX_CAMERA_OPTIONS, check_id
from edgebox.memory import give_back_freed_memory
from edgebox.metrics import Metrics, process_rss_bytes
from edgebox.pipeline import CameraPipeline
from edgebox.results import ResultHub
from edgebox.store import CameraRow, Store
from edgebox.workflows.registry import WorkflowRegistry
from edgebox.workflows.runtime import WorkflowRuntime

log = logging.getLogger("edgebox.fleet")

# Stream opens in flight at once, fleet-wide. OpenCV's FFmpeg backend serializes opens behind one process-wide
# mutex (measured: 50 concurrent RTSP opens take as long as 50 sequential ones, and one unanswering server
# delays every other open by its open timeout). Waiting here instead, in trio, keeps the wait out of each
# camera's open timeout and leaves no abandoned open threads queued on that mutex after a timeout.
OPEN_CONCURRENCY = 2
CRASH_BACKOFF_START_S = 1.0
CRASH_BACKOFF_CAP_S = 30.0
STOP_TIMEOUT_S = 10.0


@dataclass(eq=False)
class Camera:
    camera_id: str
    url: str
    workflow_id: str
    config: dict[str, str]
    options: CameraOptions
    runner: CameraRunner
    pipeline: CameraPipeline
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    stopped: trio.Event = field(default_factory=trio.Event)
    crashes: int = 0
    crash_error: str = ""

    @property
    def status(self) -> CameraStatus:
        return self.runner.status

    @property
    def state(self) -> CameraState:
        return self.runner.status.state

    @property
    def last_error(self) -> str:
        return self.crash_error or self.runner.status.last_error or self.pipeline.last_error


class CameraFleet:
    def __init__(self, store: Store, workflows: WorkflowRegistry, hub: ResultHub, metrics: Metrics,
                 max_cameras: int, admission: Admission | None = None,
                 give_back_memory: Callable[[], object] = give_back_freed_memory,
                 decoder: CameraDecoder | None = None) -> None:
        self._store = store
        self._workflows = workflows
        self._hub = hub
        self._metrics = metrics
        self._max_cameras = max_cameras
        self._admission = admission
        # Decodes the cameras in a process of its own (engine.camera_decoding); None: reader threads in this one.
        self.decoder = decoder
        self._cameras: dict[str, Camera] = {}
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._open_gate = trio.CapacityLimiter(OPEN_CONCURRENCY)
        # After a removal glibc still holds that camera's freed frames in its arenas (edgebox.memory); one trim
        # runs at a time, and removals while one waits share it.
        self._give_back_memory = give_back_memory
        self._trim_queued = False
        self._trim_lock = trio.Lock()
        # Bumped on the trio thread whenever a camera is added or removed, or changes state or error; readers on
        # other threads compare it with the revision a published listing was built at (edgebox.camera_listing).
        self.revision = 0

    def __len__(self) -> int:
        return len(self._cameras)

    def cameras(self) -> list[Camera]:
        return [self._cameras[k] for k in sorted(self._cameras)]

    def get(self, camera_id: str) -> Camera:
        camera = self._cameras.get(camera_id)
        if camera is None:
            raise CameraNotFound(f"camera {camera_id!r} is not registered; ListCameras shows the registered ids")
        return camera

    def resident_bytes(self) -> int:
        """Memory the cameras' decoding adds outside this process (the decoding process's own, its libraries
        counted in this process), else 0."""
        return self.decoder.private_resident_bytes() if self.decoder is not None else 0

    def using(self, workflow_id: str) -> list[str]:
        return [c.camera_id for c in self._cameras.values() if c.workflow_id == workflow_id]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the camera tasks: restore the stored cameras, then serve add/remove until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.decoder is not None:
                await nursery.start(self.decoder.run)
            rows = await trio.to_thread.run_sync(self._store.cameras)
            for row in rows:
                try:
                    self._start(self._build(row.camera_id, row.url, row.workflow_id, row.options))
                except Exception as exc:  # noqa: BLE001 - a stored camera that no longer validates is logged
                    log.error("stored camera %s cannot start: %s", row.camera_id, exc)
            log.info("restored %d camera(s)", len(self._cameras))
            task_status.started()
            await trio.sleep_forever()

    def _build(self, camera_id: str, url: str, workflow_id: str, config: Mapping[str, str]) -> Camera:
        options = parse_camera_options(config)
        pipeline = CameraPipeline(camera_id, workflow_id, options.roi, self._workflows.runtime, self._hub,
                                  self._metrics)
        factory = self.decoder.open_source if self.decoder is not None else open_source
        runner = CameraRunner(camera_id, url, options, pipeline.offer, source_factory=factory,
                              open_gate=self._open_gate, on_change=self._changed)
        return Camera(camera_id, url, workflow_id, dict(config), options, runner, pipeline)

    def _changed(self) -> None:
        self.revision += 1

    def _start(self, camera: Camera) -> None:
        assert self._nursery is not None, "CameraFleet.run() must be started first"
        self._cameras[camera.camera_id] = camera
        self._changed()
        self._nursery.start_soon(self._supervise, camera, name=f"camera:{camera.camera_id}")

    async def _supervise(self, camera: Camera) -> None:
        backoff = CRASH_BACKOFF_START_S
        try:
            with camera.scope:
                while True:
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(camera.pipeline.run)
                            nursery.start_soon(camera.runner.run)
                    except Exception as exc:
                        camera.crashes += 1
                        camera.crash_error = f"internal error, restarting in {backoff:g} s: {exc!r}"
                        self._changed()
                        log.exception("camera %s crashed (%d); restarting in %.0f s", camera.camera_id,
                                      camera.crashes, backoff)
                        await trio.sleep(backoff)
                        backoff = min(backoff * 2, CRASH_BACKOFF_CAP_S)
                        camera.crash_error = ""
                        self._changed()
        finally:
            camera.stopped.set()

    async def add(self, camera_id: str, url: str, workflow_id: str, config: Mapping[str, str]) -> Camera:
        if problem := check_id("camera_id", camera_id):
            raise InvalidRequest(problem)
        validate_source_url(url)
        if len(config) > MAX_CAMERA_OPTIONS:
            raise InvalidRequest(f"config has {len(config)} entries; at most {MAX_CAMERA_OPTIONS} are allowed")
        parse_camera_options(config)  # a bad request is INVALID_REQUEST whatever the node's state
        async with self._lock:
            if camera_id in self._cameras:
                raise AlreadyExists(f"camera {camera_id!r} is already registered; RemoveCamera it first to change it")
            self._workflows.get(workflow_id)
            if len(self._cameras) >= self._max_cameras:
                raise ResourceExhausted(f"this node already runs {len(self._cameras)} cameras, its configured "
                                        f"limit (engine.max_cameras); add the camera to another node")
            camera = self._build(camera_id, url, workflow_id, config)
            self._admit(camera)
            await trio.to_thread.run_sync(
                self._store.put_camera, CameraRow(camera_id, url, workflow_id, dict(config)))
            self._start(camera)
            log.info("camera %s added (%s, workflow %s)", camera_id, mask_url(url), workflow_id)
            return camera

    def _admit(self, camera: Camera) -> None:
        """RESOURCE_EXHAUSTED when the camera would overload decoding or inference (see edgebox.admission)."""
        if self._admission is None:
            return
        new = self._admission.load(camera.camera_id, camera.options, None, self._runtime_or_none(camera))
        others = [self._admission.load(c.camera_id, c.options, c.status, self._runtime_or_none(c))
                  for c in self._cameras.values()]
        try:
            budgets = self._admission.check(new, others)
        except ResourceExhausted as exc:
            log.warning("camera %s refused: %s", camera.camera_id, exc.message)
            raise
        log.info("camera %s admitted: %s", camera.camera_id, "; ".join(b.describe() for b in budgets) or "unchecked")

    def _runtime_or_none(self, camera: Camera) -> WorkflowRuntime | None:
        try:
            return self._workflows.runtime(camera.workflow_id)
        except EdgeboxError:  # its workflow failed to load: it runs no model, so it takes no inference budget
            return None

    async def remove(self, camera_id: str) -> None:
        async with self._lock:
            camera = self.get(camera_id)
            camera.scope.cancel()
            with trio.move_on_after(STOP_TIMEOUT_S):
                await camera.stopped.wait()
            await trio.to_thread.run_sync(self._store.delete_camera, camera_id)
            del self._cameras[camera_id]
            self._changed()
            self._hub.forget_source(camera_id)
            self._metrics.forget_camera(camera_id)
            log.info("camera %s removed", camera_id)
            self._queue_memory_trim()

    def _queue_memory_trim(self) -> None:
        if self._trim_queued or self._nursery is None:
            return
        self._trim_queued = True
        self._nursery.start_soon(self._trim_memory, name="memory-trim")

    async def _trim_memory(self) -> None:
        async with self._trim_lock:
            self._trim_queued = False  # a removal from now on frees memory this trim may miss: it queues another
            before = process_rss_bytes()
            await trio.to_thread.run_sync(self._give_back_memory)
            after = process_rss_bytes()
            log.info("after a camera removal, %.0f MB of freed memory went back to the system (resident %.0f -> "
                     "%.0f MB)", max(0, before - after) / 1e6, before / 1e6, after / 1e6)
