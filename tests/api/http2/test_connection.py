"""The server connection against a real HTTP/2 peer (h2's client connection) and against hand-made frames that a
well-behaved client would never send: every stream error resets only its stream, every connection error sends a
GOAWAY with its code, and no input makes it raise anything but h2's ProtocolError."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.exceptions import FlowControlError, ProtocolError, StreamClosedError
from h2.settings import SettingCodes
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebox.api.http2.connection import PREFACE, ServerConnection
from edgebox.api.http2.settings import MAX_CONCURRENT_STREAMS

REQUEST = [(":method", "POST"), (":scheme", "http"), (":path", "/infer.InferenceService/HealthCheck"),
           (":authority", "127.0.0.1:50051"), ("content-type", "application/grpc"), ("te", "trailers")]
REPLY = [(":status", "200"), ("content-type", "application/grpc+proto")]


def handshake() -> tuple[ServerConnection, h2.connection.H2Connection]:
    """A server and h2's client, past the preface and both SETTINGS exchanges."""
    server = ServerConnection()
    server.initiate_connection()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="ascii"))
    client.initiate_connection()
    assert server.receive_data(client.data_to_send())[0].__class__ is h2.events.RemoteSettingsChanged
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    return server, client


def raw_server() -> ServerConnection:
    """A server that has had the preface and an empty SETTINGS; frames are then written by hand."""
    server = ServerConnection()
    server.initiate_connection()
    server.receive_data(PREFACE + SettingsFrame(0).serialize())
    server.data_to_send()
    return server


def headers_frame(stream_id: int, fields: list[tuple[str, str]], *, end_stream: bool = True,
                  encoder: hpack.Encoder | None = None) -> bytes:
    frame = HeadersFrame(stream_id, (encoder or hpack.Encoder()).encode(fields))
    frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


def sent_frames(data: bytes) -> list[Frame]:
    """Parse what the server queued, frame by frame (hyperframe: h2's own frame library)."""
    frames, at = [], 0
    while at < len(data):
        frame, length = Frame.parse_frame_header(memoryview(data[at:at + 9]))
        frame.parse_body(memoryview(data[at + 9:at + 9 + length]))
        frames.append(frame)
        at += 9 + length
    return frames


def resets(server: ServerConnection) -> dict[int, int]:
    return {f.stream_id: f.error_code for f in sent_frames(server.data_to_send()) if isinstance(f, RstStreamFrame)}


def kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


# -- with a real peer -----------------------------------------------------------------------------------------
def test_a_request_and_its_reply_round_trip_with_h2s_client():
    server, client = handshake()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"\0\0\0\0\0", end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert kinds(events) == ["RequestReceived", "DataReceived", "StreamEnded"]
    assert events[0].headers == REQUEST and events[1].data == b"\0\0\0\0\0"
    server.send_headers(1, REPLY)
    server.send_data(1, b"\0\0\0\0\x02\x08\x01")
    server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    assert 1 not in server.streams  # closed both ways, so forgotten
    answer = client.receive_data(server.data_to_send())
    assert kinds(answer) == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert answer[0].headers == REPLY and answer[2].headers == [("grpc-status", "0")]
    with pytest.raises(StreamClosedError):
        server.send_data(1, b"late")


def test_many_requests_on_one_connection_keep_the_header_tables_in_step():
    server, client = handshake()
    for n in range(60):
        stream_id = 2 * n + 1
        request = [*REQUEST, ("grpc-timeout", f"{19999990 - n}u"), ("x-call", str(n) * (n % 7))]
        client.send_headers(stream_id, request, end_stream=True)
        [received, ended] = server.receive_data(client.data_to_send())
        assert received.headers == request and ended.stream_id == stream_id
        server.send_headers(stream_id, [*REPLY, ("grpc-status", "0"), ("grpc-message", f"call {n}")],
                            end_stream=True)
        [response, _] = client.receive_data(server.data_to_send())
        assert response.headers == [*REPLY, ("grpc-status", "0"), ("grpc-message", f"call {n}")]


