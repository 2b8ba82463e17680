"""A server-side HTTP/2 connection (RFC 9113) with the part of h2's `H2Connection` interface that grpclib uses.

It takes bytes in (`receive_data`, returning h2's event objects), keeps the connection's and every stream's state,
and queues the frames to send (`data_to_send`); it does no I/O. Errors follow RFC 9113 5.4: a stream error resets
that stream (RST_STREAM) and the connection goes on; a connection error queues a GOAWAY, closes the connection's
state and raises h2's `ProtocolError`, which grpclib answers by closing the transport. It serves gRPC's shape of
HTTP/2 only: no server push, no CONNECT, priorities read and ignored.
"""

from __future__ import annotations

from collections import OrderedDict

from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingAckReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import FlowControlError, FrameTooLargeError, ProtocolError, StreamClosedError
from h2.settings import ChangedSetting, SettingCodes

from edgebox.api.http2 import frames
from edgebox.api.http2.fields import MalformedFields, request_fields, trailer_fields
from edgebox.api.http2.hpack import CompressionError, Decoder, Encoder
from edgebox.api.http2.settings import (
    DEFAULT_MAX_FRAME_SIZE,
    DEFAULT_WINDOW,
    MAX_CONCURRENT_STREAMS,
    MAX_HEADER_LIST_SIZE,
    LocalSettings,
    setting_code,
)
from edgebox.api.http2.streams import MAX_WINDOW, InboundWindow, ServerStream

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
LARGEST_MAX_FRAME_SIZE = 2**24 - 1
MAX_HEADER_BLOCK_BYTES = 1 << 20  # compressed bytes of one HEADERS + CONTINUATION sequence before we give up
# The last stream ids remembered of two kinds: those we reset, whose late frames are ignored rather than answered
# (RFC 9113 5.4.2), and those closed normally, so that HEADERS on one is told from a skipped id (5.1.1).
STREAM_IDS_REMEMBERED = 1024


class _ConnectionError(Exception):
    def __init__(self, code: ErrorCodes, message: str) -> None:
        super().__init__(message)
        self.code = code


