"""HTTP/2 frame layout (RFC 9113 section 4 and 6): type and flag numbers, the 9-byte header, and the frames a
server sends, serialized straight to bytes."""

from __future__ import annotations

import struct

HEADER = struct.Struct(">BHBBL")  # length (24 bits, as 8 + 16), type, flags, R + stream id (31 bits)
HEADER_SIZE = 9
STREAM_ID_MASK = 0x7FFFFFFF

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)

END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


def frame(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return HEADER.pack(length >> 16, length & 0xFFFF, frame_type, flags, stream_id) + payload


def u32(payload: bytes, at: int = 0) -> int:
    """The big-endian 32-bit number at payload[at]."""
    return _U32.unpack_from(payload, at)[0]


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(code, value) for code, value in values.items()))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    return [_SETTING.unpack_from(payload, at) for at in range(0, len(payload), 6)]


SETTINGS_ACK = frame(SETTINGS, ACK, 0)


def ping_ack(opaque: bytes) -> bytes:
    return frame(PING, ACK, 0, opaque)


def ping(opaque: bytes) -> bytes:
    return frame(PING, 0, 0, opaque)


def goaway(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, error_code) + debug)


def parse_goaway(payload: bytes) -> tuple[int, int, bytes]:
    last_stream_id, error_code = _GOAWAY.unpack_from(payload)
    return last_stream_id & STREAM_ID_MASK, error_code, payload[8:]


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, error_code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))


def data(stream_id: int, payload: bytes, end_stream: bool) -> bytes:
    return frame(DATA, END_STREAM if end_stream else 0, stream_id, payload)


def headers(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """A HEADERS frame carrying `block`, followed by CONTINUATION frames where it is longer than a frame."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return frame(HEADERS, flags | END_HEADERS, stream_id, block)
    chunks = [block[at:at + max_frame_size] for at in range(0, len(block), max_frame_size)]
    out = [frame(HEADERS, flags, stream_id, chunks[0])]
    out.extend(frame(CONTINUATION, 0, stream_id, chunk) for chunk in chunks[1:-1])
    out.append(frame(CONTINUATION, END_HEADERS, stream_id, chunks[-1]))
    return b"".join(out)
