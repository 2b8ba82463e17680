"""The engine's side of camera decoding in a process of its own (engine.camera_decoding "process"): `CameraDecoder`
owns that process and routes its messages; `ProcessSource` is the `FrameSource` a camera runner drives, one per
open attempt. A crash in FFmpeg then ends that process, not the engine, and the process runs at the nice value of
the model's compute threads (engine.compute_thread_nice): it never runs the engine's Python, so when the cores are
full the engine's trio and gRPC threads get them first, which a reader thread holding the engine's GIL could not
be allowed to do (docs/benchmarks.md, "Decoding in a process of its own").

The process (edgebox/cameras/decoder_child.py) runs `OpenCvSource` for every camera and sends each sampled frame
once, straight into a numpy array here, on the trio thread: the engine keeps no camera reader threads. The
runner's `Sampler` mirrors the process's (its arrival counts come every TICK_S, and with opened and failed), so
the watchdog, the listing and admission control see the same figures as with threads, timed by the same
`time.monotonic`.

The process starts at the first open and again at the first open after it died. If it dies, every camera opened
in it fails with a StreamFailure saying so, and their runners reopen them, as after a network error.
"""

from __future__ import annotations

import itertools
import logging
import signal
import socket
import subprocess
import time
from typing import Any

import numpy as np
import trio

from edgebox.cameras import decode_meter
from edgebox.cameras.decoder_child import options_to_wire
from edgebox.cameras.decoder_wire import FrameHeader, MessageChannel, ProtocolError
from edgebox.cameras.demo_source import DemoSource
from edgebox.cameras.options import CameraOptions
from edgebox.cameras.sampling import SampledFrame, Sampler
from edgebox.cameras.sources import FrameSource
from edgebox.cameras.state import StreamError, StreamFailure, StreamStalled
from edgebox.cameras.urls import mask_url, parse_source_url
from edgebox.cli import DECODER_COMMAND, own_command
from edgebox.metrics import Metrics, process_private_rss_bytes, process_rss_bytes

log = logging.getLogger("edgebox.decoder")

START_TIMEOUT_S = 60.0  # imports (~0.4 s here); the one-file binary may first unpack itself
EXIT_WAIT_S = 2.0  # after the engine closes the socket, before the process is killed
WAITING_FRAMES = 2  # per camera, between the socket and its runner


def decoder_argv(log_level: str, nice: int = 0) -> list[str]:
    """How to start the decoding process: the same program, with its hidden command."""
    return own_command(DECODER_COMMAND, "--log-level", log_level, *(["--nice", str(nice)] if nice else []))


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "is not answering"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Link:
    """One running decoding process and its socket."""

    def __init__(self, process: trio.Process, channel: MessageChannel) -> None:
        self.pid = process.pid
        self.channel = channel
        self.alive = True


