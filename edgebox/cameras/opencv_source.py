"""`OpenCvSource`: frames from RTSP, HTTP or a video file through OpenCV's FFmpeg backend.

The open runs in a trio worker thread; then one reader thread per source owns the capture: it `grab()`s every
frame (demux + decode), counts it with the runner's `Sampler`, converts to BGR (`retrieve()`) only the frames the
sampler takes and hands those to trio. Why a stream failed comes from `probe.py`; reconnecting is the runner's job.
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
from edgebox.cameras.probe import preflight_failure, probe_failure
from edgebox.cameras.sampling import SampledFrame, Sampler
from edgebox.cameras.state import StreamError, StreamFailure, StreamStalled
from edgebox.cameras.urls import SourceUrl, mask_url, parse_source_url
from edgebox.os_thread_name import set_os_thread_name

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
# The quick RTSP OPTIONS before each open (probe.preflight_failure) gets at most this long: a server that does
# not answer it fails as TIMEOUT without entering OpenCV's process-wide open lock for open_timeout_s.
PREFLIGHT_TIMEOUT_S = 2.0
# Sampled frames waiting between the reader thread and the runner. Full (the trio thread has not taken the last
# one yet), the reader waits: the stream backs up in the socket and no sampled frame is dropped at this hop.
# The reader waits on a plain semaphore and hands a frame over with one run_sync_soon callback, not with
# trio.from_thread.run, which starts a trio task per frame and makes the reader wait for its result: with 50
# cameras that was a tenth of the trio thread's time with the GIL (docs/benchmarks.md, "The reader's hand-over").
HANDOFF_FRAMES = 1
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

    clock = staticmethod(time.monotonic)  # arrivals are timed in the reader thread

    def __init__(self, url: str, options: CameraOptions, *, parsed: SourceUrl | None = None) -> None:
        self._url = url
        self._parsed = parsed or parse_source_url(url)
        self._options = options
        self._shown = mask_url(url)
        self._cap: cv2.VideoCapture | None = None  # the open thread's, then the reader thread's
        self._is_file = self._parsed.kind == "file"
        self._sampler: Sampler | None = None
        # An open may run for open_timeout_s; aclose() does not wait for it but leaves the release to its thread.
        self._handoff = threading.Lock()
        self._opening = False
        self._closed = False
        self._stop = threading.Event()
        self._send, self._receive = trio.open_memory_channel[tuple[np.ndarray, float, float]](HANDOFF_FRAMES)
        self._room = threading.Semaphore(HANDOFF_FRAMES)  # free places in the channel, taken before a hand-over
        self._reader: threading.Thread | None = None
        self._reader_done = trio.Event()
        self._failure: StreamFailure | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._limiter = trio.CapacityLimiter(1)  # the open's worker thread; not trio's shared default limiter
        self._pixels = 0  # per frame, for decode_meter

    async def open(self, sampler: Sampler) -> None:
        """Open, decode the first frame (sampled), then start the reader thread; raises StreamFailure classified
        by the probe when it cannot."""
        self._sampler = sampler
        self._token = trio.lowlevel.current_trio_token()
        self._opening = True
        fps = await trio.to_thread.run_sync(self._open_sync, abandon_on_cancel=True, limiter=self._limiter)
        # Not cancelled, so _open_sync saw no aclose(): the capture is ours to hand to the reader.
        interval = 0.0
        if self._is_file:
            # A file is played at its own rate, as a camera would deliver it, not as fast as it decodes.
            interval = 1.0 / (fps if math.isfinite(fps) and 0 < fps <= 240 else DEFAULT_FILE_FPS)
        self._reader = threading.Thread(target=self._read_loop, args=(interval,), daemon=True,
                                        name=f"edgebox-camera {self._shown}"[:60])
        self._reader.start()

    async def read(self) -> SampledFrame:
        """The next sampled BGR frame; StreamFailure(SOURCE_ENDED) at end of file or when the server stops."""
        try:
            image, captured_at, arrived = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._failure or StreamFailure(StreamError.OTHER, f"{self._shown}: read after close") from None
        self._room.release()
        # The reader timed the arrival with time.monotonic(); express it on the trio clock.
        return SampledFrame(image, captured_at, trio.current_time() - (time.monotonic() - arrived))

    async def aclose(self) -> None:
        """Stop the reader and wait until it has released the capture (bounded by one read timeout)."""
        self._stop.set()
        self._receive.close()
        self._room.release()  # a reader waiting to hand over a frame wakes, sees the stop and gives up
        with self._handoff:
            self._closed = True
            opening = self._opening
        if opening:  # a cancelled open: its thread releases the capture when the connect returns (see _open_sync)
            return
        if self._reader is None:  # open() failed or never ran: the open thread released what it had
            return
        await self._reader_done.wait()
        # The event is set as the thread's last act; join it so that no thread outlives aclose (microseconds).
        await trio.to_thread.run_sync(self._reader.join)

    # ---- open (a trio worker thread) ----------------------------------------------------------------------
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
        if self._parsed.scheme in ("rtsp", "rtsps"):
            assert self._parsed.parts is not None
            failure = preflight_failure(self._parsed.parts, min(PREFLIGHT_TIMEOUT_S, self._options.open_timeout_s))
            if failure is not None:
                raise failure
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
        assert self._sampler is not None
        self._sampler.opened()
        ok, frame = cap.read()
        if not ok or frame is None:
            self._release_sync()
            if self._is_file:
                raise StreamFailure(StreamError.UNSUPPORTED_CODEC, f"{self._shown}: no decodable video frame")
            raise StreamFailure(StreamError.TIMEOUT, f"{self._shown} opened but sent no frame within "
                                                     f"{self._options.watchdog_s:g} s")
        now = time.monotonic()
        try:
            self._sampler.arrived(now)  # the first frame is always sampled
        except StreamStalled:
            self._release_sync()
            raise
        self._pixels = frame.shape[0] * frame.shape[1]
        self._room.acquire()  # the channel is empty: never waits
        self._send.send_nowait((frame, time.time(), now))
        return float(cap.get(cv2.CAP_PROP_FPS))

    def _check_file(self, path: str) -> None:
        if not os.path.exists(path):
            raise StreamFailure(StreamError.NOT_FOUND, f"no such file: {path}")
        if os.path.isdir(path):
            raise StreamFailure(StreamError.NOT_FOUND, f"{path} is a directory, not a video file")
        if not os.access(path, os.R_OK):
            raise StreamFailure(StreamError.UNAUTHORIZED, f"no permission to read {path}")

    # ---- the reader thread --------------------------------------------------------------------------------
    def _read_loop(self, interval: float) -> None:
        set_os_thread_name("edgebox-camera")
        failure: StreamFailure | None = None
        try:
            self._read_frames(interval)
        except StreamFailure as exc:
            failure = exc
        except Exception as exc:  # noqa: BLE001 - reported to the runner, whose boundary logs and retries
            failure = StreamFailure(StreamError.OTHER, f"{self._shown}: {type(exc).__name__}: {exc}")
        finally:
            self._release_sync()
            self._finished(failure or StreamFailure(StreamError.OTHER, f"{self._shown}: closed"))

    def _read_frames(self, interval: float) -> None:
        cap, sampler = self._cap, self._sampler
        assert cap is not None and sampler is not None
        next_due = time.monotonic() + interval
        while not self._stop.is_set():
            if interval:  # a file: pace it
                delay = next_due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                next_due = max(next_due + interval, time.monotonic())
            cpu = time.thread_time()
            try:
                ok = cap.grab()  # demux and decode; no colour conversion
            except cv2.error as exc:
                raise StreamFailure(StreamError.OTHER, f"{self._shown}: decode error: {exc}") from None
            now = time.monotonic()
            if not ok:
                what = "end of file" if self._is_file else "the server closed the stream or stopped sending"
                raise StreamFailure(StreamError.SOURCE_ENDED, f"{self._shown}: {what}")
            # A grab that returns a watchdog period after the last frame is cv2's read timeout (= watchdog_s)
            # handing back an old frame: arrived() raises StreamStalled for it.
            frame = None
            if sampler.arrived(now):
                ok, frame = cap.retrieve()  # to BGR: only for the frames the pipeline gets
                if not ok or frame is None:
                    raise StreamFailure(StreamError.OTHER, f"{self._shown}: a frame could not be decoded")
                self._pixels = frame.shape[0] * frame.shape[1]
            decode_meter.add(self._pixels, time.thread_time() - cpu)
            if frame is not None and not self._hand_over(frame, sampler.last_wall or time.time(), now):
                return

    def _hand_over(self, frame: np.ndarray, captured_at: float, arrived: float) -> bool:
        """Give a sampled frame to trio, waiting while the one before is still there; False once closed."""
        assert self._token is not None
        self._room.acquire()
        if self._stop.is_set():
            return False
        try:
            self._token.run_sync_soon(self._deliver, (frame, captured_at, arrived))
        except trio.RunFinishedError:
            return False
        return True

    def _deliver(self, item: tuple[np.ndarray, float, float]) -> None:
        """On the trio thread: the frame into the channel, which has room for it (the reader took a place)."""
        try:
            self._send.send_nowait(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # closed meanwhile: the frame is not wanted

    def _finished(self, failure: StreamFailure) -> None:
        def report() -> None:  # on the trio thread
            self._failure = failure
            self._send.close()  # read() gets the frames still queued, then this failure
            self._reader_done.set()

        assert self._token is not None
        try:
            self._token.run_sync_soon(report)
        except trio.RunFinishedError:
            pass  # the program is gone; the capture is released all the same

    def _release_sync(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()
