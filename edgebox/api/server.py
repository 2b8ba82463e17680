"""Hosting grpclib on the bridge's asyncio loop, TLS, the request size limits, and the graceful drain.

grpclib has no graceful shutdown: `Server.close()` cancels calls in flight. `GrpcServer.drain` therefore
refuses new calls (UNAVAILABLE, HealthCheck still answers STOPPING), ends result streams, waits for the calls in
flight up to the deadline, and only then closes the server.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpclib.protocol
import grpclib.server
import trio
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.health.check import ServiceStatus
from grpclib.health.service import OVERALL, Health

from edgebox.api.codec import MalformedMessage, PreEncodedProtoCodec
from edgebox.api.protocol import Http2Server
from edgebox.api.request_budget import REQUEST_BYTES
from edgebox.api.service import CallTracker, InferenceService
from edgebox.bridge import Bridge, open_bridge
from edgebox.config import GrpcConfig, TlsConfig
from edgebox.errors import ResourceExhausted
from edgebox.node import Node

log = logging.getLogger("edgebox.api")

CLOSE_TIMEOUT_S = 5.0


class MessageTooLarge(ResourceExhausted):
    """A request message is larger than grpc.max_message_bytes."""


def install_message_limit(max_bytes: int, max_buffered_bytes: int) -> None:
    """Refuse oversized requests from their 5-byte gRPC prefix, before buffering them: one message over
    `max_bytes`, or one that would take the requests held at once past `max_buffered_bytes` (REQUEST_BYTES).

    grpclib reads any declared length into memory and has no limit option, so its module-level reader is
    replaced (grpclib is pinned; tests/api/test_limits.py checks this still works).
    """
    REQUEST_BYTES.limit = max_buffered_bytes

    async def recv_exactly(stream, size: int, problem: str) -> bytes:  # stream: grpclib's, untyped
        try:
            return await stream.recv_data(size)
        except AssertionError:  # grpclib's buffer asserts when the stream ends within the bytes asked for
            raise MalformedMessage(problem) from None

    async def recv_limited(stream, codec, message_type):  # grpclib's reader signature
        meta = await recv_exactly(stream, 5, "the request ended inside a message prefix")
        if not meta:
            return None
        if len(meta) != 5:
            raise MalformedMessage("the request ended inside a message prefix")
        if meta[0]:
            raise MalformedMessage("compressed messages are not supported; send them uncompressed")
        length = struct.unpack(">I", meta[1:])[0]
        if length > max_bytes:
            raise MessageTooLarge(f"the request message is {length} bytes; this engine accepts at most "
                                  f"{max_bytes} (grpc.max_message_bytes)")
        REQUEST_BYTES.hold(stream, length)  # released at the stream's next message or its end (EdgeboxServer)
        data = await recv_exactly(stream, length, f"the request message ended before its {length} bytes")
        if len(data) != length:
            raise MalformedMessage(f"the request message ended after {len(data)} of {length} bytes")
        return codec.decode(data, message_type)

    grpclib.server.recv_message = recv_limited


class EdgeboxServer(Http2Server):
    """The engine's grpclib server: edgebox's HTTP/2 connection with coalesced writes (Http2Server), and every
    stream's request bytes released when it ends."""

    def _protocol_factory(self) -> grpclib.protocol.H2Protocol:
        protocol = super()._protocol_factory()
        handler = protocol.handler  # one per connection; accept() is called for each new stream
        accept = handler.accept

        def accept_releasing(stream: grpclib.protocol.Stream, headers: Any, release_stream: Any) -> None:
            def release() -> None:  # grpclib calls it once the stream's handler is done, whatever happened
                REQUEST_BYTES.release(stream)
                release_stream()

            accept(stream, headers, release)

        handler.accept = accept_releasing
        return protocol


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=str(tls.client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context


@dataclass
class GrpcServer:
    bridge: Bridge
    server: grpclib.server.Server
    tracker: CallTracker
    health_status: ServiceStatus
    host: str
    port: int

    def set_serving(self, serving: bool) -> None:
        self.bridge.loop.call_soon_threadsafe(self.health_status.set, serving)

    async def drain(self, timeout_s: float) -> int:
        """Refuse new calls and wait up to timeout_s for those in flight; returns how many were still running."""

        async def drain_in_asyncio() -> int:
            import asyncio

            self.tracker.start_draining()
            self.health_status.set(False)
            try:
                await asyncio.wait_for(self.tracker.wait_idle(), timeout_s)
            except TimeoutError:
                pass
            return self.tracker.in_flight

        left = await self.bridge.call_in_asyncio(drain_in_asyncio)
        if left:
            log.warning("drain deadline (%.0f s) passed with %d call(s) in flight; cancelling them", timeout_s, left)
        return left

    async def close(self) -> None:
        async def close_in_asyncio() -> None:
            import asyncio

            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), CLOSE_TIMEOUT_S)
            except TimeoutError:
                log.warning("gRPC connections did not close within %.0f s", CLOSE_TIMEOUT_S)

        await self.bridge.call_in_asyncio(close_in_asyncio)


@contextlib.asynccontextmanager
async def open_grpc_server(config: GrpcConfig, node: Node) -> AsyncIterator[GrpcServer]:
    """Start the asyncio thread and the gRPC server on it; on exit close both (calls are drained by then)."""
    install_message_limit(config.max_message_bytes, config.max_buffered_request_bytes)
    ssl_context = server_ssl_context(config.tls) if config.tls is not None else None
    async with open_bridge() as bridge:

        async def start() -> GrpcServer:
            tracker = CallTracker()
            service = InferenceService(node, bridge, tracker)
            health_status = ServiceStatus()
            health = Health({service: [health_status], OVERALL: [health_status]})
            server = EdgeboxServer([service, health], codec=PreEncodedProtoCodec(),
                                   status_details_codec=ProtoStatusDetailsCodec())
            await server.start(config.host, config.port, ssl=ssl_context, reuse_address=True)
            port = server._server.sockets[0].getsockname()[1]  # grpclib does not expose the bound port
            return GrpcServer(bridge, server, tracker, health_status, config.host, port)

        grpc_server = await bridge.call_in_asyncio(start)
        scheme = "grpcs" if ssl_context else "grpc"
        log.info("gRPC listening on %s://%s:%d%s", scheme, config.host, grpc_server.port,
                 " (mTLS)" if config.tls and config.tls.client_ca_file else "")
        try:
            yield grpc_server
        finally:
            with trio.CancelScope(shield=True):
                await grpc_server.close()
