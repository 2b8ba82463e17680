"""The camera decoding process: `edgebox _decode-cameras --fd N`, started by the engine, never by people.

It runs the engine's own `OpenCvSource` for every camera the engine opens here, each with its reader thread, and
sends the sampled frames back over the socket it was given (edgebox/cameras/decoder_wire.py). It exists for
engine.camera_decoding "process": FFmpeg parses what cameras send, and a crash in it then ends this process, not
the engine, which reopens the cameras in a new one; and it runs at a lower priority (`--nice`) than the engine's
own threads, which is safe only because its threads never hold the engine's GIL (docs/architecture.md, "Decoding
in a process of its own").

Messages from the engine: `open` (key, url, options) and `close` (key). To the engine: `hello` (pid), `opened`,
a frame (binary header + pixels) for every sampled frame, `failed` (the StreamFailure), `closed`, and every TICK_S
a `tick` with the arrival counts of the cameras that received frames and the decode work done since the last one.
Frames are sent as they are sampled: when the engine reads slower than they come, the socket fills, the sends
wait, and the reader threads wait with them, as they waited for trio in the engine.

The process ends when its socket reaches its end: the engine closed it, or the engine died, even by SIGKILL, and
the kernel closed it. (PR_SET_PDEATHSIG would not do: it fires when the thread that started the process ends, and
trio starts processes from a worker thread that ends after 10 s idle.)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from edgebox.cameras import decode_meter
from edgebox.cameras.decoder_wire import MessageChannel
from edgebox.cameras.opencv_source import OpenCvSource
from edgebox.cameras.options import CameraOptions
from edgebox.cameras.sampling import Sampler
from edgebox.cameras.state import StreamError, StreamFailure, StreamStalled
from edgebox.cli import DECODER_COMMAND, setup_logging
from edgebox.memory import fix_malloc_thresholds, give_back_freed_memory, limit_malloc_arenas
from edgebox.os_thread_name import set_os_thread_name

log = logging.getLogger("edgebox.decoder")

PROCESS_NAME = "edgebox-decode"
TICK_S = 0.25  # how stale the engine's view of a camera's arrivals may get between sampled frames


def options_to_wire(options: CameraOptions) -> dict[str, Any]:
    """What the decoding process needs of a camera's options (ROI, back-off and admission stay in the engine)."""
    return {"fps": options.fps, "transport": options.transport, "watchdog_s": options.watchdog_s,
            "open_timeout_s": options.open_timeout_s}


def options_from_wire(data: dict[str, Any]) -> CameraOptions:
    return CameraOptions(fps=float(data["fps"]), transport=str(data["transport"]),
                         watchdog_s=float(data["watchdog_s"]), open_timeout_s=float(data["open_timeout_s"]))


@dataclass
class _Camera:
    sampler: Sampler
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    reported_arrivals: int = 0


class DecoderChild:
    """Serves one engine over `channel` until the engine closes it."""

    def __init__(self, channel: MessageChannel) -> None:
        self._channel = channel
        self._cameras: dict[int, _Camera] = {}
        self._reported_meter = decode_meter.totals()
        self._trim_lock = trio.Lock()

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._tick)
            await self._channel.send({"op": "hello", "pid": os.getpid()})
            while (message := await self._channel.receive()) is not None:
                header, body_len = message
                await self._channel.skip_body(body_len)  # the engine sends no bodies
                self._handle(nursery, header)
            log.debug("the engine closed the connection; stopping %d camera(s)", len(self._cameras))
            nursery.cancel_scope.cancel()

    def _handle(self, nursery: trio.Nursery, header: dict[str, Any]) -> None:
        op, key = header.get("op"), header.get("key")
        if op == "open":
            sampler = Sampler(float(header["options"]["fps"]), float(header["options"]["watchdog_s"]),
                              OpenCvSource.clock)
            camera = self._cameras[key] = _Camera(sampler)
            nursery.start_soon(self._run_camera, key, camera, header["url"], options_from_wire(header["options"]))
        elif op == "close":
            camera = self._cameras.get(key)
            if camera is None:  # it ended on its own and said so; say it again for this close
                nursery.start_soon(self._send_quietly, {"op": "closed", "key": key})
            else:
                camera.scope.cancel()
        else:
            log.error("unknown message from the engine: %r", header)

    async def _run_camera(self, key: int, camera: _Camera, url: str, options: CameraOptions) -> None:
        source = OpenCvSource(url, options)
        try:
            with camera.scope:
                try:
                    await source.open(camera.sampler)
                    await self._channel.send({"op": "opened", "key": key, "s": camera.sampler.snapshot()})
                    while True:
                        frame = await source.read()
                        # The frame's arrival on this process's trio clock, as time.monotonic (shared by the engine).
                        arrived = time.monotonic() - (trio.current_time() - frame.arrived)
                        await self._channel.send_frame(key, frame.image, frame.captured_at, arrived)
                except StreamFailure as failure:
                    await self._channel.send({"op": "failed", "key": key, "error": failure.error.name,
                                              "message": failure.message,
                                              "stalled": isinstance(failure, StreamStalled),
                                              "s": camera.sampler.snapshot()})
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                    raise  # the engine is gone: nothing to tell it
                except Exception as exc:  # this camera's boundary: the engine retries it
                    log.exception("camera source %d raised unexpectedly", key)
                    await self._channel.send({"op": "failed", "key": key, "error": StreamError.OTHER.name,
                                              "message": f"{type(exc).__name__}: {exc}", "stalled": False,
                                              "s": camera.sampler.snapshot()})
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await source.aclose()  # bounded by one read timeout (OpenCvSource)
                del self._cameras[key]
                await self._send_quietly({"op": "closed", "key": key})
                await self._give_back_memory()

    async def _give_back_memory(self) -> None:
        if self._trim_lock.locked():  # one is waiting already: it will free this camera's frames too
            return
        async with self._trim_lock:
            await trio.to_thread.run_sync(give_back_freed_memory)

    async def _tick(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            arrivals = {}
            for key, camera in self._cameras.items():
                if camera.sampler.arrivals != camera.reported_arrivals:
                    camera.reported_arrivals = camera.sampler.arrivals
                    arrivals[str(key)] = camera.sampler.snapshot()
            pixels, cpu_s = decode_meter.totals()
            before_pixels, before_cpu_s = self._reported_meter
            if arrivals or pixels != before_pixels:
                self._reported_meter = (pixels, cpu_s)
                await self._send_quietly({"op": "tick", "s": arrivals,
                                          "meter": [pixels - before_pixels, cpu_s - before_cpu_s]})

    async def _send_quietly(self, header: dict[str, Any]) -> None:
        try:
            await self._channel.send(header)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the engine is gone; serve() ends at its EOF


def decoder_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"edgebox {DECODER_COMMAND}",
                                     description="the engine's camera decoding process (started by the engine)")
    parser.add_argument("--fd", type=int, required=True, help="the connected Unix socket to the engine")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--nice", type=int, default=0, help="nice increment for the whole process")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)  # before any thread starts: they inherit it
    set_os_thread_name(PROCESS_NAME)
    setup_logging(args.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the whole group; the engine decides
    fix_malloc_thresholds()
    limit_malloc_arenas()
    sock = socket.socket(fileno=args.fd)

    async def main() -> None:
        channel = MessageChannel(trio.socket.from_stdlib_socket(sock))
        try:
            await DecoderChild(channel).serve()
        finally:
            channel.close()

    trio.run(main)
    return 0
