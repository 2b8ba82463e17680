"""CameraRunner against real sources: gst-rtsp-server in a subprocess, video files written with cv2, demo://.

Real time (no MockClock) with small watchdog/back-off options. Measured figures are printed (run with -s). Tests
that take `source_factory` run with the readers in this process and in the camera decoding process.
RTSP tests skip, with the reason, when Debian's /usr/bin/python3 cannot import gi.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import trio

from edgebox.cameras import (
    CameraOptions,
    CameraRunner,
    CameraState,
    CapturedFrame,
    Sampler,
    StreamError,
    open_source,
    parse_camera_options,
)
from edgebox.cameras.decoder_process import CameraDecoder
from edgebox.cameras.probe import preflight_failure
from tests.support.fixtures import SECURE_PASSWORD, SECURE_USER
from tests.support.rtsp import INSTALL_HINT, RtspServer, free_port, gi_rtsp_available, pattern_mount

_GI_OK, _GI_REASON = gi_rtsp_available()
_SKIP_RTSP = pytest.mark.skipif(
    not _GI_OK, reason=f"real RTSP server unavailable ({_GI_REASON}); install with: {INSTALL_HINT}"
)


def needs_rtsp_server(test):
    """Marks a test `rtsp` (the project marker) and skips it, with the reason, when gi cannot be imported."""
    return pytest.mark.rtsp(_SKIP_RTSP(test))

QUICK = parse_camera_options({"fps": "4", "watchdog_s": "2", "open_timeout_s": "3", "max_backoff_s": "1"})


class Transitions(logging.Handler):
    """Records (trio time, from, to) for every state change the runner logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"camera \S+: (\w+) -> (\w+)", record.getMessage())
        if match:
            self.seen.append((trio.current_time(), *match.groups()))

    def first(self, to: str, after: float = -math.inf) -> float | None:
        return next((t for t, _, state in self.seen if state == to and t >= after), None)


@pytest.fixture
def transitions():
    handler = Transitions()
    logger = logging.getLogger("edgebox.cameras")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture(params=["threads", "process"])
async def source_factory(request, nursery):
    """Each test that takes it runs twice: with the reader threads in this process (engine.camera_decoding
    "threads") and with them in a real decoding process (the default, edgebox/cameras/decoder_process.py)."""
    if request.param == "threads":
        return open_source
    decoder = CameraDecoder("INFO")
    await nursery.start(decoder.run)
    return decoder.open_source