class CameraDecoder:
    """Owns the decoding process (started on demand in `run`'s nursery) and the sources opened in it."""

    def __init__(self, log_level: str = "INFO", argv: list[str] | None = None,
                 metrics: Metrics | None = None, nice: int = 0) -> None:
        self._argv = argv or decoder_argv(log_level, nice)
        self._metrics = metrics
        if metrics is not None:
            metrics.decoder_resident_memory.set_function(self.resident_bytes)
        self._nursery: trio.Nursery | None = None
        self._link: _Link | None = None
        self._starting = trio.Lock()
        self._sources: dict[int, ProcessSource] = {}
        self._keys = itertools.count(1)
        self.starts = 0  # processes started so far (a restart after a crash counts)

    @property
    def pid(self) -> int | None:
        """The running decoding process, if any (its memory is the engine's too: edgebox.metrics)."""
        link = self._link
        return link.pid if link is not None and link.alive else None

    def resident_bytes(self) -> int:
        """The decoding process's resident memory; 0 while none runs."""
        pid = self.pid
        return process_rss_bytes(pid) if pid is not None else 0

    def private_resident_bytes(self) -> int:
        """What the decoding process adds to the engine's memory: its resident memory less the pages it shares
        (the libraries the engine maps too); 0 while none runs."""
        pid = self.pid
        return process_private_rss_bytes(pid) if pid is not None else 0

    def open_source(self, url: str, options: CameraOptions) -> FrameSource:
        """The runner's source factory: demo cameras stay on the trio thread, everything else is decoded in the
        process."""
        parsed = parse_source_url(url)
        if parsed.kind == "demo":
            return DemoSource(parsed.target)
        return ProcessSource(self, url, options)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Host the process (when there is one) until cancelled, which ends it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # ---- used by ProcessSource -----------------------------------------------------------------------------
    async def _register(self, source: ProcessSource) -> _Link:
        link = await self._running()
        if not link.alive:  # it died between the start and here: its sources were failed without this one
            raise StreamFailure(StreamError.OTHER, f"the camera decoding process (pid {link.pid}) ended as the "
                                                   "camera opened; the camera reopens in a new one")
        key = next(self._keys)
        source._key, source._link = key, link
        self._sources[key] = source
        return link

    def _unregister(self, source: ProcessSource) -> None:
        self._sources.pop(source._key, None)

    async def _running(self) -> _Link:
        async with self._starting:
            link = self._link
            if link is not None and link.alive:
                return link
            if self._nursery is None:
                raise RuntimeError("CameraDecoder.run() must be started first")
            self._link = await self._nursery.start(self._serve_process)
            return self._link

    async def _serve_process(self, *, task_status: trio.TaskStatus[_Link]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await trio.lowlevel.open_process(
                [*self._argv, "--fd", str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL)
        except OSError as exc:
            ours.close()
            raise StreamFailure(StreamError.OTHER, f"the camera decoding process could not start: {exc}") from None
        finally:
            theirs.close()
        channel = MessageChannel(trio.socket.from_stdlib_socket(ours))
        link = _Link(process, channel)
        self.starts += 1
        if self._metrics is not None:
            self._metrics.decoder_starts.inc()
        how: str | None = "closed the connection"
        try:
            hello = None
            with trio.move_on_after(START_TIMEOUT_S) as waited:
                hello = await channel.receive()
            if hello is None or hello[0].get("op") != "hello":
                how = None  # said by the failure below
                why = (f"did not answer within {START_TIMEOUT_S:g} s" if waited.cancelled_caught
                       else _exit_description(await _reaped(process)))
                raise StreamFailure(StreamError.OTHER, f"the camera decoding process did not start: it {why} "
                                                       "(its log is above)")
            log.info("camera decoding process started (pid %d)", process.pid)
            task_status.started(link)
            await self._route(link)
        except (OSError, ProtocolError, trio.BrokenResourceError) as exc:
            how = f"broke the connection ({type(exc).__name__}: {exc})"
        except trio.Cancelled:
            how = None  # the engine is stopping
            raise
        except (KeyError, TypeError, ValueError) as exc:  # a message without the fields its kind has
            log.exception("camera decoding process (pid %d) sent a message the engine cannot read", process.pid)
            how = f"sent a malformed message ({type(exc).__name__}: {exc})"
        finally:
            link.alive = False
            channel.close()  # the process sees the end of its input and stops its cameras
            with trio.CancelScope(shield=True):
                returncode = await _reaped(process)
            self._fail_sources(link, returncode)
            if how is not None:
                log.warning("camera decoding process (pid %d) %s and %s; its cameras reopen in a new one",
                            process.pid, how, _exit_description(returncode))

    async def _route(self, link: _Link) -> None:
        """Deliver the process's messages to their sources until it closes the connection."""
        channel = link.channel
        while (message := await channel.receive()) is not None:
            header, body_len = message
            if isinstance(header, FrameHeader):
                source = self._sources.get(header.key)
                if source is None or source._link is not link:  # closed here already: not wanted
                    await channel.skip_body(body_len)
                    continue
                image = np.empty((header.height, header.width, header.channels), np.uint8)
                await channel.receive_body(memoryview(image).cast("B"))
                source._frame(image, header.captured_at, header.arrived)
                continue
            await channel.skip_body(body_len)
            if header.get("op") == "tick":
                self._tick(header)
                continue
            source = self._sources.get(header["key"])
            if source is not None and source._link is link:
                source._message(header["op"], header)

    def _tick(self, header: dict[str, Any]) -> None:
        pixels, cpu_s = header["meter"]
        if pixels:
            decode_meter.add(pixels, cpu_s)
        for key, snapshot in header["s"].items():
            source = self._sources.get(int(key))
            if source is not None and source._sampler is not None:
                source._sampler.mirror(snapshot)

    def _fail_sources(self, link: _Link, returncode: int | None) -> None:
        failure = StreamFailure(StreamError.OTHER, f"the camera decoding process (pid {link.pid}) "
                                f"{_exit_description(returncode)}; the camera reopens in a new one")
        for source in [s for s in self._sources.values() if s._link is link]:
            source._gone(failure)
            self._unregister(source)


async def _reaped(process: trio.Process) -> int | None:
    """Wait up to EXIT_WAIT_S for the process to exit, then kill it; its return code."""
    with trio.move_on_after(EXIT_WAIT_S):
        return await process.wait()
    process.kill()
    return await process.wait()


class ProcessSource:
    """One open attempt of one camera, decoded in the engine's decoding process."""

    clock = staticmethod(time.monotonic)  # the process times arrivals with it; it is the same clock here

    def __init__(self, decoder: CameraDecoder, url: str, options: CameraOptions) -> None:
        self._decoder = decoder
        self._url = url
        self._options = options
        self._shown = mask_url(url)
        self._key = -1
        self._link: _Link | None = None
        self._sampler: Sampler | None = None
        # Frames waiting for the runner, which takes each at once unless the trio thread is starved; then the
        # oldest gives way (counted in `dropped`), so that a runner that fell behind gets the newest frame.
        self._send, self._receive = trio.open_memory_channel[tuple[np.ndarray, float, float]](WAITING_FRAMES)
        self.dropped = 0
        self._opened = trio.Event()  # opened, failed or gone
        self._closed = trio.Event()  # the process released the capture (or is gone)
        self._failure: StreamFailure | None = None

    async def open(self, sampler: Sampler) -> None:
        self._sampler = sampler
        link = await self._decoder._register(self)
        if await self._send_to(link, {"op": "open", "key": self._key, "url": self._url,
                                      "options": options_to_wire(self._options)}):
            await self._opened.wait()
        if self._failure is not None:
            raise self._failure

    async def read(self) -> SampledFrame:
        try:
            image, captured_at, arrived = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._failure or StreamFailure(StreamError.OTHER, f"{self._shown}: read after close") from None
        return SampledFrame(image, captured_at, trio.current_time() - (time.monotonic() - arrived))

    async def aclose(self) -> None:
        """Ask the process to release the capture and wait until it has (bounded there by one read timeout)."""
        self._receive.close()
        link = self._link
        if link is None:  # never registered
            return
        if not self._closed.is_set() and link.alive and await self._send_to(link, {"op": "close", "key": self._key}):
            await self._closed.wait()
        self._decoder._unregister(self)

    async def _send_to(self, link: _Link, header: dict[str, Any]) -> bool:
        """Send to the process; False if it is gone, once its serving task has failed this source."""
        try:
            await link.channel.send(header)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self._closed.wait()  # set by CameraDecoder._fail_sources as the serving task winds up
            return False
        return True

    # ---- called by CameraDecoder._route on the trio thread -----------------------------------------------
    def _frame(self, image: np.ndarray, captured_at: float, arrived: float) -> None:
        try:
            self._send.send_nowait((image, captured_at, arrived))
        except trio.WouldBlock:
            self._receive.receive_nowait()
            self.dropped += 1
            log.debug("%s: the runner fell behind; dropped its oldest waiting frame (%d so far)", self._shown,
                      self.dropped)
            self._send.send_nowait((image, captured_at, arrived))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # closing: the frame is not wanted

    def _message(self, op: str | None, header: dict[str, Any]) -> None:
        if "s" in header and self._sampler is not None:
            self._sampler.mirror(header["s"])
        if op == "opened":
            self._opened.set()
        elif op == "failed":
            message = str(header.get("message", ""))
            if header.get("stalled"):
                failure: StreamFailure = StreamStalled(message)
            else:
                failure = StreamFailure(StreamError[header.get("error", "OTHER")], message)
            self._end(failure)
        elif op == "closed":
            self._end(StreamFailure(StreamError.OTHER, f"{self._shown}: closed"))
            self._closed.set()
        else:
            log.error("unknown message from the camera decoding process: %r", header)

    def _gone(self, failure: StreamFailure) -> None:
        self._end(failure)
        self._closed.set()

    def _end(self, failure: StreamFailure) -> None:
        if self._failure is None:
            self._failure = failure
        self._send.close()  # read() gets the frames still queued, then the failure
        self._opened.set()

