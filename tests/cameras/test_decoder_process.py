"""Cameras decoded in the engine's decoding process (engine.camera_decoding "process", the default): real RTSP
streams from gst-rtsp-server, the real `edgebox _decode-cameras` child, real signals.

Sampling, failures classified and a frozen server STALLED are checked through the process by the tests of
tests/cameras/test_real_streams.py that take `source_factory`. Here is what only a process has: the engine keeps no
reader thread, a decoding process that dies is replaced, one that cannot start or sends garbage fails the open
with the reason, none outlives the engine, and its ticks keep a rarely sampled camera alive.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from edgebox.cameras import CameraRunner, CameraState, StreamError, parse_camera_options
from edgebox.cameras.decoder_process import CameraDecoder, ProcessSource, decoder_argv
from edgebox.cameras.decoder_wire import FrameHeader, MessageChannel, ProtocolError
from edgebox.metrics import Metrics
from tests.cameras.test_real_streams import QUICK, needs_rtsp_server, wait_for
from tests.support.rtsp import RtspServer


@pytest.fixture
async def decoder(nursery):
    decoder = CameraDecoder("INFO", metrics=Metrics())
    await nursery.start(decoder.run)
    return decoder


def thread_names(pid: int | str) -> list[str]:
    """The kernel's names of a process's threads (what top -H shows)."""
    names = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended while we looked
            pass
    return names


async def start_streaming(nursery: trio.Nursery, decoder: CameraDecoder, server: RtspServer,
                          count: int) -> list[CameraRunner]:
    """`count` cameras on the server's /ball, decoded in `decoder`'s process, once all of them stream."""
    runners = [CameraRunner(f"c{i}", server.url("/ball"), QUICK, lambda frame: None,
                            source_factory=decoder.open_source) for i in range(count)]
    for runner in runners:
        await nursery.start(runner.run)
    for runner in runners:
        await wait_for(runner, CameraState.STREAMING, timeout=10)
    return runners


def process_running(pid: int) -> bool:
    """True unless the process is gone or a zombie (exited, not yet reaped by whoever adopted it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@needs_rtsp_server
async def test_the_engine_keeps_no_reader_thread_and_the_decoding_process_one_per_camera(
        rtsp_server: RtspServer, decoder: CameraDecoder):
    # Sampling, failures and the watchdog through the process: tests/cameras/test_real_streams.py (source_factory).
    async with trio.open_nursery() as nursery:
        await start_streaming(nursery, decoder, rtsp_server, 1)
        engine_threads, decoder_threads = thread_names("self"), thread_names(decoder.pid)
        resident, private = decoder.resident_bytes(), decoder.private_resident_bytes()
        nursery.cancel_scope.cancel()
    print(f"\ndecoding process with one camera: {resident / 1e6:.0f} MB resident, {private / 1e6:.0f} MB its own")
    assert "edgebox-camera" not in engine_threads
    assert decoder_threads.count("edgebox-camera") == 1 and "edgebox-decode" in decoder_threads
    assert resident > 10e6
    # What the engine reports for it (memory_usage_bytes) leaves out the libraries both processes map.
    assert 0 < private < resident


@needs_rtsp_server
async def test_a_killed_decoding_process_is_replaced_and_every_camera_streams_again(
        rtsp_server: RtspServer, decoder: CameraDecoder):
    async with trio.open_nursery() as nursery:
        runners = await start_streaming(nursery, decoder, rtsp_server, 3)
        first = decoder.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # as a segfault in FFmpeg would end it
        for runner in runners:
            await wait_for(runner, CameraState.RECONNECTING, timeout=5)
        reasons = [runner.status.last_error for runner in runners]
        recovered = max([await wait_for(runner, CameraState.STREAMING, timeout=10) for runner in runners])
        second = decoder.pid
        nursery.cancel_scope.cancel()
    print(f"\ndecoding process killed: all 3 cameras STREAMING again within {recovered:.2f} s, in pid {second}")
    assert all(f"decoding process (pid {first}) was killed by SIGKILL" in reason for reason in reasons)
    assert second is not None and second != first and decoder.starts == 2
    assert not process_running(first)


@needs_rtsp_server
async def test_closing_a_camera_releases_its_capture_in_the_process_which_ends_with_the_decoder(
        rtsp_server: RtspServer):
    decoder = CameraDecoder("INFO")
    async with trio.open_nursery() as outer:
        await outer.start(decoder.run)
        async with trio.open_nursery() as cameras:
            await start_streaming(cameras, decoder, rtsp_server, 2)
            pid = decoder.pid
            assert pid is not None
            assert thread_names(pid).count("edgebox-camera") == 2
            cameras.cancel_scope.cancel()  # removes both cameras; their closes wait for the process's answer
        readers_after_close = thread_names(pid).count("edgebox-camera")
        outer.cancel_scope.cancel()
    assert readers_after_close == 0
    assert not process_running(pid)


async def test_a_decoding_process_that_cannot_start_fails_the_open_with_the_reason(nursery):
    exits = "import sys; print('no codecs here', file=sys.stderr); sys.exit(3)"
    broken = CameraDecoder(argv=[sys.executable, "-c", exits])
    await nursery.start(broken.run)
    runner = CameraRunner("c", "rtsp://127.0.0.1:1/x", QUICK, lambda frame: None, source_factory=broken.open_source)
    async with trio.open_nursery() as cameras:
        await cameras.start(runner.run)
        await wait_for(runner, CameraState.RECONNECTING, timeout=10)
        status = runner.status
        cameras.cancel_scope.cancel()
    assert status.error is StreamError.OTHER
    assert "the camera decoding process did not start: it exited with status 3" in status.last_error


async def test_demo_cameras_stay_in_the_engine_and_start_no_process(decoder: CameraDecoder):
    runner = CameraRunner("demo", "demo://person", QUICK, lambda frame: None, source_factory=decoder.open_source)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for(runner, CameraState.STREAMING, timeout=5)
        nursery.cancel_scope.cancel()
    assert decoder.pid is None and decoder.starts == 0
    assert not isinstance(decoder.open_source("demo://person", QUICK), ProcessSource)


def test_the_decoding_process_dies_with_an_engine_killed_outright(tmp_path: Path):
    # The "engine" here is a Python program that starts the process and is then SIGKILLed: nothing of it runs to
    # close the socket; the kernel closes it, and the child must take that end of input as its cue to exit.
    script = tmp_path / "engine.py"
    script.write_text(
        "import sys, trio\n"
        "from edgebox.cameras.decoder_process import CameraDecoder\n"
        "async def main():\n"
        "    decoder = CameraDecoder()\n"
        "    async with trio.open_nursery() as n:\n"
        "        await n.start(decoder.run)\n"
        "        await decoder._running()\n"
        "        print(decoder.pid, flush=True)\n"
        "        await trio.sleep_forever()\n"
        "trio.run(main)\n")
    engine = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        child = int(engine.stdout.readline())
        assert process_running(child)
        engine.kill()
        engine.wait()
        deadline = time.monotonic() + 10
        while process_running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not process_running(child)
    finally:
        engine.kill()


def test_decoder_argv_runs_this_program_with_the_hidden_command():
    argv = decoder_argv("DEBUG")
    assert argv[0] == sys.executable and argv[-3:] == ["_decode-cameras", "--log-level", "DEBUG"]
    assert decoder_argv("INFO", 10)[-2:] == ["--nice", "10"]


async def test_messages_round_trip_a_frame_and_garbage_is_a_protocol_error():
    ours, theirs = socket.socketpair()
    sender = MessageChannel(trio.socket.from_stdlib_socket(ours))
    receiver = MessageChannel(trio.socket.from_stdlib_socket(theirs))
    frame = np.random.default_rng(1).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send_frame, 7, frame, 1234.5, 99.25)
        header, body_len = await receiver.receive()
        got = np.empty((header.height, header.width, header.channels), np.uint8)
        await receiver.receive_body(memoryview(got).cast("B"))
        nursery.start_soon(sender.send, {"op": "closed", "key": 7})
        control, control_body = await receiver.receive()
    assert isinstance(header, FrameHeader) and (header.key, header.captured_at, header.arrived) == (7, 1234.5, 99.25)
    assert body_len == frame.nbytes and np.array_equal(got, frame)
    assert control == {"op": "closed", "key": 7} and control_body == 0
    await trio.socket.from_stdlib_socket(ours.dup()).send(b"\x00\xff\xff\xff\xff\x00\x00\x00\x00")
    with pytest.raises(ProtocolError, match="header"):
        await receiver.receive()
    sender.close()
    receiver.close()