class _StateMachine:
    """grpclib reads `connection.state_machine.state` to tell a closed connection."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = ConnectionState.IDLE


def _remember(ids: OrderedDict[int, None], stream_id: int) -> None:
    ids[stream_id] = None
    if len(ids) > STREAM_IDS_REMEMBERED:
        ids.popitem(last=False)


def _code(code: int) -> ErrorCodes | int:
    try:
        return ErrorCodes(code)
    except ValueError:
        return code


class ServerConnection:
    """The server's side of one HTTP/2 connection, for grpclib (see the module docstring)."""

    def __init__(self) -> None:
        self.state_machine = _StateMachine()
        self.local_settings = LocalSettings()
        self.streams: dict[int, ServerStream] = {}
        self.outbound_flow_control_window = DEFAULT_WINDOW
        self.max_outbound_frame_size = DEFAULT_MAX_FRAME_SIZE
        self._remote_initial_window = DEFAULT_WINDOW
        self._remote_settings: dict[int, int] = {}
        self._inbound = InboundWindow(DEFAULT_WINDOW)
        self._decoder = Decoder(self.local_settings.header_table_size)
        self._encoder = Encoder()
        self._out: list[bytes] = []
        self._buffer = b""
        self._awaiting_preface = True
        self._awaiting_settings = True
        self._highest_stream_id = 0
        self._continuation: tuple[int, int, list[bytes], bool] | None = None  # stream, flags, fragments, self-dep
        self._continuation_bytes = 0
        self._reset_by_us: OrderedDict[int, None] = OrderedDict()
        self._closed: OrderedDict[int, None] = OrderedDict()
        self._receivers = {
            frames.DATA: self._receive_data, frames.HEADERS: self._receive_headers,
            frames.PRIORITY: self._receive_priority, frames.RST_STREAM: self._receive_rst_stream,
            frames.SETTINGS: self._receive_settings, frames.PUSH_PROMISE: self._receive_push_promise,
            frames.PING: self._receive_ping, frames.GOAWAY: self._receive_goaway,
            frames.WINDOW_UPDATE: self._receive_window_update, frames.CONTINUATION: self._receive_continuation,
        }

    # -- what grpclib calls ------------------------------------------------------------------------------------
    def initiate_connection(self) -> None:
        """Queue the server's connection preface: its first SETTINGS."""
        values = {SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                  SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE}  # the rest are the RFC's defaults
        self._out.append(frames.settings(values))
        self.state_machine.state = ConnectionState.SERVER_OPEN

    def update_settings(self, new_settings: dict[int, int]) -> None:
        """Send new values of our settings; they apply once the client acknowledges them."""
        self.local_settings.sent(dict(new_settings))
        self._out.append(frames.settings(new_settings))

    def increment_flow_control_window(self, increment: int) -> None:
        """Widen the connection's receive window (grpclib does, once, to its configured size)."""
        if not 1 <= increment <= MAX_WINDOW:
            raise ValueError(f"a window increment must be 1 to {MAX_WINDOW}, not {increment}")
        self._inbound.open(increment)
        self._out.append(frames.window_update(0, increment))

    def data_to_send(self) -> bytes:
        """Everything queued to send, at once (grpclib never asks for part of it)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def send_headers(self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool = False) -> None:
        """Queue a reply's headers or trailers (HEADERS, and CONTINUATION past the client's frame size)."""
        stream = self._stream(stream_id)
        block = self._encoder.encode(headers)
        self._out.append(frames.headers(stream_id, block, end_stream, self.max_outbound_frame_size))
        if end_stream:
            self._end_local(stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Queue one DATA frame; the caller keeps it within `local_flow_control_window` and the frame size."""
        stream = self._stream(stream_id)
        size = len(data)
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"{size} bytes exceed the peer's frame size {self.max_outbound_frame_size}")
        if size > self.outbound_flow_control_window or size > stream.outbound_window:
            raise FlowControlError(f"{size} bytes exceed the flow-control window of stream {stream_id}")
        self.outbound_flow_control_window -= size
        stream.outbound_window -= size
        self._out.append(frames.data(stream_id, data, end_stream))
        if end_stream:
            self._end_local(stream)

    def end_stream(self, stream_id: int) -> None:
        """End our side of the stream with an empty DATA frame."""
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        """Queue RST_STREAM and forget the stream; its late frames are then ignored."""
        if stream_id not in self.streams:  # a stream we have ended may still be reset (grpclib does, on errors)
            raise StreamClosedError(stream_id)
        self._reset(stream_id, error_code)

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """The application has read this many flow-controlled bytes: give window back when it is due."""
        self._give_back(acknowledged_size)
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_closed:
            increment = stream.inbound.processed(acknowledged_size)
            if increment:
                self._out.append(frames.window_update(stream_id, increment))

    def local_flow_control_window(self, stream_id: int) -> int:
        """How many DATA bytes the client lets us send on the stream now (the connection's window included)."""
        return min(self.outbound_flow_control_window, self._stream(stream_id).outbound_window)

    def ping(self, opaque_data: bytes) -> None:
        """grpclib's keepalive, where its configuration asks for one."""
        self._out.append(frames.ping(opaque_data))

    # -- receiving ---------------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Take bytes from the socket; returns the events they complete. Raises ProtocolError on a connection
        error, after queuing the GOAWAY that says why."""
        events: list[Event] = []
        if self.state_machine.state is ConnectionState.CLOSED:
            return events
        buffer = self._buffer + data if self._buffer else data
        at, end = 0, len(buffer)
        try:
            if self._awaiting_preface:
                if end < len(PREFACE):
                    if not PREFACE.startswith(buffer):
                        raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self._buffer = buffer
                    return events
                if buffer[:len(PREFACE)] != PREFACE:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                at = len(PREFACE)
                self._awaiting_preface = False
            unpack = frames.HEADER.unpack_from
            receivers = self._receivers
            while end - at >= frames.HEADER_SIZE:
                length_high, length_low, frame_type, flags, stream_id = unpack(buffer, at)
                length = length_high << 16 | length_low
                if length > self.local_settings.max_frame_size:
                    raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR,
                                           f"a frame of {length} bytes exceeds SETTINGS_MAX_FRAME_SIZE")
                start = at + frames.HEADER_SIZE
                if end - start < length:
                    break
                at = start + length
                payload = buffer[start:at]
                if self._continuation is not None and frame_type != frames.CONTINUATION:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a header block was interrupted by another frame")
                if self._awaiting_settings:
                    if frame_type != frames.SETTINGS or flags & frames.ACK:
                        raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "the preface must be followed by SETTINGS")
                    self._awaiting_settings = False
                receiver = receivers.get(frame_type)
                if receiver is not None:  # frames of unknown types are ignored (RFC 9113 5.5)
                    receiver(flags, stream_id & frames.STREAM_ID_MASK, payload, events)
        except _ConnectionError as error:
            self._buffer = b""
            self._out.append(frames.goaway(self._highest_stream_id, error.code, str(error).encode()))
            self.state_machine.state = ConnectionState.CLOSED
            if error.code == ErrorCodes.FLOW_CONTROL_ERROR:
                raise FlowControlError(str(error)) from None
            raise ProtocolError(str(error)) from None
        self._buffer = buffer[at:] if at < end else b""
        return events

    def _receive_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
        flow_length = len(payload)
        data = payload
        if flags & frames.PADDED:
            if not payload or payload[0] >= flow_length:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA padding is as long as the frame")
            data = payload[1:flow_length - payload[0]]
        if not self._inbound.consume(flow_length):
            raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond the connection's flow-control window")
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream is None:
                self._check_not_idle(stream_id, "DATA")
            self._give_back(flow_length)  # no reader will acknowledge it
            if stream is not None or stream_id not in self._reset_by_us:
                self._stream_error(stream_id, ErrorCodes.STREAM_CLOSED, events)
            return
        if not stream.inbound.consume(flow_length):
            self._give_back(flow_length)
            self._stream_error(stream_id, ErrorCodes.FLOW_CONTROL_ERROR, events)
            return
        end_stream = flags & frames.END_STREAM
        if stream.expected_length is not None:
            stream.received_length += len(data)
            if stream.received_length > stream.expected_length or (
                    end_stream and stream.received_length != stream.expected_length):
                self._give_back(flow_length)
                self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
                return
        if data:
            events.append(DataReceived(stream_id=stream_id, data=data, flow_controlled_length=flow_length))
        elif flow_length:  # padding only: nothing for the reader, so nobody else acknowledges it
            self.acknowledge_received_data(flow_length, stream_id)
        if end_stream:
            self._end_remote(stream, events)

    def _receive_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = payload
        padding = 0
        if flags & frames.PADDED:
            if not payload:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "a padded HEADERS frame without a pad length")
            padding = payload[0]
            block = payload[1:]
        self_dependent = False
        if flags & frames.PRIORITY_FLAG:
            if len(block) < 5:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short for its priority fields")
            self_dependent = frames.u32(block) & frames.STREAM_ID_MASK == stream_id
            block = block[5:]
        if padding:
            if padding > len(block):
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "HEADERS padding is longer than what it pads")
            block = block[:len(block) - padding]
        if flags & frames.END_HEADERS:
            self._headers_complete(stream_id, flags, block, self_dependent, events)
        else:
            self._continuation = (stream_id, flags, [block], self_dependent)
            self._continuation_bytes = len(block)

    def _receive_continuation(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        pending = self._continuation
        if pending is None or pending[0] != stream_id:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION that does not continue a header block")
        self._continuation_bytes += len(payload)
        if self._continuation_bytes > MAX_HEADER_BLOCK_BYTES:
            raise _ConnectionError(ErrorCodes.ENHANCE_YOUR_CALM,
                                   f"a header block longer than {MAX_HEADER_BLOCK_BYTES} bytes")
        pending[2].append(payload)
        if flags & frames.END_HEADERS:
            self._continuation = None
            self._headers_complete(stream_id, pending[1], b"".join(pending[2]), pending[3], events)

    def _headers_complete(self, stream_id: int, flags: int, block: bytes, self_dependent: bool,
                          events: list[Event]) -> None:
        try:  # always decode, even for a stream about to be refused: the decoder's table must stay in step
            fields, oversized = self._decoder.decode(block, self.local_settings.max_header_list_size)
        except CompressionError as error:
            raise _ConnectionError(ErrorCodes.COMPRESSION_ERROR, str(error)) from None
        end_stream = bool(flags & frames.END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is not None:
            self._trailers(stream, fields, oversized, end_stream, self_dependent, events)
            return
        if stream_id % 2 == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, f"a client may not open the even stream {stream_id}")
        if stream_id <= self._highest_stream_id:
            if stream_id in self._reset_by_us:
                return  # trailers that crossed our RST_STREAM
            if stream_id in self._closed:
                raise _ConnectionError(ErrorCodes.STREAM_CLOSED, f"HEADERS on the closed stream {stream_id}")
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, f"the new stream {stream_id} is numbered below "
                                                              f"stream {self._highest_stream_id}")
        self._highest_stream_id = stream_id
        if self_dependent or oversized:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
            return
        if len(self.streams) >= self.local_settings.max_concurrent_streams:
            self._stream_error(stream_id, ErrorCodes.REFUSED_STREAM, events)
            return
        try:
            headers, content_length = request_fields(fields)
        except MalformedFields:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
            return
        if end_stream and content_length:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
            return
        stream = ServerStream(stream_id, self.local_settings.initial_window_size, self._remote_initial_window,
                              content_length)
        self.streams[stream_id] = stream
        events.append(RequestReceived(stream_id=stream_id, headers=headers))
        if end_stream:
            self._end_remote(stream, events)

    def _trailers(self, stream: ServerStream, fields: list[tuple[bytes, bytes]], oversized: bool, end_stream: bool,
                  self_dependent: bool, events: list[Event]) -> None:
        stream_id = stream.stream_id
        if stream.remote_closed:
            self._stream_error(stream_id, ErrorCodes.STREAM_CLOSED, events)
            return
        if self_dependent or oversized or not end_stream or (
                stream.expected_length is not None and stream.received_length != stream.expected_length):
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
            return
        try:
            headers = trailer_fields(fields)
        except MalformedFields:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
            return
        events.append(TrailersReceived(stream_id=stream_id, headers=headers))
        self._end_remote(stream, events)

    def _receive_priority(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._stream_error(stream_id, ErrorCodes.FRAME_SIZE_ERROR, events)
        elif frames.u32(payload) & frames.STREAM_ID_MASK == stream_id:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)

    def _receive_rst_stream(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes")
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        self._check_not_idle(stream_id, "RST_STREAM")
        if self.streams.pop(stream_id, None) is not None:
            _remember(self._closed, stream_id)
            events.append(StreamReset(stream_id=stream_id, error_code=_code(frames.u32(payload)), remote_reset=True))

    def _receive_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & frames.ACK:
            if payload:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "a SETTINGS acknowledgement with a payload")
            self._settings_acknowledged()
            return
        if len(payload) % 6:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS is not a multiple of 6 bytes")
        changed = RemoteSettingsChanged()
        for code, value in frames.parse_settings(payload):
            if code == SettingCodes.ENABLE_PUSH and value > 1:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            if code == SettingCodes.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._remote_initial_window
                self._remote_initial_window = value
                for stream in self.streams.values():
                    stream.outbound_window += delta
                    if stream.outbound_window > MAX_WINDOW:
                        raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "a stream window grew above 2^31-1")
            elif code == SettingCodes.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= LARGEST_MAX_FRAME_SIZE:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
                self.max_outbound_frame_size = value
            setting = setting_code(code)
            changed.changed_settings[setting] = ChangedSetting(setting, self._remote_settings.get(code), value)
            self._remote_settings[code] = value
        self._out.append(frames.SETTINGS_ACK)
        events.append(changed)

    def _settings_acknowledged(self) -> None:
        old_window = self.local_settings.initial_window_size
        values = self.local_settings.acknowledged()
        if SettingCodes.INITIAL_WINDOW_SIZE in values:
            delta = self.local_settings.initial_window_size - old_window
            for stream in self.streams.values():
                stream.inbound.open(delta)
        if SettingCodes.HEADER_TABLE_SIZE in values:
            self._decoder.settings_max_size = self.local_settings.header_table_size

    def _receive_push_promise(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a client may not send PUSH_PROMISE")

    def _receive_ping(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "PING is not 8 bytes")
        if stream_id != 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
        if flags & frames.ACK:
            events.append(PingAckReceived(ping_data=payload))
        else:
            self._out.append(frames.ping_ack(payload))
            events.append(PingReceived(ping_data=payload))

    def _receive_goaway(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id != 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last_stream_id, code, debug = frames.parse_goaway(payload)
        terminated = ConnectionTerminated()
        terminated.error_code, terminated.last_stream_id, terminated.additional_data = _code(code), last_stream_id, debug
        self.state_machine.state = ConnectionState.CLOSED
        events.append(terminated)

    def _receive_window_update(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE is not 4 bytes")
        increment = frames.u32(payload) & frames.STREAM_ID_MASK
        if stream_id == 0:
            if not increment:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "a connection WINDOW_UPDATE of 0")
            self.outbound_flow_control_window += increment
            if self.outbound_flow_control_window > MAX_WINDOW:
                raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "the connection window grew above 2^31-1")
            events.append(WindowUpdated(stream_id=0, delta=increment))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            self._check_not_idle(stream_id, "WINDOW_UPDATE")
            return  # a closed stream: the update may have crossed its end
        if not increment:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR, events)
            return
        stream.outbound_window += increment
        if stream.outbound_window > MAX_WINDOW:
            self._stream_error(stream_id, ErrorCodes.FLOW_CONTROL_ERROR, events)
            return
        events.append(WindowUpdated(stream_id=stream_id, delta=increment))

    # -- helpers -----------------------------------------------------------------------------------------------
    def _stream(self, stream_id: int) -> ServerStream:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(stream_id)
        return stream

    def _check_not_idle(self, stream_id: int, what: str) -> None:
        if stream_id > self._highest_stream_id or stream_id % 2 == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, f"{what} on the idle stream {stream_id}")

    def _give_back(self, size: int) -> None:
        increment = self._inbound.processed(size)
        if increment:
            self._out.append(frames.window_update(0, increment))

    def _end_remote(self, stream: ServerStream, events: list[Event]) -> None:
        events.append(StreamEnded(stream_id=stream.stream_id))
        stream.remote_closed = True
        if stream.local_closed:
            del self.streams[stream.stream_id]
            _remember(self._closed, stream.stream_id)

    def _end_local(self, stream: ServerStream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self.streams[stream.stream_id]
            _remember(self._closed, stream.stream_id)

    def _stream_error(self, stream_id: int, code: ErrorCodes, events: list[Event]) -> None:
        """Reset the stream (RFC 9113 5.4.2); grpclib hears of it if it had been told of the stream."""
        if stream_id in self.streams:
            events.append(StreamReset(stream_id=stream_id, error_code=code, remote_reset=False))
        self._reset(stream_id, code)

    def _reset(self, stream_id: int, code: int) -> None:
        self.streams.pop(stream_id, None)
        self._out.append(frames.rst_stream(stream_id, code))
        _remember(self._reset_by_us, stream_id)