async def wait_for(runner: CameraRunner, *states: CameraState, timeout: float) -> float:
    """Seconds until the runner is in one of `states`; fails the test after `timeout`."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while runner.status.state not in states:
            await trio.sleep(0.02)
        return trio.current_time() - start
    pytest.fail(f"camera not {'/'.join(s.name for s in states)} within {timeout} s: {runner.status}")


@needs_rtsp_server
async def test_ball_stream_reaches_streaming_and_samples_at_fps(rtsp_server: RtspServer, source_factory):
    sampled: list[CapturedFrame] = []
    runner = CameraRunner("ball", rtsp_server.url("/ball"), QUICK, sampled.append, source_factory=source_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        opened = await wait_for(runner, CameraState.STREAMING, timeout=8)
        before_in, before_sampled = runner.status.frames_in, len(sampled)
        await trio.sleep(3)
        status = runner.status
        nursery.cancel_scope.cancel()
    frames_in, frames_sampled = status.frames_in - before_in, len(sampled) - before_sampled
    print(f"\nRTSP open to first frame: {opened:.2f} s; in 3 s: {frames_in} frames in, {frames_sampled} sampled, "
          f"fps_in {status.fps_in:.1f}")
    assert status.resolution == "640x360" and status.error is StreamError.NONE
    assert 20 <= frames_in <= 40  # the server sends 10 fps
    assert 9 <= frames_sampled <= 14  # fps=4 over 3 s
    assert 7 <= status.fps_in <= 13
    assert sampled[0].seq == 1 and sampled[0].image.shape == (360, 640, 3) and sampled[0].image.dtype == np.uint8


@needs_rtsp_server
async def test_killed_server_reconnects_and_streams_again_after_restart(rtsp_server: RtspServer, transitions):
    runner = CameraRunner("ball", rtsp_server.url("/ball"), QUICK, lambda frame: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for(runner, CameraState.STREAMING, timeout=8)
        rtsp_server.kill()
        noticed = await wait_for(runner, CameraState.RECONNECTING, timeout=4)
        assert runner.status.error in (StreamError.SOURCE_ENDED, StreamError.REFUSED)
        await trio.sleep(1.5)  # a few refused retries at the 1 s cap
        assert runner.status.error is StreamError.REFUSED and runner.status.fps_in == 0
        await trio.to_thread.run_sync(rtsp_server.restart)
        recovered = await wait_for(runner, CameraState.STREAMING, timeout=8)
        reconnects = runner.status.reconnects
        nursery.cancel_scope.cancel()
    print(f"\nserver killed: RECONNECTING after {noticed:.2f} s; restarted: STREAMING again {recovered:.2f} s after "
          f"the server was READY ({reconnects} reopen attempts)")
    assert reconnects >= 2


@needs_rtsp_server
async def test_frozen_server_is_stalled_within_the_watchdog_and_no_stale_frame_is_delivered(
        rtsp_server: RtspServer, transitions, source_factory):
    sampled: list[CapturedFrame] = []
    runner = CameraRunner("ball", rtsp_server.url("/ball"), QUICK, sampled.append, source_factory=source_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for(runner, CameraState.STREAMING, timeout=8)
        await trio.sleep(0.5)
        rtsp_server.freeze()
        frozen_at = trio.current_time()
        await wait_for(runner, CameraState.RECONNECTING, timeout=QUICK.watchdog_s + 5)
        stalled_at = transitions.first("STALLED", after=frozen_at)
        closed_at = transitions.first("RECONNECTING", after=frozen_at)
        await trio.sleep(QUICK.open_timeout_s + 3)  # reopen attempts against the frozen server time out
        error_while_frozen = runner.status.error
        late = [f for f in sampled if f.captured_mono > frozen_at + 0.5]  # 0.5 s: frames already in flight
        rtsp_server.thaw()
        thawed_at = trio.current_time()
        await wait_for(runner, CameraState.STREAMING, timeout=12)
        recovered = trio.current_time() - thawed_at
        nursery.cancel_scope.cancel()
    assert stalled_at is not None and closed_at is not None
    print(f"\nserver frozen: STALLED after {stalled_at - frozen_at:.2f} s (watchdog {QUICK.watchdog_s:g} s), source "
          f"closed {closed_at - stalled_at:.2f} s later; error while frozen {error_while_frozen.name}; "
          f"STREAMING {recovered:.2f} s after thaw")
    assert stalled_at - frozen_at <= QUICK.watchdog_s + 0.5
    assert late == []  # cv2 would have handed back the last frame again after its read timeout
    assert error_while_frozen is StreamError.TIMEOUT


@needs_rtsp_server
async def test_unknown_mount_is_failed_not_found(rtsp_server: RtspServer, source_factory):
    runner = CameraRunner("nope", rtsp_server.url("/no-such-mount"), QUICK, lambda frame: None,
                          source_factory=source_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        took = await wait_for(runner, CameraState.FAILED, timeout=5)
        status = runner.status
        nursery.cancel_scope.cancel()
    print(f"\nunknown mount classified in {took:.3f} s: {status.last_error}")
    assert status.error is StreamError.NOT_FOUND and "404" in status.last_error


@needs_rtsp_server
async def test_credentials_missing_or_wrong_are_unauthorized_and_never_shown(rtsp_server: RtspServer, caplog,
                                                                              source_factory):
    caplog.set_level(logging.DEBUG, logger="edgebox.cameras")
    url_bad = rtsp_server.url("/secure", user=SECURE_USER, password="wrong-pass-123")
    results = {}
    async with trio.open_nursery() as nursery:
        for name, url in (("none", rtsp_server.url("/secure")), ("bad", url_bad),
                          ("good", rtsp_server.url("/secure", user=SECURE_USER, password=SECURE_PASSWORD))):
            runner = CameraRunner(name, url, QUICK, lambda frame: None, source_factory=source_factory)
            await nursery.start(runner.run)
            results[name] = runner
        await wait_for(results["none"], CameraState.FAILED, timeout=5)
        await wait_for(results["bad"], CameraState.FAILED, timeout=5)
        await wait_for(results["good"], CameraState.STREAMING, timeout=8)
        nursery.cancel_scope.cancel()
    assert results["none"].status.error is StreamError.UNAUTHORIZED
    assert "needs credentials" in results["none"].status.last_error
    assert results["bad"].status.error is StreamError.UNAUTHORIZED
    assert "rejected" in results["bad"].status.last_error
    assert "wrong-pass-123" not in caplog.text and SECURE_PASSWORD not in caplog.text
    assert "wrong-pass-123" not in results["bad"].status.last_error


async def test_refused_port_is_reconnecting_refused(source_factory):
    runner = CameraRunner("gone", f"rtsp://127.0.0.1:{free_port()}/ball", QUICK, lambda frame: None,
                          source_factory=source_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for(runner, CameraState.RECONNECTING, timeout=5)
        status = runner.status
        nursery.cancel_scope.cancel()
    assert status.error is StreamError.REFUSED and "connection refused" in status.last_error


def own_udp_sockets() -> int:
    """How many UDP sockets this process holds (its fds matched against /proc/net/udp's inodes)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as lines:
            inodes.update(line.split()[9] for line in list(lines)[1:])
    fds = Path("/proc/self/fd")
    links = []
    for fd in fds.iterdir():
        try:
            links.append(fd.readlink().name)
        except OSError:  # closed since the listing
            continue
    return sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)


