"""`OpenCvSource`: frames from RTSP, HTTP or a video file through OpenCV's FFmpeg backend.

Every blocking cv2 call runs in a worker thread under a per-source CapacityLimiter(1), so reads never overlap and
release waits for an in-flight read. Why a stream failed comes from `probe.py`; reconnecting is the runner's job.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator

import cv2
import numpy as np
import trio

from edgebox.cameras import decode_meter
from edgebox.cameras.options import CameraOptions
from edgebox.cameras.probe import probe_failure
from edgebox.cameras.state import StreamError, StreamFailure
from edgebox.cameras.urls import SourceUrl, mask_url, parse_source_url

# OpenCV reads this process-wide variable at every open. The TCP value is set once here, before any open:
# analyzeduration/probesize cut an RTSP open from ~3 s to ~0.35 s (FACTS.md 2). Other values are swapped in by
# `_ENV_GATE.exclusive` while no other open is in flight.
CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
RTSP_TCP_OPTIONS = "rtsp_transport;tcp|analyzeduration;0|probesize;32"
RTSP_UDP_OPTIONS = "rtsp_transport;udp|analyzeduration;0|probesize;32"
FILE_OPTIONS = ""  # FFmpeg's default probing: a 32-byte probe is too little for some containers (MPEG-TS)
DEFAULT_FILE_FPS = 25.0  # pacing when a file does not say its frame rate
# FFmpeg threads per capture. OpenCV's default (one per core) adds that many threads to every camera, and frame
# threading buys nothing for streams read in real time; with 1 the decoding runs in the reading thread, which is
# also what lets decode_meter time it. Measured with 50 cameras at 640x360: 203 -> 53 threads in the process,
# RSS 367 -> 300 MB, CPU unchanged within noise (docs/benchmarks.md, "Cameras").
DECODE_THREADS = 1
os.environ[CAPTURE_OPTIONS_ENV] = RTSP_TCP_OPTIONS


class _EnvGate:
    """A readers-writer gate over the env variable: opens that use the default value run together; an open
    that needs another value waits for them, sets it, opens alone and restores it. Writers go first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, value: str) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            self._cond.wait_for(lambda: not self._writing and not self._readers)
            self._writers_waiting -= 1
            self._writing = True
        os.environ[CAPTURE_OPTIONS_ENV] = value
        try:
            yield
        finally:
            os.environ[CAPTURE_OPTIONS_ENV] = RTSP_TCP_OPTIONS
            with self._cond:
                self._writing = False
                self._cond.notify_all()


_ENV_GATE = _EnvGate()


