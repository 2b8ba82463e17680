"""The HTTP/2 layer under grpclib, side by side in one process on the same bytes: h2 (what grpclib ships with)
against edgebox.api.http2 (what the engine runs).

    .venv/bin/python bench/http2_layer.py                       # ~30 s
    .venv/bin/python bench/http2_layer.py --calls 20000 --rounds 7

Two measurements, the two stacks alternating in every round:

- connection: one unary call's HTTP/2 work alone. Receive what a grpc-go client sends per call (HEADERS with its
  8 fields, HPACK-indexed as grpc-go does, a new grpc-timeout each time; DATA with a 5-byte message; the
  WINDOW_UPDATE and PING its previous reply caused), acknowledge the message, send the reply's HEADERS, DATA and
  trailers, take the bytes. This is the cost of the layer per call.
- grpclib: a whole unary call to grpclib's own health service (`grpc.health.v1.Health/Check`, Google protobuf),
  through grpclib's server protocol fed the same bytes without a socket: grpclib on h2 as shipped, against the
  engine's `ServerProtocol` (edgebox.api.http2 and coalesced writes). The server's CPU per call, minus the kernel.

Prints microseconds per call (median over rounds) and the ratio h2 / edgebox.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpclib.server
import h2.config
import h2.connection
import hpack
import uvloop
from grpclib.health.service import Health
from grpclib.health.v1.health_pb2 import HealthCheckRequest
from hyperframe.frame import DataFrame, Frame, HeadersFrame, PingFrame, SettingsFrame, WindowUpdateFrame

from edgebox.api.http2 import ServerConnection
from edgebox.api.http2.connection import PREFACE
from edgebox.api.protocol import ServerProtocol

REPLY_HEADERS = [(":status", "200"), ("content-type", "application/grpc+proto")]
TRAILERS = [("grpc-status", "0")]


def grpc_go_calls(path: str, message: bytes, calls: int) -> tuple[bytes, list[bytes]]:
    """The connection's opening bytes and each call's bytes, as a grpc-go client (ghz) sends them."""
    encoder = hpack.Encoder()
    opening = PREFACE + SettingsFrame(0).serialize()
    per_call = []
    for n in range(calls):
        stream_id = 2 * n + 1
        fields = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1:50051"),
                  ("content-type", "application/grpc"), ("user-agent", "grpc-go/1.85.0"), ("te", "trailers"),
                  ("grpc-timeout", f"{19999990 - n % 1000}u")]
        headers = HeadersFrame(stream_id, encoder.encode(fields))
        headers.flags.add("END_HEADERS")
        data = DataFrame(stream_id, len(message).to_bytes(5, "big") + message)
        data.flags.add("END_STREAM")
        previous_reply = b""
        if n:
            previous_reply = (WindowUpdateFrame(0, window_increment=16).serialize()
                              + PingFrame(0, opaque_data=n.to_bytes(8, "big")).serialize())
        per_call.append(previous_reply + headers.serialize() + data.serialize())
    return opening, per_call


def h2_server() -> h2.connection.H2Connection:
    # grpclib's own settings for h2 (grpclib.server.Server.__init__)
    return h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding="ascii", validate_inbound_headers=False,
        validate_outbound_headers=False, normalize_inbound_headers=False, normalize_outbound_headers=False))


def connection_us(make: Callable[[], object], opening: bytes, calls: list[bytes]) -> float:
    conn = make()
    conn.initiate_connection()
    conn.receive_data(opening)
    conn.data_to_send()
    reply = b"\0\0\0\0\x02\x08\x01"
    started = time.perf_counter()
    for n, data in enumerate(calls):
        stream_id = 2 * n + 1
        conn.receive_data(data)
        conn.acknowledge_received_data(5, stream_id)
        conn.send_headers(stream_id, REPLY_HEADERS)
        conn.send_data(stream_id, reply)
        conn.send_headers(stream_id, TRAILERS, end_stream=True)
        conn.data_to_send()
    return (time.perf_counter() - started) / len(calls) * 1e6


class Sink(asyncio.Transport):
    """Stands in for the socket: keeps what the server wrote, to be checked after the timing."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(bytes(data))

    def calls_answered_ok(self) -> int:
        """Streams that ended with grpc-status 0 in what was written."""
        data, at, decoder, ok = b"".join(self.chunks), 0, hpack.Decoder(), 0
        while at < len(data):
            frame, length = Frame.parse_frame_header(memoryview(data[at:at + 9]))
            frame.parse_body(memoryview(data[at + 9:at + 9 + length]))
            at += 9 + length
            if isinstance(frame, HeadersFrame):
                fields = dict(decoder.decode(frame.data))
                ok += "END_STREAM" in frame.flags and fields.get("grpc-status") == "0"
        return ok

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


async def grpclib_us(engine_protocol: bool, opening: bytes, calls: list[bytes]) -> float:
    server = grpclib.server.Server([Health()])
    protocol = server._protocol_factory()
    if engine_protocol:
        protocol = ServerProtocol(protocol.handler, protocol.config, protocol.h2_config)
    sink = Sink()
    protocol.connection_made(sink)
    protocol.data_received(opening)
    started = time.perf_counter()
    for data in calls:
        protocol.data_received(data)
        for _ in range(3):  # the handler task: start, reply, and the coalesced flush
            await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    protocol.connection_lost(None)
    answered = sink.calls_answered_ok()
    if answered != len(calls):
        raise SystemExit(f"only {answered} of {len(calls)} calls were answered OK: the measurement is invalid")
    return elapsed / len(calls) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000, help="calls per measurement (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the stacks alternating (default 5)")
    args = parser.parse_args()
    print(f"$ {' '.join(sys.argv)}\n{time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {platform.processor() or platform.machine()}"
          f", Python {platform.python_version()}")
    health = HealthCheckRequest().SerializeToString()
    opening, calls = grpc_go_calls("/grpc.health.v1.Health/Check", health, args.calls)
    results: dict[str, list[float]] = {key: [] for key in ("conn h2", "conn edgebox", "grpclib h2", "grpclib edgebox")}
    for _ in range(args.rounds):
        results["conn h2"].append(connection_us(h2_server, opening, calls))
        results["conn edgebox"].append(connection_us(ServerConnection, opening, calls))
        results["grpclib h2"].append(uvloop.run(grpclib_us(False, opening, calls)))
        results["grpclib edgebox"].append(uvloop.run(grpclib_us(True, opening, calls)))
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"\n{'per unary call':44} {'h2':>9} {'edgebox':>9} {'h2 / edgebox':>13}")
    for label, key in (("HTTP/2 connection alone", "conn"), ("whole call through grpclib (no socket)", "grpclib")):
        h2_us, ours = median[f"{key} h2"], median[f"{key} edgebox"]
        print(f"{label:44} {h2_us:7.1f}us {ours:7.1f}us {h2_us / ours:12.2f}x")
    print(f"(medians of {args.rounds} rounds of {args.calls} calls; the spread of each: "
          + ", ".join(f"{k} {min(v):.0f}-{max(v):.0f}" for k, v in results.items()) + ")")


if __name__ == "__main__":
    main()
