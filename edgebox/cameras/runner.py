"""`CameraRunner`: one camera's decode task, a reconnecting state machine around a `FrameSource`.

Owns the states, the back-off and the frame-arrival watchdog (cv2 never reconnects and returns stale frames from a
frozen server). The source counts every frame with this runner's `Sampler` and hands over only the sampled ones,
which the runner numbers and passes to `on_frame`; it does not decode, crop, queue or infer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trio

from edgebox.cameras.options import CameraOptions
from edgebox.cameras.sampling import SampledFrame, Sampler
from edgebox.cameras.sources import FrameSource, open_source
from edgebox.cameras.state import (
    PERMANENT_ERRORS,
    CameraState,
    CameraStatus,
    StreamError,
    StreamFailure,
    StreamStalled,
)
from edgebox.cameras.urls import mask_url

log = logging.getLogger("edgebox.cameras")

INITIAL_BACKOFF_S = 0.5
STABLE_STREAMING_S = 10.0  # streaming this long without a failure resets the back-off to INITIAL_BACKOFF_S
OPEN_GRACE_S = 2.0  # beyond the source's own open + first-read timeouts, before the runner gives up on open()
CLOSE_GRACE_S = 2.0  # beyond one read timeout (= watchdog_s) that aclose() may wait out
ON_FRAME_ERROR_LOG_INTERVAL_S = 10.0

SourceFactory = Callable[[str, CameraOptions], FrameSource]


@dataclass(frozen=True)
class CapturedFrame:
    """A sampled frame: `seq` counts sampled frames from 1 for the runner's lifetime (gaps = pipeline drops)."""

    camera_id: str
    seq: int
    image: np.ndarray  # BGR uint8 (H, W, 3); not cropped to the ROI
    captured_at: float  # wall clock, time.time()
    captured_mono: float  # trio.current_time() at arrival


def backoff_delay(failures: int, cap_s: float) -> float:
    """Wait before the retry that follows `failures` earlier consecutive failures: 0.5, 1, 2, 4 ... capped."""
    return min(INITIAL_BACKOFF_S * 2.0 ** min(failures, 30), cap_s)