def test_reply_headers_longer_than_a_frame_go_out_as_headers_and_continuation():
    server, client = handshake()
    client.send_headers(1, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    big = [*REPLY, ("grpc-status", "3"), ("grpc-message", "x" * 40_000)]
    server.send_headers(1, big, end_stream=True)
    out = server.data_to_send()
    assert [type(f).__name__ for f in sent_frames(out)] == ["HeadersFrame", "ContinuationFrame", "ContinuationFrame"]
    [response, _] = client.receive_data(out)
    assert response.headers == big


def test_outbound_data_follows_the_peers_windows_and_their_updates():
    server, client = handshake()
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 10})
    client.send_headers(1, REQUEST, end_stream=True)
    events = server.receive_data(client.data_to_send())
    assert SettingCodes.INITIAL_WINDOW_SIZE in events[0].changed_settings
    assert server.local_flow_control_window(1) == 10
    server.send_headers(1, REPLY)
    with pytest.raises(FlowControlError):
        server.send_data(1, b"x" * 11)
    server.send_data(1, b"x" * 10)
    assert server.local_flow_control_window(1) == 0
    client.receive_data(server.data_to_send())
    client.increment_flow_control_window(5, stream_id=1)
    [update] = server.receive_data(client.data_to_send())
    assert isinstance(update, h2.events.WindowUpdated) and update.delta == 5
    assert server.local_flow_control_window(1) == 5
    client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 100})  # applies to open streams as a delta
    server.receive_data(client.data_to_send())
    assert server.local_flow_control_window(1) == 95


def test_read_data_is_given_back_once_half_the_window_is_read():
    server, client = handshake()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"x" * 16384)
    client.send_data(1, b"x" * 16384)
    server.receive_data(client.data_to_send())
    server.acknowledge_received_data(16384, 1)
    assert server.data_to_send() == b""  # a quarter of 65535 read: nothing yet
    server.acknowledge_received_data(16384, 1)
    updates = {f.stream_id: f.window_increment for f in sent_frames(server.data_to_send())}
    assert updates == {0: 32768, 1: 32768}


def test_our_larger_initial_window_applies_once_the_client_acknowledges_it():
    server, client = handshake()
    server.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
    client.send_headers(1, REQUEST)
    client.send_data(1, b"x" * 16384)
    server.receive_data(client.data_to_send())
    assert server.streams[1].inbound.available == 65535 - 16384  # not acknowledged yet
    client.receive_data(server.data_to_send())  # the client acknowledges our SETTINGS
    server.receive_data(client.data_to_send())
    assert server.streams[1].inbound.available == (1 << 20) - 16384


def test_streams_past_the_concurrency_limit_are_refused_and_room_frees_when_one_ends():
    server, _client = handshake()
    encoder = hpack.Encoder()
    opened = b"".join(headers_frame(2 * n + 1, REQUEST, end_stream=False, encoder=encoder)
                      for n in range(MAX_CONCURRENT_STREAMS + 1))
    events = server.receive_data(opened)
    assert len(events) == MAX_CONCURRENT_STREAMS
    refused = 2 * MAX_CONCURRENT_STREAMS + 1
    assert resets(server) == {refused: ErrorCodes.REFUSED_STREAM}
    server.reset_stream(1)
    events = server.receive_data(headers_frame(refused + 2, REQUEST, encoder=encoder))
    assert kinds(events) == ["RequestReceived", "StreamEnded"]


def test_ping_is_answered_with_its_own_payload():
    server = raw_server()
    events = server.receive_data(PingFrame(0, opaque_data=b"12345678").serialize())
    assert kinds(events) == ["PingReceived"]
    [ack] = sent_frames(server.data_to_send())
    assert isinstance(ack, PingFrame) and "ACK" in ack.flags and ack.opaque_data == b"12345678"


def test_client_trailers_end_the_stream_and_trailers_that_do_not_end_it_reset_it():
    server = raw_server()
    encoder = hpack.Encoder()
    events = server.receive_data(headers_frame(1, REQUEST, end_stream=False, encoder=encoder)
                                 + headers_frame(1, [("x-checksum", "abc")], encoder=encoder))
    assert kinds(events) == ["RequestReceived", "TrailersReceived", "StreamEnded"]
    events = server.receive_data(headers_frame(3, REQUEST, end_stream=False, encoder=encoder)
                                 + headers_frame(3, [("x-checksum", "abc")], end_stream=False, encoder=encoder))
    assert kinds(events) == ["RequestReceived", "StreamReset"]
    assert resets(server) == {3: ErrorCodes.PROTOCOL_ERROR}


