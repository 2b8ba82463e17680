"""CameraRunner's state machine on MockClock, driven by a fault-injecting FrameSource at the I/O boundary.

The scripted source fails opens, freezes, ends and repeats stale frames on cue; the runner under test is real, and
so is the sampling (the scripted source is a `PerFrameSource`, as the demo source is).
"""

from __future__ import annotations

import itertools
import logging
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
import trio

from edgebox.cameras import (
    CameraOptions,
    CameraRunner,
    CameraState,
    CameraStatus,
    CapturedFrame,
    PerFrameSource,
    StreamError,
    StreamFailure,
    backoff_delay,
)

CAM = "cam1"
FAST = CameraOptions(fps=5, watchdog_s=2, open_timeout_s=3, max_backoff_s=4)


@dataclass
class Attempt:
    """What one opened source does: fail the open, or stream `frames` frames then do `then`."""

    open_error: StreamError | None = None
    frames: int | None = None  # None: stream forever
    interval: float = 0.1
    then: str = "end"  # "end" | "freeze" | "stale" | "late" | "crash"
    stale_read_s: float = 0.0  # for "stale"/"late": how long each read blocks (cv2's read timeout)
    open_hangs: bool = False


@dataclass
class Script:
    attempts: list[Attempt]
    forever: Attempt = field(default_factory=Attempt)  # used once the list runs out
    open_times: list[float] = field(default_factory=list)
    sources: list[ScriptedSource] = field(default_factory=list)

    def factory(self, url: str, options: CameraOptions) -> ScriptedSource:
        plan = self.attempts.pop(0) if self.attempts else self.forever
        source = ScriptedSource(plan, self)
        self.sources.append(source)
        return source


class ScriptedSource(PerFrameSource):
    def __init__(self, plan: Attempt, script: Script) -> None:
        self.plan, self.script = plan, script
        self.sent = 0
        self.closed = False
        self.last: np.ndarray | None = None

    async def connect(self) -> None:
        self.script.open_times.append(trio.current_time())
        if self.plan.open_hangs:
            await trio.sleep_forever()
        if self.plan.open_error is not None:
            raise StreamFailure(self.plan.open_error, f"scripted {self.plan.open_error.name}")

    async def next_frame(self) -> np.ndarray:
        plan = self.plan
        if plan.frames is not None and self.sent >= plan.frames:
            if plan.then == "freeze":
                await trio.sleep_forever()
            if plan.then == "stale":  # cv2 on a frozen server: blocks for the read timeout, then the same frame
                await trio.sleep(plan.stale_read_s)
                return self.last.copy()
            if plan.then == "late":  # this cv2 build on a frozen server: the read timeout, then an OLD frame,
                with trio.CancelScope(shield=True):  # delivered as the deadline passes (the thread won the race)
                    await trio.sleep(plan.stale_read_s)
                return np.full((36, 64, 3), 255, np.uint8)
            if plan.then == "crash":
                raise RuntimeError("decoder exploded")
            raise StreamFailure(StreamError.SOURCE_ENDED, "scripted end")
        await trio.sleep(plan.interval)
        self.sent += 1
        self.last = np.full((36, 64, 3), self.sent % 256, np.uint8)
        return self.last

    async def aclose(self) -> None:
        self.closed = True


def transitions(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    found = (re.match(rf"camera {CAM}: (\w+) -> (\w+)", r.getMessage()) for r in caplog.records)
    return [m.groups() for m in found if m]


async def run_for(seconds: float, runner: CameraRunner) -> CameraStatus:
    """Run the camera for `seconds`, then cancel it; returns its status just before the cancel."""
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await trio.sleep(seconds)
        status = runner.status
        nursery.cancel_scope.cancel()
    return status


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edgebox.cameras")


def test_backoff_delay_doubles_from_half_a_second_to_the_cap():
    assert [backoff_delay(n, 30) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


async def test_refused_opens_back_off_0_5_1_2_4_then_stay_at_the_cap(autojump_clock):
    script = Script([], forever=Attempt(open_error=StreamError.REFUSED))
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory)
    await run_for(20, runner)
    assert gaps(script.open_times)[:7] == [0.5, 1, 2, 4, 4, 4, 4]
    status = runner.status
    assert status.state is CameraState.RECONNECTING and status.error is StreamError.REFUSED
    assert status.reconnects == len(script.open_times) - 1
    assert all(source.closed for source in script.sources)


async def test_backoff_resets_after_a_stable_streaming_period(autojump_clock):
    refused = Attempt(open_error=StreamError.REFUSED)
    script = Script([refused, refused, refused, Attempt(frames=150), refused, Attempt(frames=10), refused],
                    forever=Attempt(open_error=StreamError.REFUSED))
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory)
    await run_for(40, runner)
    waits = gaps(script.open_times)
    assert waits[:3] == [0.5, 1, 2]  # three refusals
    assert waits[3] == pytest.approx(15.0 + 0.5)  # 15 s stream reset the back-off: retry after 0.5 s
    assert waits[4] == 1  # refused again: 1 s
    assert waits[5] == pytest.approx(1.0 + 2)  # a 1 s stream is not stable: back-off keeps doubling