class OpenCvSource:
    """One capture of one URL: open once, read until it fails, aclose. The runner makes a new one per attempt."""

    def __init__(self, url: str, options: CameraOptions, *, parsed: SourceUrl | None = None) -> None:
        self._url = url
        self._parsed = parsed or parse_source_url(url)
        self._options = options
        self._shown = mask_url(url)
        self._limiter = trio.CapacityLimiter(1)
        self._cap: cv2.VideoCapture | None = None  # touched only in worker threads holding the limiter
        self._first: np.ndarray | None = None  # the frame open() read to prove the stream decodes
        self._is_file = self._parsed.kind == "file"
        # An open may run for open_timeout_s; aclose() does not wait for it but leaves the release to its thread.
        self._handoff = threading.Lock()
        self._opening = False
        self._closed = False
        self._interval = 0.0
        self._next_due = 0.0

    async def open(self) -> None:
        """Open and decode one frame; raises StreamFailure classified by the probe when it cannot."""
        self._opening = True
        fps = await trio.to_thread.run_sync(self._open_sync, abandon_on_cancel=True, limiter=self._limiter)
        if self._is_file:
            # A file is played at its own rate, as a camera would deliver it, not as fast as it decodes.
            self._interval = 1.0 / (fps if math.isfinite(fps) and 0 < fps <= 240 else DEFAULT_FILE_FPS)
            self._next_due = trio.current_time() + self._interval

    async def read(self) -> np.ndarray:
        """The next BGR frame; StreamFailure(SOURCE_ENDED) at end of file or when the server closes the stream."""
        if self._first is not None:
            frame, self._first = self._first, None
            return frame
        if self._is_file:
            await trio.sleep_until(self._next_due)
            self._next_due = max(self._next_due + self._interval, trio.current_time())
        return await trio.to_thread.run_sync(self._read_sync, abandon_on_cancel=True, limiter=self._limiter)

    async def aclose(self) -> None:
        """Release the capture; waits for an in-flight read (bounded by the read timeout) to finish first."""
        self._first = None
        with self._handoff:
            self._closed = True
            opening = self._opening
        if opening:  # a cancelled open: its thread releases the capture when the connect returns (see _open_sync)
            return
        await trio.to_thread.run_sync(self._release_sync, limiter=self._limiter)

    # ---- worker-thread side -------------------------------------------------------------------------------
    def _open_sync(self) -> float:
        try:
            return self._open_capture()
        finally:
            with self._handoff:
                self._opening = False
                closed = self._closed
            if closed:
                self._release_sync()

    def _open_capture(self) -> float:
        started = time.monotonic()
        if self._is_file:
            self._check_file(self._parsed.target)
            gate = _ENV_GATE.exclusive(FILE_OPTIONS)
        elif self._parsed.scheme == "rtsp" and self._options.transport == "udp":
            gate = _ENV_GATE.exclusive(RTSP_UDP_OPTIONS)
        else:  # rtsps is TCP-only (TLS); http ignores the rtsp_* options
            gate = _ENV_GATE.shared()
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self._options.open_timeout_s * 1000),
            # A frozen server makes read() block this long and then return a stale frame; the runner's
            # watchdog uses the same figure, so a stuck read ends about when the watchdog gives up on it.
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self._options.watchdog_s * 1000),
            cv2.CAP_PROP_N_THREADS, DECODE_THREADS,
        ]
        with gate:
            cap = cv2.VideoCapture(self._parsed.target, cv2.CAP_FFMPEG, params)
        self._cap = cap
        if not cap.isOpened():
            self._release_sync()
            if self._is_file:
                raise StreamFailure(StreamError.UNSUPPORTED_CODEC,
                                    f"{self._shown}: FFmpeg cannot open this file as video (unknown container?)")
            assert self._parsed.parts is not None
            # The probe gets what is left of the open timeout (at least 1 s): a dead host costs one timeout, not two.
            left = self._options.open_timeout_s - (time.monotonic() - started)
            raise probe_failure(self._parsed.parts, max(1.0, left))
        ok, frame = cap.read()
        if not ok or frame is None:
            self._release_sync()
            if self._is_file:
                raise StreamFailure(StreamError.UNSUPPORTED_CODEC, f"{self._shown}: no decodable video frame")
            raise StreamFailure(StreamError.TIMEOUT, f"{self._shown} opened but sent no frame within "
                                                     f"{self._options.watchdog_s:g} s")
        self._first = frame
        return float(cap.get(cv2.CAP_PROP_FPS))

    def _check_file(self, path: str) -> None:
        if not os.path.exists(path):
            raise StreamFailure(StreamError.NOT_FOUND, f"no such file: {path}")
        if os.path.isdir(path):
            raise StreamFailure(StreamError.NOT_FOUND, f"{path} is a directory, not a video file")
        if not os.access(path, os.R_OK):
            raise StreamFailure(StreamError.UNAUTHORIZED, f"no permission to read {path}")

    def _read_sync(self) -> np.ndarray:
        cap = self._cap
        if cap is None:
            raise StreamFailure(StreamError.OTHER, f"{self._shown}: read after close")
        started = time.thread_time()
        try:
            ok, frame = cap.read()
        except cv2.error as exc:
            raise StreamFailure(StreamError.OTHER, f"{self._shown}: decode error: {exc}") from None
        if not ok or frame is None:
            what = "end of file" if self._is_file else "the server closed the stream or stopped sending"
            raise StreamFailure(StreamError.SOURCE_ENDED, f"{self._shown}: {what}")
        decode_meter.add(frame.shape[0] * frame.shape[1], time.thread_time() - started)
        return frame

    def _release_sync(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