async def test_a_malformed_message_from_the_process_ends_that_process_not_the_engine(nursery, caplog):
    # A stand-in child that says hello and then sends a tick without its fields: the engine must log it, fail the
    # camera with a reason, and end that process; the nursery (the fleet's, in the engine) carries on.
    script = ("import socket, struct, json, sys, time\n"
              "sock = socket.socket(fileno=int(sys.argv[sys.argv.index('--fd') + 1]))\n"
              "def send(h):\n"
              "    b = json.dumps(h).encode(); sock.sendall(struct.pack('<BII', 0, len(b), 0) + b)\n"
              "send({'op': 'hello', 'pid': 0})\n"
              "sock.recv(65536)\n"  # the engine's open
              "send({'op': 'tick'})\n"
              "time.sleep(30)\n")
    decoder = CameraDecoder(argv=[sys.executable, "-c", script])
    await nursery.start(decoder.run)
    runner = CameraRunner("c", "rtsp://127.0.0.1:1/x", QUICK, lambda frame: None, source_factory=decoder.open_source)
    async with trio.open_nursery() as cameras:
        await cameras.start(runner.run)
        await wait_for(runner, CameraState.RECONNECTING, timeout=10)
        status = runner.status
        cameras.cancel_scope.cancel()
    assert status.error is StreamError.OTHER and "the camera decoding process (pid" in status.last_error
    assert "sent a malformed message (KeyError" in caplog.text