async def test_watchdog_marks_a_frozen_source_stalled_closes_it_and_reopens(autojump_clock, caplog):
    script = Script([Attempt(frames=10, then="freeze")], forever=Attempt())
    sampled: list[CapturedFrame] = []
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, sampled.append, source_factory=script.factory)
    await run_for(6, runner)
    # 10 frames by t=1.0, frozen; watchdog 2 s -> STALLED at 3.0, closed, reopened 0.5 s later.
    assert script.open_times == [0, pytest.approx(3.5)]
    assert script.sources[0].closed
    assert transitions(caplog)[:4] == [("REGISTERED", "CONNECTING"), ("CONNECTING", "STREAMING"),
                                       ("STREAMING", "STALLED"), ("STALLED", "RECONNECTING")]
    assert transitions(caplog)[4] == ("RECONNECTING", "STREAMING")
    assert runner.status.state is CameraState.STREAMING and runner.status.reconnects == 1


async def test_stale_frame_after_a_read_as_long_as_the_watchdog_is_not_delivered(autojump_clock, caplog):
    # The read returns just before the watchdog deadline, so only the identical-frame check can catch it.
    script = Script([Attempt(frames=10, then="stale", stale_read_s=1.95)],
                    forever=Attempt(open_error=StreamError.REFUSED))
    delivered: list[CapturedFrame] = []
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, delivered.append, source_factory=script.factory)
    await run_for(3.5, runner)
    assert ("STREAMING", "STALLED") in transitions(caplog)
    assert "repeated the last frame" in caplog.text
    assert runner.status.frames_in == 10
    assert all(frame.captured_mono <= 1.0 for frame in delivered)
    assert len(script.open_times) == 2 and script.sources[0].closed


async def test_a_frame_read_at_the_watchdog_deadline_is_not_delivered(autojump_clock, caplog):
    # cv2's read timeout equals watchdog_s, so its old (not always identical) frame comes back right at the
    # deadline: never deliver it.
    script = Script([Attempt(frames=10, then="late", stale_read_s=2.05)],
                    forever=Attempt(open_error=StreamError.REFUSED))
    delivered: list[CapturedFrame] = []
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, delivered.append, source_factory=script.factory)
    await run_for(3.5, runner)
    assert ("STREAMING", "STALLED") in transitions(caplog) and runner.status.frames_in == 10
    assert all(frame.captured_mono <= 1.0 for frame in delivered)


async def test_a_still_scene_repeating_frames_at_normal_rate_keeps_streaming(autojump_clock):
    class StillSource(ScriptedSource):
        async def next_frame(self) -> np.ndarray:
            await trio.sleep(0.1)
            return np.zeros((36, 64, 3), np.uint8)

    runner = CameraRunner(CAM, "x.mp4", FAST, lambda f: None,
                          source_factory=lambda url, options: StillSource(Attempt(), Script([])))
    await run_for(30, runner)
    assert runner.status.state is CameraState.STREAMING and runner.status.reconnects == 0


@pytest.mark.parametrize("error", [StreamError.NOT_FOUND, StreamError.UNAUTHORIZED, StreamError.UNSUPPORTED_CODEC])
async def test_permanent_error_is_failed_and_retried_at_the_cap(autojump_clock, caplog, error):
    script = Script([], forever=Attempt(open_error=error))
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory)
    await run_for(13, runner)
    assert gaps(script.open_times) == [4, 4, 4]
    status = runner.status
    assert status.state is CameraState.FAILED and status.error is error
    assert status.last_error == f"scripted {error.name}" and status.reconnects == 3
    assert transitions(caplog) == [("REGISTERED", "CONNECTING"), ("CONNECTING", "FAILED")]


async def test_permanent_error_then_success_recovers_to_streaming(autojump_clock):
    script = Script([Attempt(open_error=StreamError.NOT_FOUND)], forever=Attempt())
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory)
    await run_for(5, runner)
    status = runner.status
    assert status.state is CameraState.STREAMING and status.error is StreamError.NONE
    assert status.last_error == "scripted NOT_FOUND"  # the last failure stays visible after recovery


async def test_source_end_reconnects_as_transient(autojump_clock, caplog):
    script = Script([Attempt(frames=5)], forever=Attempt())
    runner = CameraRunner(CAM, "clip.mp4", FAST, lambda f: None, source_factory=script.factory)
    await run_for(2, runner)
    assert ("STREAMING", "RECONNECTING") in transitions(caplog)
    assert "SOURCE_ENDED" in caplog.text
    assert script.open_times == [0, pytest.approx(1.0)]  # 5 frames (0.5 s) + 0.5 s back-off


async def test_unexpected_source_exception_is_caught_at_the_camera_boundary(autojump_clock):
    script = Script([Attempt(frames=3, then="crash")], forever=Attempt())
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory)
    await run_for(2, runner)
    status = runner.status
    assert status.state is CameraState.STREAMING and status.reconnects == 1
    assert "RuntimeError: decoder exploded" in status.last_error