def test_padding_is_stripped_and_counted_against_the_window():
    server = raw_server()
    frame = HeadersFrame(1, hpack.Encoder().encode(REQUEST))
    for flag in ("END_HEADERS", "PADDED", "PRIORITY"):
        frame.flags.add(flag)
    frame.pad_length, frame.depends_on, frame.stream_weight = 7, 0, 15
    data = DataFrame(1, b"hello")
    data.flags.add("PADDED")
    data.flags.add("END_STREAM")
    data.pad_length = 20
    events = server.receive_data(frame.serialize() + data.serialize())
    assert kinds(events) == ["RequestReceived", "DataReceived", "StreamEnded"]
    assert events[0].headers == REQUEST
    assert events[1].data == b"hello" and events[1].flow_controlled_length == 26


def test_a_request_whose_data_differs_from_its_content_length_is_reset():
    server = raw_server()
    events = server.receive_data(headers_frame(1, [*REQUEST, ("content-length", "4")], end_stream=False)
                                 + DataFrame(1, b"hello", flags=["END_STREAM"]).serialize())
    assert kinds(events) == ["RequestReceived", "StreamReset"]
    assert resets(server) == {1: ErrorCodes.PROTOCOL_ERROR}


def test_frames_after_our_reset_are_ignored_and_after_the_clients_answered_stream_closed():
    server = raw_server()
    server.receive_data(headers_frame(1, REQUEST, end_stream=False))
    server.reset_stream(1, ErrorCodes.CANCEL)
    assert resets(server) == {1: ErrorCodes.CANCEL}
    assert server.receive_data(DataFrame(1, b"in flight").serialize()) == []
    assert resets(server) == {}  # ignored (RFC 9113 5.4.2), though its bytes go back to the connection window
    events = server.receive_data(headers_frame(3, REQUEST, end_stream=False)
                                 + RstStreamFrame(3, error_code=ErrorCodes.CANCEL).serialize())
    assert kinds(events) == ["RequestReceived", "StreamReset"] and events[1].remote_reset
    server.receive_data(DataFrame(3, b"after its own reset").serialize())
    assert resets(server) == {3: ErrorCodes.STREAM_CLOSED}


def test_unknown_frame_types_are_ignored_and_the_connection_goes_on():
    server = raw_server()
    unknown = struct.pack(">BHBBL", 0, 4, 0xFA, 0, 1) + b"ext!"
    events = server.receive_data(unknown + headers_frame(1, REQUEST))
    assert kinds(events) == ["RequestReceived", "StreamEnded"]


