"""The messages between the engine and its camera decoding process, over one Unix stream socket.

Each message is a 9-byte prefix (its kind, then the lengths of its header and of its body, little-endian), the
header and the body. Control messages have a JSON object for a header and no body. A frame, the one message sent
hundreds of times a second, has a fixed binary header (`FrameHeader`: camera key, shape, capture and arrival
times) and the BGR pixels for a body, which the engine receives straight into the numpy array the pipeline will
use. `MessageChannel` reads and writes them on a trio socket; it knows nothing of what they mean
(edgebox/cameras/decoder_process.py and decoder_child.py do).
"""

from __future__ import annotations

import json
import struct
from typing import Any, NamedTuple

import numpy as np
import trio

PREFIX = struct.Struct("<BII")  # kind, header length, body length
KIND_JSON, KIND_FRAME = 0, 1
FRAME = struct.Struct("<IIIIdd")  # key, height, width, channels, captured_at (time.time), arrived (time.monotonic)
MAX_HEADER_BYTES = 1 << 20  # a header is a few hundred bytes; more means the stream is out of step
MAX_BODY_BYTES = 16384 * 16384 * 3  # the largest frame a camera may send (EXPECTED_SIDE_RANGE squared, BGR)
# What one read takes ahead of a header: enough for the headers of a burst of small messages, small enough that
# the start of a frame's pixels it catches costs nothing to copy; the rest of a frame is read straight into place.
READ_CHUNK = 4096
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024  # a 640x360 frame (691 KB) fits whole: one wake-up per frame, not four


class ProtocolError(Exception):
    """The other side sent something that is not a message: a bug, or a process that is not ours."""


class FrameHeader(NamedTuple):
    key: int
    height: int
    width: int
    channels: int
    captured_at: float
    arrived: float


class MessageChannel:
    """Whole messages over a connected trio socket. One task receives; senders take turns behind a lock."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._send_lock = trio.Lock()
        for option in (trio.socket.SO_SNDBUF, trio.socket.SO_RCVBUF):
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
            except OSError:  # a smaller buffer only costs wake-ups
                pass

    async def send(self, header: dict[str, Any]) -> None:
        """Send one control message; raises OSError (or trio.BrokenResourceError) once the other side is gone."""
        encoded = json.dumps(header, separators=(",", ":")).encode()
        async with self._send_lock:
            await self._send_all(memoryview(PREFIX.pack(KIND_JSON, len(encoded), 0) + encoded))

    async def send_frame(self, key: int, image: np.ndarray, captured_at: float, arrived: float) -> None:
        """Send one frame (BGR uint8, height x width x channels); raises like send()."""
        height, width, channels = image.shape
        body = memoryview(np.ascontiguousarray(image)).cast("B")
        head = FRAME.pack(key, height, width, channels, captured_at, arrived)
        async with self._send_lock:
            await self._send_all(memoryview(PREFIX.pack(KIND_FRAME, len(head), len(body)) + head))
            await self._send_all(body)

    async def _send_all(self, view: memoryview) -> None:
        while view:
            sent = await self._sock.send(view)
            view = view[sent:]

    async def receive(self) -> tuple[dict[str, Any] | FrameHeader, int] | None:
        """The next message's header (a dict, or a FrameHeader for a frame) and the length of its body, which the
        caller must then take with `receive_body` or `skip_body`; None at the end of the stream."""
        if not await self._fill(PREFIX.size):
            if self._buffer:
                raise ProtocolError(f"the stream ended inside a message prefix ({len(self._buffer)} bytes)")
            return None
        kind, header_len, body_len = PREFIX.unpack_from(self._buffer)
        if kind not in (KIND_JSON, KIND_FRAME) or header_len > MAX_HEADER_BYTES or body_len > MAX_BODY_BYTES:
            raise ProtocolError(f"a message of kind {kind} announced a {header_len}-byte header and a "
                                f"{body_len}-byte body")
        if not await self._fill(PREFIX.size + header_len):
            raise ProtocolError("the stream ended inside a message header")
        raw = bytes(self._buffer[PREFIX.size:PREFIX.size + header_len])
        del self._buffer[:PREFIX.size + header_len]
        if kind == KIND_FRAME:
            if header_len != FRAME.size:
                raise ProtocolError(f"a frame header of {header_len} bytes, not {FRAME.size}")
            frame = FrameHeader(*FRAME.unpack(raw))
            if frame.height * frame.width * frame.channels != body_len:
                raise ProtocolError(f"a {frame.height}x{frame.width}x{frame.channels} frame came with {body_len} "
                                    "bytes")
            return frame, body_len
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ProtocolError(f"a message header is a {type(header).__name__}, not an object")
        return header, body_len

    async def receive_body(self, into: memoryview) -> None:
        """Fill `into` (exactly the announced body length) with the body: what is buffered, then straight from
        the socket into it."""
        have = min(len(self._buffer), len(into))
        into[:have] = self._buffer[:have]
        del self._buffer[:have]
        view = into[have:]
        while view:
            got = await self._sock.recv_into(view)
            if not got:
                raise ProtocolError("the stream ended inside a message body")
            view = view[got:]

    async def skip_body(self, length: int) -> None:
        """Read and drop a body of `length` bytes (a frame for a camera that is gone)."""
        if length:
            await self.receive_body(memoryview(bytearray(length)))

    async def _fill(self, size: int) -> bool:
        """Buffer at least `size` bytes; False if the stream ends first."""
        while len(self._buffer) < size:
            chunk = await self._sock.recv(READ_CHUNK)
            if not chunk:
                return False
            self._buffer += chunk
        return True

    def close(self) -> None:
        self._sock.close()