async def test_open_that_never_returns_times_out(autojump_clock):
    script = Script([Attempt(open_hangs=True)], forever=Attempt())
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory)
    await run_for(8, runner)
    # open_timeout 3 + first-read allowance (watchdog 2) + 2 s grace = 7 s, then 0.5 s back-off.
    assert script.open_times == [0, pytest.approx(7.5)]
    assert script.sources[0].closed and "open did not finish within 7 s" in runner.status.last_error


@pytest.mark.parametrize(("source_interval", "fps", "expected"), [(0.04, 5, 50), (0.1, 3, 30), (0.5, 5, 20),
                                                                   (0.2, 5, 50)])
async def test_sampling_hands_on_frame_the_configured_rate(autojump_clock, source_interval, fps, expected):
    script = Script([], forever=Attempt(interval=source_interval))
    options = CameraOptions(fps=fps, watchdog_s=2, max_backoff_s=4)
    sampled: list[CapturedFrame] = []
    runner = CameraRunner(CAM, "rtsp://x/y", options, sampled.append, source_factory=script.factory)
    status = await run_for(10.01, runner)
    assert status.frames_in == pytest.approx(10 / source_interval, abs=1)
    assert len(sampled) == pytest.approx(expected, abs=1)
    assert [f.seq for f in sampled] == list(range(1, len(sampled) + 1)) and status.frames_sampled == len(sampled)
    assert status.fps_in == pytest.approx(1 / source_interval, rel=0.01)
    assert status.resolution == "64x36" and status.last_frame_at is not None
    intervals = gaps([f.captured_mono for f in sampled])
    assert min(intervals) >= min(1 / fps, source_interval) - 1e-6 - source_interval / 2


@pytest.mark.parametrize("plan", [Attempt(), Attempt(frames=3, then="freeze"), Attempt(open_hangs=True)],
                         ids=["streaming", "frozen-read", "hung-open"])
async def test_cancellation_closes_the_source(autojump_clock, plan):
    script = Script([plan])
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory)
    await run_for(1.0, runner)
    assert len(script.sources) == 1 and script.sources[0].closed


async def test_cancellation_waits_for_a_slow_close_but_only_up_to_its_limit(autojump_clock, caplog):
    class SlowClose(ScriptedSource):
        async def aclose(self) -> None:
            await trio.sleep(100)  # an in-flight cv2 read that never returns
            self.closed = True

    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None,
                          source_factory=lambda url, options: SlowClose(Attempt(), Script([])))
    start = trio.current_time()
    await run_for(1.0, runner)
    assert trio.current_time() - start == pytest.approx(1.0 + FAST.watchdog_s + 2.0)
    assert "closing the source took over 4 s" in caplog.text


async def test_on_frame_exception_is_logged_and_the_runner_keeps_going(autojump_clock, caplog):
    received: list[int] = []

    def on_frame(frame: CapturedFrame) -> None:
        received.append(frame.seq)
        if frame.seq % 2:
            raise ValueError("pipeline bug")

    script = Script([], forever=Attempt())
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, on_frame, source_factory=script.factory)
    await run_for(30, runner)
    assert runner.status.state is CameraState.STREAMING and runner.status.reconnects == 0
    assert len(received) == pytest.approx(150, abs=1)
    errors = [r for r in caplog.records if "on_frame raised" in r.getMessage()]
    assert 1 <= len(errors) <= 4 and errors[0].exc_info[0] is ValueError  # logged, rate-limited to 1 per 10 s


async def test_start_returns_at_once_and_status_is_a_snapshot(autojump_clock):
    script = Script([Attempt(open_hangs=True)])
    runner = CameraRunner(CAM, "rtsp://u:secret@x/y", FAST, lambda f: None, source_factory=script.factory)
    assert runner.status.state is CameraState.REGISTERED
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        snapshot = runner.status
        assert snapshot.state is CameraState.CONNECTING and snapshot.since == trio.current_time()
        snapshot.frames_in = 99
        assert runner.status.frames_in == 0
        nursery.cancel_scope.cancel()


async def test_on_change_runs_once_per_state_change_and_once_per_new_error_in_the_same_state(autojump_clock, caplog):
    refused, timeout = Attempt(open_error=StreamError.REFUSED), Attempt(open_error=StreamError.TIMEOUT)
    script = Script([refused, refused, timeout], forever=Attempt())
    changes: list[tuple[CameraState, StreamError]] = []
    runner = CameraRunner(CAM, "rtsp://x/y", FAST, lambda f: None, source_factory=script.factory,
                          on_change=lambda: changes.append((runner.status.state, runner.status.error)))
    await run_for(10, runner)
    # The second REFUSED repeats the state and the error: no change to publish. TIMEOUT is a new error.
    assert changes == [(CameraState.CONNECTING, StreamError.NONE),
                       (CameraState.RECONNECTING, StreamError.REFUSED),
                       (CameraState.RECONNECTING, StreamError.TIMEOUT),
                       (CameraState.STREAMING, StreamError.NONE)]
    assert len(changes) == len(transitions(caplog))