def test_goaway_from_the_client_terminates_the_connection():
    server = raw_server()
    [event] = server.receive_data(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    assert isinstance(event, h2.events.ConnectionTerminated) and event.error_code == ErrorCodes.NO_ERROR
    assert server.receive_data(headers_frame(1, REQUEST)) == []


def test_bytes_split_anywhere_give_the_same_events():
    _, client = handshake()
    client.send_headers(1, REQUEST)
    client.send_data(1, b"\0\0\0\0\x03abc", end_stream=True)
    client.ping(b"pingpong")
    stream = client.data_to_send()
    whole = raw_server()
    expected = kinds(whole.receive_data(stream))
    for cut in range(1, len(stream), 3):
        server = raw_server()
        assert kinds(server.receive_data(stream[:cut]) + server.receive_data(stream[cut:])) == expected


# -- malformed requests: a stream error, the connection goes on ----------------------------------------------
@pytest.mark.parametrize("fields", [
    [*REQUEST, ("X-Upper", "1")],
    [f for f in REQUEST if f[0] != ":method"],
    [f for f in REQUEST if f[0] != ":path"],
    [f for f in REQUEST if f[0] != ":scheme"],
    [*REQUEST, (":path", "/again")],
    [(":unknown", "1"), *REQUEST],
    [(":status", "200"), *REQUEST],
    [("content-type", "application/grpc"), *REQUEST],
    [*REQUEST, ("connection", "keep-alive")],
    [*REQUEST[:-1], ("te", "gzip")],
    [(":path", "") if f[0] == ":path" else f for f in REQUEST],
    [*REQUEST, ("x-bad", "a\nb")],
    [*REQUEST, ("content-length", "five")],
], ids=["uppercase name", "no :method", "no :path", "no :scheme", "duplicate :path", "unknown pseudo-header",
        "response pseudo-header", "pseudo-header after a field", "connection header", "te not trailers",
        "empty :path", "newline in a value", "content-length not a number"])
def test_a_malformed_request_resets_its_stream_and_the_next_request_is_served(fields):
    server = raw_server()
    encoder = hpack.Encoder()
    events = server.receive_data(headers_frame(1, fields, encoder=encoder))
    assert events == [] and resets(server) == {1: ErrorCodes.PROTOCOL_ERROR}
    events = server.receive_data(headers_frame(3, REQUEST, encoder=encoder))
    assert kinds(events) == ["RequestReceived", "StreamEnded"]


# -- connection errors: GOAWAY with the code, then ProtocolError --------------------------------------------
def frame_bytes(frame_type: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">BHBBL", len(payload) >> 16, len(payload) & 0xFFFF, frame_type, flags, stream_id) + payload


OPEN_1 = headers_frame(1, REQUEST, end_stream=False)
CONNECTION_ERRORS = {
    "DATA on stream 0": (frame_bytes(0, 0, 0, b"x"), ErrorCodes.PROTOCOL_ERROR),
    "DATA on an idle stream": (frame_bytes(0, 0, 5, b"x"), ErrorCodes.PROTOCOL_ERROR),
    "HEADERS on stream 0": (frame_bytes(1, 4, 0, b"\x82"), ErrorCodes.PROTOCOL_ERROR),
    "even stream id": (headers_frame(2, REQUEST), ErrorCodes.PROTOCOL_ERROR),
    "stream id going down": (headers_frame(5, REQUEST) + headers_frame(3, REQUEST), ErrorCodes.PROTOCOL_ERROR),
    "HEADERS on a closed stream": (headers_frame(1, REQUEST) + RstStreamFrame(1).serialize()
                                   + headers_frame(1, REQUEST), ErrorCodes.STREAM_CLOSED),
    "header block interrupted": (frame_bytes(1, 0, 1, b"\x82") + PingFrame(0).serialize(),
                                 ErrorCodes.PROTOCOL_ERROR),
    "CONTINUATION of nothing": (ContinuationFrame(1, b"\x82", flags=["END_HEADERS"]).serialize(),
                                ErrorCodes.PROTOCOL_ERROR),
    "frame over SETTINGS_MAX_FRAME_SIZE": (frame_bytes(0, 0, 1, b"x" * 16385), ErrorCodes.FRAME_SIZE_ERROR),
    "PING of 7 bytes": (frame_bytes(6, 0, 0, b"1234567"), ErrorCodes.FRAME_SIZE_ERROR),
    "PING on a stream": (frame_bytes(6, 0, 1, b"12345678"), ErrorCodes.PROTOCOL_ERROR),
    "SETTINGS of 5 bytes": (frame_bytes(4, 0, 0, b"12345"), ErrorCodes.FRAME_SIZE_ERROR),
    "SETTINGS ack with a payload": (frame_bytes(4, 1, 0, b"\0\1\0\0\0\0"), ErrorCodes.FRAME_SIZE_ERROR),
    "ENABLE_PUSH of 2": (frame_bytes(4, 0, 0, struct.pack(">HL", 2, 2)), ErrorCodes.PROTOCOL_ERROR),
    "initial window over 2^31-1": (frame_bytes(4, 0, 0, struct.pack(">HL", 4, 2**31)),
                                   ErrorCodes.FLOW_CONTROL_ERROR),
    "max frame size too small": (frame_bytes(4, 0, 0, struct.pack(">HL", 5, 100)), ErrorCodes.PROTOCOL_ERROR),
    "connection window over 2^31-1": (WindowUpdateFrame(0, window_increment=2**31 - 1).serialize(),
                                      ErrorCodes.FLOW_CONTROL_ERROR),
    "connection WINDOW_UPDATE of 0": (frame_bytes(8, 0, 0, b"\0\0\0\0"), ErrorCodes.PROTOCOL_ERROR),
    "WINDOW_UPDATE on an idle stream": (WindowUpdateFrame(9, window_increment=1).serialize(),
                                        ErrorCodes.PROTOCOL_ERROR),
    "RST_STREAM on an idle stream": (RstStreamFrame(9).serialize(), ErrorCodes.PROTOCOL_ERROR),
    "RST_STREAM of 3 bytes": (OPEN_1 + frame_bytes(3, 0, 1, b"\0\0\0"), ErrorCodes.FRAME_SIZE_ERROR),
    "undecodable header block": (frame_bytes(1, 5, 1, b"\x80"), ErrorCodes.COMPRESSION_ERROR),
    "PUSH_PROMISE from a client": (frame_bytes(5, 4, 1, b"\0\0\0\2\x82"), ErrorCodes.PROTOCOL_ERROR),
    "DATA past the connection window": (OPEN_1 + b"".join(DataFrame(1, b"x" * 16384).serialize()
                                                          for _ in range(5)), ErrorCodes.FLOW_CONTROL_ERROR),
}


@pytest.mark.parametrize("data, code", CONNECTION_ERRORS.values(), ids=CONNECTION_ERRORS.keys())
def test_a_connection_error_sends_goaway_with_its_code_and_raises(data, code):
    server = raw_server()
    with pytest.raises(ProtocolError):
        server.receive_data(data)
    goaway = sent_frames(server.data_to_send())[-1]
    assert isinstance(goaway, GoAwayFrame) and goaway.error_code == code
    assert server.receive_data(headers_frame(7, REQUEST)) == []  # a closed connection takes nothing more


def test_a_stream_past_its_own_window_is_reset_and_the_connection_goes_on():
    server = raw_server()
    server.increment_flow_control_window(1 << 20)  # room on the connection: the stream's 65535 bind first
    server.data_to_send()
    events = server.receive_data(OPEN_1 + b"".join(DataFrame(1, b"x" * 16384).serialize() for _ in range(5)))
    assert kinds(events) == ["RequestReceived", *["DataReceived"] * 3, "StreamReset"]
    assert resets(server) == {1: ErrorCodes.FLOW_CONTROL_ERROR}
    assert kinds(server.receive_data(headers_frame(3, REQUEST))) == ["RequestReceived", "StreamEnded"]


@pytest.mark.parametrize("preface", [b"GET / HTTP/1.1\r\n\r\n", PREFACE + PingFrame(0).serialize()],
                         ids=["HTTP/1.1", "no SETTINGS first"])
def test_a_connection_that_does_not_start_as_http2_is_refused(preface):
    server = ServerConnection()
    server.initiate_connection()
    server.data_to_send()
    with pytest.raises(ProtocolError):
        server.receive_data(preface)
    assert isinstance(sent_frames(server.data_to_send())[-1], GoAwayFrame)


# -- fuzzing -----------------------------------------------------------------------------------------------
fuzz_frames = st.builds(
    frame_bytes,
    st.integers(0, 12),
    st.integers(0, 255),
    st.sampled_from([0, 1, 3, 5, 2, 7, 2**31 - 1]),
    st.binary(max_size=40) | st.sampled_from([hpack.Encoder().encode(REQUEST), b"\0\0\0\0\0", b"\0" * 8]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fuzz_frames, max_size=12), st.integers(1, 64))
def test_arbitrary_frames_raise_nothing_but_protocol_error_and_a_failure_ends_with_goaway(frames, chunk):
    server = raw_server()
    stream = b"".join(frames)
    try:
        for at in range(0, len(stream), chunk):
            server.receive_data(stream[at:at + chunk])
            server.data_to_send()
    except ProtocolError:
        assert isinstance(sent_frames(server.data_to_send())[-1], GoAwayFrame)