async def test_a_runner_that_fell_behind_gets_the_newest_frames_and_the_drops_are_counted():
    source = ProcessSource(CameraDecoder(), "rtsp://127.0.0.1/x", QUICK)
    for value in range(4):  # four frames arrive before the runner reads once
        source._frame(np.full((2, 2, 3), value, np.uint8), 1000.0 + value, time.monotonic())
    got = [int((await source.read()).image[0, 0, 0]) for _ in range(2)]
    assert got == [2, 3] and source.dropped == 2


@needs_rtsp_server
async def test_arrivals_between_rare_samples_reach_the_watchdog_so_a_slow_sampling_camera_is_not_stalled(
        rtsp_server: RtspServer, decoder: CameraDecoder):
    # One sampled frame in 10 s, a 2 s watchdog: only the process's ticks tell the runner that frames still arrive.
    rare = parse_camera_options({"fps": "0.1", "watchdog_s": "2", "open_timeout_s": "3", "max_backoff_s": "1"})
    runner = CameraRunner("rare", rtsp_server.url("/ball"), rare, lambda frame: None,
                          source_factory=decoder.open_source)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        await wait_for(runner, CameraState.STREAMING, timeout=8)
        before = runner.status.frames_in
        await trio.sleep(5)
        status = runner.status
        nursery.cancel_scope.cancel()
    assert status.state is CameraState.STREAMING and status.reconnects == 0
    assert status.frames_in - before >= 40  # 10 fps arrive, counted in the process and mirrored here
    assert status.frames_sampled == 1


async def test_the_decoding_process_runs_at_the_nice_value_it_is_given(nursery):
    # engine.compute_thread_nice: the decoding process never runs the engine's Python, so it yields a core to the
    # engine's trio and gRPC threads the way the model's compute threads do.
    decoder = CameraDecoder(nice=7)
    await nursery.start(decoder.run)
    await decoder._running()
    stat = Path(f"/proc/{decoder.pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    assert int(stat[16]) == min(19, int(own[16]) + 7)  # field 19 of stat: nice