@needs_rtsp_server
async def test_udp_and_tcp_cameras_open_side_by_side(rtsp_server: RtspServer):
    # UDP needs a different OPENCV_FFMPEG_CAPTURE_OPTIONS at open time; concurrent opens must not mix them up.
    # Each UDP camera receives RTP and RTCP on two sockets of its own, a TCP camera on none, so the count of
    # this process's UDP sockets tells whether each camera got the transport it asked for.
    runners = []
    before = own_udp_sockets()
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for i, transport in enumerate(["udp", "tcp", "udp", "tcp"]):
            options = parse_camera_options({"transport": transport, "watchdog_s": "2", "open_timeout_s": "3"})
            runner = CameraRunner(f"{transport}{i}", rtsp_server.url("/ball"), options, lambda frame: None)
            await nursery.start(runner.run)
            runners.append(runner)
        for runner in runners:
            await wait_for(runner, CameraState.STREAMING, timeout=10)
        all_streaming = trio.current_time() - start
        udp_sockets = own_udp_sockets() - before
        await trio.sleep(1)
        frames = [runner.status.frames_in for runner in runners]
        reconnects = [runner.status.reconnects for runner in runners]
        nursery.cancel_scope.cancel()
    print(f"\n2 UDP + 2 TCP cameras all STREAMING {all_streaming:.2f} s after start; frames {frames}, "
          f"reconnects {reconnects}, UDP sockets {udp_sockets}")
    assert udp_sockets == 2 * 2
    # A reconnect here was the preflight's DESCRIBE racing the shared media's teardown (503); see
    # test_preflight_leaves_shared_media_alone_so_the_open_right_after_it_succeeds.
    assert min(frames) >= 5 and reconnects == [0, 0, 0, 0]


