"""Request size and wire-format limits: what a client that sends too much, or not protobuf at all, gets back.

These talk to the engine with a raw grpclib channel (bytes in, bytes out) where the typed client cannot send
the bad input. Also checks that edgebox.api.server's replacement of grpclib's request reader still works with
the pinned grpclib.
"""

from __future__ import annotations

import struct
from typing import Any

import grpclib.server
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError

from edgebox.client import EdgeboxClientError, pb
from edgebox.errors import ErrorCode
from tests.support.engine import (
    CALL_TIMEOUT_S,
    assert_readable,
    connect,
    expect_error,
    photo_png,
    start_engine_process,
)

MAX_MESSAGE_BYTES = 2 * 1024 * 1024
INFER = "/infer.InferenceService/InferSingleFrame"
HEALTH = "/infer.InferenceService/HealthCheck"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    proc = start_engine_process(tmp_path_factory.mktemp("limits"), {"grpc": {"max_message_bytes": MAX_MESSAGE_BYTES}})
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()


@pytest.fixture(scope="module")
def client(aio, engine):
    with connect(aio, engine.host, engine.port) as c:
        yield c


class RawCodec(CodecBase):
    """Sends and returns message bytes as they are."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


async def raw_call(host: str, port: int, path: str, *, message: bytes | None = None,
                   data: bytes | None = None) -> bytes:
    """One unary call: `message` is framed by grpclib; `data` is sent as the request body exactly as given."""
    channel = Channel(host, port, codec=RawCodec(), status_details_codec=ProtoStatusDetailsCodec())
    try:
        async with channel.request(path, Cardinality.UNARY_UNARY, bytes, bytes, timeout=CALL_TIMEOUT_S) as stream:
            if message is not None:
                await stream.send_message(message, end=True)
            else:
                await stream.send_request()
                await stream._stream.send_data(data or b"", end_stream=True)  # grpclib has no public raw write
            return await stream.recv_message()
    except GRPCError as exc:
        raise EdgeboxClientError.from_grpc(exc) from None
    finally:
        channel.close()


def check(exc: EdgeboxClientError, status: Status, code: ErrorCode) -> None:
    assert exc.status == status, exc
    assert exc.code == int(code), exc
    assert_readable(exc)


def test_the_request_reader_replacement_is_installed_in_pinned_grpclib():
    # edgebox.api.server replaces this module attribute; grpclib's Stream.recv_message must still look it up.
    import inspect

    assert "recv_message(self._stream" in inspect.getsource(grpclib.server.Stream.recv_message)
    assert grpclib.__version__ == "0.4.9"


async def test_message_over_max_message_bytes_returns_resource_exhausted(client):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_MESSAGE_BYTES + 1024)
    exc = await expect_error(client.infer(big, plugin="person"))
    check(exc, Status.RESOURCE_EXHAUSTED, ErrorCode.RESOURCE_EXHAUSTED)
    assert "grpc.max_message_bytes" in exc.message
    # The connection and the engine are fine afterwards.
    assert (await client.health()).status == pb.HealthStatus.SERVING
    assert "person" in (await client.infer(photo_png("astronaut"), plugin="person")).json_data


async def test_message_under_max_message_bytes_is_accepted(client):
    frame = pb.Frame(image_data=b"\x00" * (1000 * 600 * 3), format=pb.PixelFormat.BGR8, width=1000, height=600)
    request = pb.InferRequest(plugin="person", frame=frame)
    assert len(bytes(request)) < MAX_MESSAGE_BYTES
    result = (await client.aio.run(client.client.stub.infer_single_frame, request)).result
    assert '"width":1000' in result.json_data


@pytest.mark.parametrize("payload", [
    b"\x0a\xff\xff\xff\xff\x0f",  # field 1 (workflow_id) claims 4 GB
    b"\x08\x01",  # field 1 (a string) sent as a varint
    b"\x1a\x05\x0a\x03ab",  # field 3 (frame) shorter than its length
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",  # a key that is not a varint
    b"\x0f",  # wire type 7 does not exist
])
async def test_malformed_protobuf_returns_invalid_argument(aio, engine, payload):
    exc = await expect_error(aio.run(raw_call, engine.host, engine.port, INFER, message=payload))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "InferRequest" in exc.message


async def test_request_body_shorter_than_its_prefix_returns_invalid_argument(aio, engine):
    body = struct.pack(">BI", 0, 100) + b"\x12\x06person"
    exc = await expect_error(aio.run(raw_call, engine.host, engine.port, INFER, data=body))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)


async def test_compressed_request_returns_invalid_argument(aio, engine):
    body = struct.pack(">BI", 1, 8) + b"\x12\x06person"
    exc = await expect_error(aio.run(raw_call, engine.host, engine.port, INFER, data=body))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "compressed" in exc.message


async def test_unary_request_without_a_message_returns_invalid_argument(aio, engine):
    exc = await expect_error(aio.run(raw_call, engine.host, engine.port, INFER, data=b""))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)


async def test_unknown_fields_are_ignored_as_protobuf_does(aio, engine):
    reply = await aio.run(raw_call, engine.host, engine.port, HEALTH, message=b"\xa0\x06\x01")  # field 100
    assert pb.HealthCheckResponse.FromString(reply).status == pb.HealthStatus.SERVING
