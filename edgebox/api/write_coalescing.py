"""Fewer socket writes for grpclib's server connections.

grpclib writes each HTTP/2 step straight to the transport: a unary reply is three writes (HEADERS, DATA, the
trailers' HEADERS), i.e. three `send` system calls and three TCP segments for the client to read. With
`CoalescingTransport` a write is buffered instead, and the buffer goes out as one write either when a frame that
ends a stream is written (the reply is complete: sent at once, no added latency) or at the end of the event
loop's pass (`loop.call_soon`: window updates, settings, stream messages), in the order it was written. Nothing
else changes: flow control (`pause_writing`), closing and `get_extra_info` go to the real transport, and what is
buffered before `close()` is written before the transport closes. Measured in docs/benchmarks.md ("gRPC").
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

FRAME_HEADER = struct.Struct(">I")  # HTTP/2 frame header: 24-bit length, 8-bit type, then flags (RFC 9113 4.1)
DATA_FRAME, HEADERS_FRAME = 0x0, 0x1
END_STREAM_FLAG = 0x1


def ends_a_stream(frames: bytes | bytearray | memoryview) -> bool:
    """Whether these whole HTTP/2 frames (as h2 serializes them) include a DATA or HEADERS frame with END_STREAM."""
    view = memoryview(frames)
    at, end = 0, len(view)
    while at + 9 <= end:
        (length_and_type,) = FRAME_HEADER.unpack_from(view, at)
        frame_type = length_and_type & 0xFF
        if frame_type in (DATA_FRAME, HEADERS_FRAME) and view[at + 4] & END_STREAM_FLAG:
            return True
        at += 9 + (length_and_type >> 8)
    return False


class CoalescingTransport(asyncio.Transport):
    """A transport that buffers `write`s and hands them to `inner` as one write: when a frame that ends a stream
    is written, else at the end of the loop pass."""

    def __init__(self, inner: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._inner = inner
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        if ends_a_stream(data):
            self.flush()  # a reply is complete: send it now rather than after the rest of the loop pass

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write everything buffered so far, now (a no-op if nothing is, or the transport is closing)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        if not self._inner.is_closing():
            self._inner.write(data)

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        self._pending.clear()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(map(len, self._pending))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()
