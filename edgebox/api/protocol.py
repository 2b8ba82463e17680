"""grpclib's server protocol on edgebox's own HTTP/2 connection, writing through the coalescing transport.

grpclib builds h2's `H2Connection` inside `H2Protocol.connection_made`; `ServerProtocol` builds
`edgebox.api.http2.ServerConnection` there instead (the same interface, an eighth of h2's work per call: measured in
docs/benchmarks.md, "gRPC"), and sends the GOAWAY of a connection error before grpclib closes the transport.
Everything above it (streams, handlers, deadlines, metadata, status) is grpclib's, unchanged.
"""

from __future__ import annotations

import asyncio
from typing import cast

import grpclib.server
from grpclib.protocol import Connection, EventsProcessor, H2Protocol, _set_nodelay
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes

from edgebox.api.http2 import ServerConnection
from edgebox.api.write_coalescing import CoalescingTransport


class ServerProtocol(H2Protocol):
    """One client connection: grpclib's events processor and handler over a `ServerConnection`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast rather than a check
        writer = CoalescingTransport(cast(asyncio.Transport, transport), asyncio.get_running_loop())
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _set_nodelay(sock)
        http2 = ServerConnection()
        http2.initiate_connection()
        initial = http2.local_settings.initial_window_size  # grpclib's windows, as grpclib itself sets them
        if self.config.http2_connection_window_size != initial:
            http2.increment_flow_control_window(self.config.http2_connection_window_size - initial)
        if self.config.http2_stream_window_size != initial:
            http2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: self.config.http2_stream_window_size})
        self.connection = Connection(http2, writer, config=self.config)  # type: ignore[arg-type]
        self.connection.flush()
        self.connection.initialize()
        self.processor = EventsProcessor(self.handler, self.connection)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.connection.feed(data)
        except ProtocolError:
            self.connection.flush()  # the GOAWAY saying why, before grpclib closes the transport
            self.processor.close("Protocol error")
            return
        process = self.processor.process
        for event in events:
            process(event)
        if not self.connection.is_closing():  # a GOAWAY from the client has had grpclib close it
            self.connection.flush()


class Http2Server(grpclib.server.Server):
    """`grpclib.server.Server` whose connections run on `ServerProtocol`."""

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()  # also registers the connection's handler with the server
        return ServerProtocol(protocol.handler, protocol.config, protocol.h2_config)