@needs_rtsp_server
async def test_cancelling_a_camera_during_a_hung_open_returns_at_once(rtsp_server: RtspServer):
    rtsp_server.freeze()  # the TCP connect completes in the kernel backlog, DESCRIBE is never answered
    runner = CameraRunner("hung", rtsp_server.url("/ball"), QUICK, lambda frame: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await trio.sleep(0.5)
        assert runner.status.state is CameraState.CONNECTING
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    took = trio.current_time() - cancelled_at
    print(f"\ncancel during a hung open returned in {took:.3f} s")
    assert took < 0.5  # the open's worker thread releases its capture itself when the connect gives up


def write_clip(path: Path, frames: int = 20, fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 120))
    assert writer.isOpened()
    for i in range(frames):
        image = np.zeros((120, 160, 3), np.uint8)
        cv2.putText(image, str(i), (40, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
        writer.write(image)
    writer.release()
    return path


async def test_file_source_plays_at_its_rate_then_ends_and_replays(tmp_path: Path, transitions):
    clip = write_clip(tmp_path / "clip.avi")  # 20 frames at 10 fps = 2 s
    options = CameraOptions(fps=10, watchdog_s=2, open_timeout_s=3, max_backoff_s=1)
    sampled: list[CapturedFrame] = []
    runner = CameraRunner("clip", str(clip), options, sampled.append)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        await nursery.start(runner.run)
        await wait_for(runner, CameraState.RECONNECTING, timeout=6)
        ended = trio.current_time() - start
        status = runner.status
        await wait_for(runner, CameraState.STREAMING, timeout=3)  # played again after the back-off
        nursery.cancel_scope.cancel()
    print(f"\n20-frame 10 fps clip ended after {ended:.2f} s")
    assert status.error is StreamError.SOURCE_ENDED and status.frames_in == 20 and status.resolution == "160x120"
    assert 1.5 <= ended <= 4  # paced at the file's own rate, not decoded as fast as possible
    assert 15 <= len([f for f in sampled if f.captured_mono <= start + ended]) <= 20


@pytest.mark.parametrize(("content", "error"), [(None, StreamError.NOT_FOUND),
                                                (b"this is not a video\n" * 50, StreamError.UNSUPPORTED_CODEC)])
async def test_bad_file_is_failed_with_the_reason(tmp_path: Path, content, error):
    path = tmp_path / "video.mp4"
    if content is not None:
        path.write_bytes(content)
    runner = CameraRunner("file", f"file://{path}", QUICK, lambda frame: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for(runner, CameraState.FAILED, timeout=5)
        status = runner.status
        nursery.cancel_scope.cancel()
    assert status.error is error


async def test_demo_person_yields_moving_frames():
    sampled: list[CapturedFrame] = []
    runner = CameraRunner("demo", "demo://person", CameraOptions(fps=5), sampled.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert runner.status.resolution == "640x360" and 8 <= len(sampled) <= 12
    assert not np.array_equal(sampled[0].image, sampled[-1].image)  # the person moves


async def test_cancel_during_a_read_waits_for_the_capture_release(tmp_path: Path):
    source = open_source(str(write_clip(tmp_path / "c.avi")), QUICK)
    await source.open(Sampler(QUICK.fps, QUICK.watchdog_s, source.clock))
    await source.read()
    with trio.move_on_after(0.01):
        await source.read()  # cancelled while paced or while the worker thread reads
    await source.aclose()
    await source.aclose()  # idempotent
    assert not source._reader.is_alive()  # the reader thread released the capture and ended


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
async def test_reader_thread_is_named_for_the_kernel_so_top_and_perf_tell_it_apart(tmp_path: Path):
    source = open_source(str(write_clip(tmp_path / "c.avi")), QUICK)
    await source.open(Sampler(QUICK.fps, QUICK.watchdog_s, source.clock))
    try:
        await source.read()  # the frame the open read
        await source.read()  # one the reader thread handed over: it has named itself
        comm = Path(f"/proc/self/task/{source._reader.native_id}/comm").read_text().strip()
    finally:
        await source.aclose()
    assert comm == "edgebox-camera"
    assert Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip() != comm


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("edgebox-camera ")]


@needs_rtsp_server
async def test_one_reader_thread_per_camera_none_left_after_reconnect_or_cancel(rtsp_server: RtspServer):
    before = len(reader_threads())
    runners = [CameraRunner(f"c{i}", rtsp_server.url("/ball"), QUICK, lambda frame: None) for i in range(3)]
    async with trio.open_nursery() as nursery:
        for runner in runners:
            await nursery.start(runner.run)
        for runner in runners:
            await wait_for(runner, CameraState.STREAMING, timeout=10)
        streaming = len(reader_threads()) - before
        rtsp_server.kill()
        for runner in runners:
            await wait_for(runner, CameraState.RECONNECTING, timeout=5)
        await trio.sleep(0.2)  # a reader that saw the end reports it, then returns
        while_down = len(reader_threads()) - before
        await trio.to_thread.run_sync(rtsp_server.restart)
        for runner in runners:
            await wait_for(runner, CameraState.STREAMING, timeout=10)
        after_reconnect = len(reader_threads()) - before
        nursery.cancel_scope.cancel()
    assert (streaming, while_down, after_reconnect) == (3, 0, 3)
    assert len(reader_threads()) == before  # cancelling waits for every reader to release its capture


@needs_rtsp_server
async def test_frozen_server_fails_the_open_fast_as_timeout_and_keeps_out_of_opencvs_open_lock(
        rtsp_server_factory, person_image):
    frozen = rtsp_server_factory([pattern_mount("/ball")])
    healthy = rtsp_server_factory([pattern_mount("/ball")])
    frozen.freeze()  # TCP connects complete in the kernel backlog; DESCRIBE is never answered
    slow = parse_camera_options({"watchdog_s": "2", "open_timeout_s": "10", "max_backoff_s": "1"})
    stuck = CameraRunner("frozen", frozen.url("/ball"), slow, lambda frame: None)
    fine = CameraRunner("healthy", healthy.url("/ball"), slow, lambda frame: None)
    async with trio.open_nursery() as nursery:
        await nursery.start(stuck.run)
        # The waits may outlast open_timeout_s so that the assertions below can fail; the margins are not
        # timings, they separate "the 2 s preflight answered" from "cv2's 10 s open held the lock".
        failed_in = await wait_for(stuck, CameraState.RECONNECTING, timeout=15)
        status = stuck.status
        await trio.sleep(0.5)  # the frozen camera keeps retrying, at the 1 s cap
        await nursery.start(fine.run)
        healthy_in = await wait_for(fine, CameraState.STREAMING, timeout=15)
        nursery.cancel_scope.cancel()
        frozen.thaw()
    print(f"\nfrozen server: {status.error.name} after {failed_in:.2f} s ({status.last_error}); a healthy camera "
          f"streamed {healthy_in:.2f} s after it was added while the frozen one kept retrying")
    assert status.error is StreamError.TIMEOUT and "did not answer" in status.last_error
    assert failed_in < slow.open_timeout_s  # the preflight's 2 s, not cv2's open_timeout_s (10 s)
    assert healthy_in < slow.open_timeout_s  # never queued behind a 10 s cv2 open of the frozen server


@needs_rtsp_server
def test_preflight_leaves_shared_media_alone_so_the_open_right_after_it_succeeds(rtsp_server: RtspServer):
    # gst-rtsp-server builds a shared mount's pipeline on DESCRIBE and tears it down when that client leaves; a
    # preflight DESCRIBE made FFmpeg's DESCRIBE right after it meet the teardown (503) in about 3 of 10 opens.
    url = rtsp_server.url("/ball")
    parts = urlsplit(url)
    failed = []
    for attempt in range(10):
        assert preflight_failure(parts, 2.0) is None
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            failed.append(attempt)
        capture.release()
        time.sleep(0.3)  # the teardown after the last client left overlaps the next preflight, as in a reconnect
    assert failed == []
