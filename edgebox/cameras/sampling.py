"""Which frames of a stream are sampled, and when a stream counts as stalled: one `Sampler` per open attempt.

A source calls `Sampler.arrived` for every frame it receives, in whatever thread receives it, and decodes and
hands over only the frames it returns True for; the runner reads the counters from the trio thread. It owns no
thread, task or frame. `PerFrameSource` adapts sources that produce every frame on the trio thread (demo, tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trio

from edgebox.cameras.state import StreamStalled

FPS_EMA_ALPHA = 0.2  # weight of the newest frame interval in fps_in
STALE_READ_FRACTION = 0.9  # a read blocked this close to watchdog_s is cv2's read timeout, not a new frame


@dataclass(frozen=True)
class SampledFrame:
    """A frame the sampler took, as a source hands it to the runner."""

    image: np.ndarray  # BGR uint8 (H, W, 3)
    captured_at: float  # wall clock, time.time() at arrival
    arrived: float  # trio.current_time() at arrival


class Sampler:
    """Arrival bookkeeping of one open attempt, timed with `clock` (the clock of the thread that calls arrived).

    Written by one thread (the source's reader), read by the trio thread: every field is a single float or int,
    so a reader sees each one whole, at worst one frame old.
    """

    def __init__(self, fps: float, watchdog_s: float, clock: Callable[[], float]) -> None:
        self.period = 1.0 / fps
        self.watchdog_s = watchdog_s
        self.clock = clock
        self.opened_at = clock()  # the first frame is due within watchdog_s of this; see opened()
        self.arrivals = 0
        self.first_arrival: float | None = None
        self.last_arrival: float | None = None
        self.last_wall: float | None = None  # time.time() of the last arrival
        self._interval_ema: float | None = None
        self._next_sample = -math.inf

    def snapshot(self) -> list[float | int | None]:
        """The arrival bookkeeping as plain values, for a sampler that mirrors this one in another process."""
        return [self.opened_at, self.arrivals, self.first_arrival, self.last_arrival, self.last_wall,
                self._interval_ema]

    def mirror(self, snapshot: list[float | int | None]) -> None:
        """Take over another sampler's bookkeeping (its `snapshot()`); the two clocks must be the same one
        (time.monotonic is shared by every process of the machine)."""
        (self.opened_at, self.arrivals, self.first_arrival, self.last_arrival, self.last_wall,
         self._interval_ema) = snapshot  # type: ignore[assignment]

    def opened(self) -> None:
        """The stream is connected: the watchdog counts from now until the first frame."""
        self.opened_at = self.clock()

    def arrived(self, now: float) -> bool:
        """Count a frame received at clock time `now`; True if it is to be sampled (decoded and handed over).

        Raises StreamStalled for a frame that comes a whole watchdog period after the previous one (or the open):
        that is cv2's read timeout handing back an old frame from a frozen server, never a new frame.
        """
        previous = self.last_arrival
        since = now - (self.opened_at if previous is None else previous)
        if since >= self.watchdog_s:
            raise StreamStalled(f"no new frame for {self.watchdog_s:g} s")
        if previous is not None:  # the first frame's wait includes the open, not a frame interval
            ema = self._interval_ema
            self._interval_ema = since if ema is None else ema + FPS_EMA_ALPHA * (since - ema)
        else:
            self.first_arrival = now
        self.last_arrival = now
        self.last_wall = time.time()
        self.arrivals += 1
        # Time-based sampling: take the frame nearest to each ideal sample time (hence half a source interval
        # of slack), at most fps on average, and never catch up in a burst after a slow patch.
        if now + (self._interval_ema or 0.0) / 2 < self._next_sample:
            return False
        base = self._next_sample if math.isfinite(self._next_sample) else now
        self._next_sample = max(base + self.period, now)
        return True

    @property
    def fps_in(self) -> float:
        """Moving average of the arrival rate (0 before two frames)."""
        ema = self._interval_ema
        return 1.0 / ema if ema else 0.0

    def idle_s(self) -> float:
        """Seconds since the last frame arrived (or since the open, before the first)."""
        last = self.last_arrival
        return self.clock() - (self.opened_at if last is None else last)

    def streamed_s(self) -> float:
        """Seconds from the first frame to the last one of this attempt."""
        if self.first_arrival is None or self.last_arrival is None:
            return 0.0
        return self.last_arrival - self.first_arrival


class PerFrameSource:
    """Base of sources that make every frame on the trio thread: subclasses implement connect(), next_frame()
    and aclose(); this class counts and samples the frames and applies the stale-frame check."""

    clock = staticmethod(trio.current_time)  # arrivals are timed on the trio thread
    _sampler: Sampler | None = None
    _previous: np.ndarray | None = None

    async def connect(self) -> None:
        """Connect; raises StreamFailure saying why not."""
        raise NotImplementedError

    async def next_frame(self) -> np.ndarray:
        """The next frame, BGR uint8; raises StreamFailure."""
        raise NotImplementedError

    async def open(self, sampler: Sampler) -> None:
        """Connect; from then on every frame is counted by `sampler`, and read() returns the ones it takes."""
        await self.connect()
        self._sampler = sampler
        sampler.opened()

    async def read(self) -> SampledFrame | None:
        """The next frame, if the sampler takes it, else None (so that the runner's watchdog deadline moves on
        with every frame); raises StreamFailure (StreamStalled for a stale or late frame)."""
        sampler = self._sampler
        if sampler is None:
            raise RuntimeError("read() before open()")
        started = trio.current_time()
        image = await self.next_frame()
        now = trio.current_time()
        previous, self._previous = self._previous, image
        # cv2 on a frozen server blocks for its read timeout (= watchdog_s) and then repeats the last frame.
        if (previous is not None and now - started >= sampler.watchdog_s * STALE_READ_FRACTION
                and np.array_equal(previous, image)):
            raise StreamStalled(f"a read took {now - started:.1f} s and repeated the last frame (frozen server)")
        if sampler.arrived(now):
            return SampledFrame(image, sampler.last_wall or time.time(), now)
        return None