class CameraRunner:
    """Runs one camera until cancelled; `status` is a snapshot any task may read.

    `on_frame` runs on this task for every sampled frame: it must be cheap (queue or drop, never wait).
    `on_change` runs on this task after the state or the current error changed (a listing republishes then).
    """

    def __init__(self, camera_id: str, url: str, options: CameraOptions, on_frame: Callable[[CapturedFrame], None],
                 *, source_factory: SourceFactory = open_source, open_gate: trio.CapacityLimiter | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        self.camera_id = camera_id
        self.url = url
        self.options = options
        self._on_frame = on_frame
        self._on_change = on_change
        self._source_factory = source_factory
        # Shared by the cameras of a fleet: opens wait their turn here, before their open timeout starts.
        self._open_gate = open_gate
        self._shown = mask_url(url)
        try:
            since = trio.current_time()
        except RuntimeError:  # built outside trio.run (a script or a sync test); the first state change fixes it
            since = 0.0
        self._status = CameraStatus(since=since)
        self._failures = 0  # consecutive failed attempts; drives the back-off
        self._seq = 0
        self._sampler: Sampler | None = None  # the current attempt's; its counters are live in `status`
        self._on_frame_errors = 0
        self._on_frame_logged_at = -math.inf

    @property
    def status(self) -> CameraStatus:
        status = dataclasses.replace(self._status)
        sampler = self._sampler
        if sampler is not None:
            status.frames_in += sampler.arrivals
            status.last_frame_at = sampler.last_wall or status.last_frame_at
            if status.state is CameraState.STREAMING:
                status.fps_in = sampler.fps_in
        return status

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, stream and reconnect until cancelled; started() fires at once, before the first open."""
        task_status.started()
        self._set_state(CameraState.CONNECTING, f"opening {self._shown}")
        try:
            while True:
                failure = await self._attempt()
                permanent = failure.error in PERMANENT_ERRORS
                cap = self.options.max_backoff_s
                delay = cap if permanent else backoff_delay(self._failures, cap)
                self._failures += 1
                status = self._status
                error_changed = failure.error is not status.error
                status.error, status.last_error, status.fps_in = failure.error, failure.message, 0.0
                self._set_state(CameraState.FAILED if permanent else CameraState.RECONNECTING,
                                f"{failure.error.name}: {failure.message}; retry in {delay:g} s", error_changed)
                await trio.sleep(delay)
                status.reconnects += 1
        finally:
            self._status.fps_in = 0.0

    # ---- one open..failure cycle --------------------------------------------------------------------------
    async def _attempt(self) -> StreamFailure:
        source: FrameSource | None = None
        sampler: Sampler | None = None
        started = trio.current_time()
        try:
            source = self._source_factory(self.url, self.options)
            sampler = Sampler(self.options.fps, self.options.watchdog_s, source.clock)
            self._sampler = sampler
            await self._open(source, sampler)
            await self._stream(source, sampler, started)
        except StreamStalled as failure:
            self._set_state(CameraState.STALLED, failure.message)
            return failure
        except StreamFailure as failure:
            return failure
        except Exception as exc:  # the camera's boundary: a source bug must not take the nursery down
            log.exception("camera %s: source raised unexpectedly", self.camera_id)
            return StreamFailure(StreamError.OTHER, f"{type(exc).__name__}: {exc}")
        finally:
            if source is not None:
                await self._close(source)
            if sampler is not None:
                self._end_attempt(sampler)
        raise AssertionError("_stream returns only by raising")  # pragma: no cover

    def _end_attempt(self, sampler: Sampler) -> None:
        status = self._status
        status.frames_in += sampler.arrivals
        status.last_frame_at = sampler.last_wall or status.last_frame_at
        self._sampler = None
        if sampler.streamed_s() >= STABLE_STREAMING_S:  # it streamed long enough: back off from the start again
            self._failures = 0

    async def _open(self, source: FrameSource, sampler: Sampler) -> None:
        limit = self.options.open_timeout_s + self.options.watchdog_s + OPEN_GRACE_S
        async with self._open_gate or contextlib.nullcontext():
            with trio.move_on_after(limit) as scope:
                await source.open(sampler)
        if scope.cancelled_caught:
            raise StreamFailure(StreamError.TIMEOUT, f"open did not finish within {limit:g} s")

    async def _stream(self, source: FrameSource, sampler: Sampler, started: float) -> None:
        watchdog = self.options.watchdog_s
        first = True
        while True:
            # The source counts arrivals in its own thread; only sampled frames come through read(). The
            # deadline is the watchdog counted from the last arrival, whether or not that frame was sampled.
            with trio.move_on_after(max(0.0, watchdog - sampler.idle_s())) as scope:
                frame = await source.read()
            if scope.cancelled_caught:
                if sampler.idle_s() >= watchdog:
                    raise StreamStalled(f"no new frame for {watchdog:g} s")
                continue
            if frame is None:  # a frame arrived and was not sampled: recompute the deadline
                continue
            if first:
                first = False
                self._status.error = StreamError.NONE
                self._set_state(CameraState.STREAMING, f"{frame.image.shape[1]}x{frame.image.shape[0]}, first "
                                                       f"frame {frame.arrived - started:.2f} s after the open began")
            self._sampled(frame)

    async def _close(self, source: FrameSource) -> None:
        # Shielded so a cancelled runner still releases the capture; time-limited so a stuck read cannot hold
        # the camera (or shutdown) forever. An abandoned capture is freed when its worker thread returns.
        limit = self.options.watchdog_s + CLOSE_GRACE_S
        with trio.CancelScope(shield=True), trio.move_on_after(limit) as scope:
            try:
                await source.aclose()
            except Exception:
                log.exception("camera %s: closing the source failed", self.camera_id)
        if scope.cancelled_caught:
            log.warning("camera %s: closing the source took over %g s; left to finish in its thread",
                        self.camera_id, limit)

    # ---- per sampled frame ---------------------------------------------------------------------------------
    def _sampled(self, sampled: SampledFrame) -> None:
        image = sampled.image
        self._status.resolution = f"{image.shape[1]}x{image.shape[0]}"
        self._seq += 1
        self._status.frames_sampled = self._seq
        self._deliver(CapturedFrame(self.camera_id, self._seq, image, sampled.captured_at, sampled.arrived),
                      trio.current_time())

    def _deliver(self, frame: CapturedFrame, now: float) -> None:
        try:
            self._on_frame(frame)
        except Exception:
            # The consumer's bug is logged, not fatal; rate-limited so a broken consumer cannot flood the log.
            self._on_frame_errors += 1
            if now - self._on_frame_logged_at >= ON_FRAME_ERROR_LOG_INTERVAL_S:
                log.exception("camera %s: on_frame raised (%d time(s) since the last report); frame %d dropped",
                              self.camera_id, self._on_frame_errors, frame.seq)
                self._on_frame_errors, self._on_frame_logged_at = 0, now

    def _set_state(self, state: CameraState, reason: str, force_log: bool = False) -> None:
        status = self._status
        if state is status.state and not force_log:
            log.debug("camera %s: still %s (%s)", self.camera_id, state.name, reason)
            return
        level = logging.WARNING if state in (CameraState.STALLED, CameraState.FAILED) else logging.INFO
        log.log(level, "camera %s: %s -> %s (%s)", self.camera_id, status.state.name, state.name, reason)
        if state is not status.state:
            status.state, status.since = state, trio.current_time()
        if self._on_change is not None:
            self._on_change()
