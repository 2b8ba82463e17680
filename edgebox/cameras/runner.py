"""`CameraRunner`: one camera's decode task, a reconnecting state machine around a `FrameSource`.

Owns the states, the back-off, the frame-arrival watchdog (cv2 never reconnects and returns stale frames from a
frozen server) and fps sampling. It reads every frame the source gives and hands sampled ones to `on_frame`; it
does not crop, queue or infer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trio

from edgebox.cameras.options import CameraOptions
from edgebox.cameras.sources import FrameSource, open_source
from edgebox.cameras.state import PERMANENT_ERRORS, CameraState, CameraStatus, StreamError, StreamFailure
from edgebox.cameras.urls import mask_url

log = logging.getLogger("edgebox.cameras")

INITIAL_BACKOFF_S = 0.5
STABLE_STREAMING_S = 10.0  # streaming this long without a failure resets the back-off to INITIAL_BACKOFF_S
OPEN_GRACE_S = 2.0  # beyond the source's own open + first-read timeouts, before the runner gives up on open()
CLOSE_GRACE_S = 2.0  # beyond one read timeout (= watchdog_s) that aclose() may wait out
FPS_EMA_ALPHA = 0.2  # weight of the newest frame interval in fps_in
STALE_READ_FRACTION = 0.9  # a read this close to watchdog_s that repeats the last frame is a stale frame
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
    """

    def __init__(self, camera_id: str, url: str, options: CameraOptions, on_frame: Callable[[CapturedFrame], None],
                 *, source_factory: SourceFactory = open_source, open_gate: trio.CapacityLimiter | None = None) -> None:
        self.camera_id = camera_id
        self.url = url
        self.options = options
        self._on_frame = on_frame
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
        self._next_sample = -math.inf
        self._interval_ema: float | None = None
        self._last_arrival = 0.0
        self._streaming_since: float | None = None
        self._on_frame_errors = 0
        self._on_frame_logged_at = -math.inf

    @property
    def status(self) -> CameraStatus:
        return dataclasses.replace(self._status)

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
        try:
            source = self._source_factory(self.url, self.options)
            await self._open(source)
            await self._stream(source)
        except StreamFailure as failure:
            return failure
        except Exception as exc:  # the camera's boundary: a source bug must not take the nursery down
            log.exception("camera %s: source raised unexpectedly", self.camera_id)
            return StreamFailure(StreamError.OTHER, f"{type(exc).__name__}: {exc}")
        finally:
            if source is not None:
                await self._close(source)
        raise AssertionError("_stream returns only by raising")  # pragma: no cover

    async def _open(self, source: FrameSource) -> None:
        limit = self.options.open_timeout_s + self.options.watchdog_s + OPEN_GRACE_S
        async with self._open_gate or contextlib.nullcontext():
            with trio.move_on_after(limit) as scope:
                await source.open()
        if scope.cancelled_caught:
            raise StreamFailure(StreamError.TIMEOUT, f"open did not finish within {limit:g} s")

    async def _stream(self, source: FrameSource) -> None:
        watchdog = self.options.watchdog_s
        opened_at = self._last_arrival = trio.current_time()  # the first frame is due within watchdog_s of open
        self._next_sample, self._interval_ema, self._streaming_since = -math.inf, None, None
        previous: np.ndarray | None = None
        while True:
            started = trio.current_time()
            with trio.move_on_at(self._last_arrival + watchdog) as scope:
                image = await source.read()
            now = trio.current_time()
            # cv2 on a frozen server blocks for its read timeout (= watchdog_s) and then returns an old frame.
            # The deadline normally cancels the read first; a result that won the race is still too late.
            if scope.cancelled_caught or now - self._last_arrival >= watchdog:
                self._stall(f"no new frame for {watchdog:g} s")
            if (previous is not None and now - started >= watchdog * STALE_READ_FRACTION
                    and np.array_equal(previous, image)):
                self._stall(f"a read took {now - started:.1f} s and repeated the last frame (frozen server)")
            first = self._streaming_since is None
            if first:
                self._streaming_since = now
                self._status.error = StreamError.NONE
                self._set_state(CameraState.STREAMING,
                                f"{image.shape[1]}x{image.shape[0]}, first frame {now - opened_at:.2f} s after open")
            self._arrived(image, now, first)
            previous = image

    def _stall(self, reason: str) -> None:
        self._set_state(CameraState.STALLED, reason)
        raise StreamFailure(StreamError.TIMEOUT, reason)

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

    # ---- per frame ----------------------------------------------------------------------------------------
    def _arrived(self, image: np.ndarray, now: float, first: bool) -> None:
        status = self._status
        if not first:  # the first frame's wait includes the open, not a frame interval
            interval = now - self._last_arrival
            ema = self._interval_ema
            self._interval_ema = interval if ema is None else ema + FPS_EMA_ALPHA * (interval - ema)
            status.fps_in = 1.0 / self._interval_ema if self._interval_ema > 0 else 0.0
        self._last_arrival = now
        status.frames_in += 1
        status.resolution = f"{image.shape[1]}x{image.shape[0]}"
        status.last_frame_at = time.time()
        if self._failures and now - (self._streaming_since or now) >= STABLE_STREAMING_S:
            self._failures = 0
        # Time-based sampling: take the frame nearest to each ideal sample time (hence half a source interval
        # of slack), at most fps on average, and never catch up in a burst after a slow patch.
        period = 1.0 / self.options.fps
        if now + (self._interval_ema or 0.0) / 2 < self._next_sample:
            return
        base = self._next_sample if math.isfinite(self._next_sample) else now
        self._next_sample = max(base + period, now)
        self._seq += 1
        status.frames_sampled = self._seq
        self._deliver(CapturedFrame(self.camera_id, self._seq, image, status.last_frame_at, now), now)

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
