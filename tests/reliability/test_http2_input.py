"""HTTP/2 that no gRPC library sends, against a real engine over a raw socket: a request the engine cannot serve
is reset at once with a reason, an extension frame is ignored, and a broken connection is closed with a GOAWAY
naming its error. The engine keeps serving on the same connection and on others.

(grpclib on h2, before edgebox.api.http2, left a request without :method unanswered until the client's
deadline, and closed the whole connection on an unknown frame type, without a GOAWAY.)"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, HeadersFrame, RstStreamFrame, SettingsFrame

from edgebox.api.http2.connection import PREFACE
from tests.support.engine import EngineProcess, start_engine_process

READ_TIMEOUT_S = 30.0
HEALTH = [(":method", "POST"), (":scheme", "http"), (":path", "/infer.InferenceService/HealthCheck"),
          (":authority", "engine"), ("content-type", "application/grpc"), ("te", "trailers")]
EMPTY_MESSAGE = b"\0\0\0\0\0"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    eng = start_engine_process(tmp_path_factory.mktemp("http2-input"), {"log_level": "INFO"})
    yield eng
    assert eng.stop() == 0, eng.log()
    assert "Traceback" not in eng.log(), eng.log()


class RawConnection:
    """A socket that speaks HTTP/2 frame by frame: what we send is not checked, what we read is parsed."""

    def __init__(self, engine: EngineProcess) -> None:
        self.sock = socket.create_connection((engine.host, engine.port), timeout=READ_TIMEOUT_S)
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.buffer = b""
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, stream_id: int, fields: list[tuple[str, str]], message: bytes = EMPTY_MESSAGE) -> bytes:
        headers = HeadersFrame(stream_id, self.encoder.encode(fields))
        headers.flags.add("END_HEADERS")
        data = struct.pack(">BHBBL", 0, len(message), 0, 1, stream_id) + message  # DATA with END_STREAM
        return headers.serialize() + data

    def read_frame(self) -> Frame | None:
        """The next frame, or None once the engine has closed the connection."""
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9:9 + length]))
                    self.buffer = self.buffer[9 + length:]
                    return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk

    def until(self, wanted) -> Frame | None:
        """Read frames until `wanted(frame)`; returns that frame, or None if the connection closed first."""
        while (frame := self.read_frame()) is not None:
            if wanted(frame):
                return frame
        return None

    def grpc_status(self, stream_id: int) -> str:
        """Read the stream's reply through to its trailers; returns grpc-status."""
        fields: dict[str, str] = {}
        while True:
            frame = self.until(lambda f: f.stream_id == stream_id)
            assert frame is not None, "the connection closed before the reply ended"
            if isinstance(frame, HeadersFrame):
                fields.update((n.decode(), v.decode()) for n, v in self.decoder.decode(frame.data, raw=True))
                if "END_STREAM" in frame.flags:
                    return fields["grpc-status"]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def conn(engine: EngineProcess) -> Iterator[RawConnection]:
    connection = RawConnection(engine)
    yield connection
    connection.close()


def test_a_request_without_method_is_reset_at_once_and_the_next_one_is_served(conn):
    conn.send(conn.request(1, [f for f in HEALTH if f[0] != ":method"]) + conn.request(3, HEALTH))
    reset = conn.until(lambda f: isinstance(f, RstStreamFrame))
    assert reset is not None and reset.stream_id == 1 and reset.error_code == ErrorCodes.PROTOCOL_ERROR
    assert conn.grpc_status(3) == "0"


def test_an_unknown_extension_frame_is_ignored_and_the_call_after_it_is_served(conn):
    extension = struct.pack(">BHBBL", 0, 6, 0xFA, 0, 0) + b"hello!"
    conn.send(extension + conn.request(1, HEALTH))
    assert conn.grpc_status(1) == "0"


def test_a_connection_error_is_answered_with_goaway_naming_it_and_other_connections_are_served(engine, conn):
    conn.send(conn.request(1, HEALTH))
    assert conn.grpc_status(1) == "0"
    conn.send(struct.pack(">BHBBL", 0, 7, 6, 0, 0) + b"1234567")  # a PING of 7 bytes
    goaway = conn.until(lambda f: isinstance(f, GoAwayFrame))
    assert goaway is not None and goaway.error_code == ErrorCodes.FRAME_SIZE_ERROR
    assert goaway.last_stream_id == 1 and b"PING" in goaway.additional_data
    assert conn.read_frame() is None  # and then closed
    other = RawConnection(engine)
    try:
        other.send(other.request(1, HEALTH))
        assert other.grpc_status(1) == "0"
    finally:
        other.close()
