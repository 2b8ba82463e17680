"""The gRPC server's write coalescing: what one loop pass writes leaves as one socket write, a finished reply
leaves at once, nothing is reordered or lost, and a real grpclib server on loopback answers through it with about
one write per call instead of three."""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
from grpclib.client import Channel
from grpclib.health.service import Health
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from edgebox.api.protocol import Http2Server
from edgebox.api.write_coalescing import CoalescingTransport, ends_a_stream


class RecordingTransport(asyncio.Transport):
    """Stands in for the socket transport under test: records each write it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def server_frames():
    """Serialized frames of one unary reply, step by step, as grpclib has h2 produce them."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":path", "/x"), (":scheme", "http"), (":authority", "a")])
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    steps = {"settings": server.data_to_send()}
    server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    steps["headers"] = server.data_to_send()
    server.send_data(1, b"\0\0\0\0\x05hello")
    steps["data"] = server.data_to_send()
    server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    steps["trailers"] = server.data_to_send()
    return steps


def test_only_frames_that_end_a_stream_count_as_a_finished_reply():
    steps = server_frames()
    assert not ends_a_stream(steps["settings"])
    assert not ends_a_stream(steps["headers"])
    assert not ends_a_stream(steps["data"])
    assert ends_a_stream(steps["trailers"])
    assert ends_a_stream(steps["headers"] + steps["data"] + steps["trailers"])  # found behind other frames
    assert not ends_a_stream(b"")


def test_one_loop_pass_of_writes_leaves_as_one_write_in_order():
    async def main():
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        transport.write(b"one")
        transport.write(b"two")
        transport.write(b"three")
        assert inner.writes == []  # still in this loop pass
        await asyncio.sleep(0)
        assert inner.writes == [b"onetwothree"]
        transport.write(b"four")
        await asyncio.sleep(0)
        assert inner.writes == [b"onetwothree", b"four"]

    asyncio.run(main())


def test_a_finished_reply_is_written_at_once_with_what_came_before_it():
    steps = server_frames()

    async def main():
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        transport.write(steps["headers"])
        transport.write(steps["data"])
        assert inner.writes == []
        transport.write(steps["trailers"])
        assert inner.writes == [steps["headers"] + steps["data"] + steps["trailers"]]
        await asyncio.sleep(0)  # the pass's scheduled flush finds nothing left
        assert len(inner.writes) == 1

    asyncio.run(main())


def test_close_writes_what_is_buffered_first_and_nothing_is_written_after_it():
    async def main():
        inner = RecordingTransport()
        transport = CoalescingTransport(inner, asyncio.get_running_loop())
        transport.write(b"goaway")
        transport.close()
        assert inner.writes == [b"goaway"] and inner.closed
        transport.write(b"late")
        await asyncio.sleep(0)  # dropped, as the real transport would once closing
        assert inner.writes == [b"goaway"]

    asyncio.run(main())


def test_a_real_server_answers_many_calls_with_about_one_write_each(monkeypatch):
    inner_writes = 0
    flush = CoalescingTransport.flush

    def counting_flush(self):
        nonlocal inner_writes
        inner_writes += bool(self._pending)
        flush(self)

    monkeypatch.setattr(CoalescingTransport, "flush", counting_flush)
    calls = 50

    async def main():
        server = Http2Server([Health()])
        await server.start("127.0.0.1", 0)
        port = server._server.sockets[0].getsockname()[1]
        channel = Channel("127.0.0.1", port)
        try:
            stub = HealthStub(channel)
            replies = await asyncio.gather(*(stub.Check(HealthCheckRequest()) for _ in range(calls)))
        finally:
            channel.close()
            server.close()
            await server.wait_closed()
        return replies

    replies = asyncio.run(main())
    assert [r.status for r in replies] == [1] * calls  # SERVING, every one
    # grpclib alone writes 3 times per reply (headers, message, trailers) plus the connection's own frames
    assert calls <= inner_writes <= calls + 5, inner_writes
