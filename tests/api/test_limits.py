"""Request size and wire-format limits: what a client that sends too much, or not protobuf at all, gets back.

These talk to the engine with a raw grpclib channel (bytes in, bytes out) where the typed client cannot send
the bad input. Also checks that edgebox.api.server's replacement of grpclib's request reader still works with
the pinned grpclib.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
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


# -- requests held at once, over all calls (grpc.max_buffered_request_bytes) ----------------------------------------
BUDGET_MESSAGE_BYTES = 2 * 1024 * 1024
BUDGET_BYTES = 5 * 1024 * 1024  # two announced 2 MiB messages fit, a third does not


@pytest.fixture(scope="module")
def budget_engine(tmp_path_factory):
    proc = start_engine_process(tmp_path_factory.mktemp("budget"), {"grpc": {
        "max_message_bytes": BUDGET_MESSAGE_BYTES, "max_buffered_request_bytes": BUDGET_BYTES}})
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()


def bgr_request(width: int = 1000, height: int = 600) -> bytes:
    frame = pb.Frame(image_data=b"\x00" * (width * height * 3), format=pb.PixelFormat.BGR8, width=width, height=height)
    return bytes(pb.InferRequest(plugin="motion", frame=frame))


async def until_outcome(call: Callable[[], Awaitable[bytes]], wanted: Callable[[EdgeboxClientError | None], bool],
                        what: str) -> EdgeboxClientError | None:
    """Repeat `call` until its outcome (None for OK) is `wanted`: the server's reads run on their own schedule."""
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            await call()
            outcome = None
        except EdgeboxClientError as exc:
            outcome = exc
        if wanted(outcome):
            return outcome
        assert asyncio.get_running_loop().time() < deadline, f"{what}: last outcome {outcome}"
        await asyncio.sleep(0.05)


async def test_messages_held_at_once_past_max_buffered_request_bytes_are_refused_and_given_back(aio, budget_engine):
    host, port = budget_engine.host, budget_engine.port

    def refused(outcome: EdgeboxClientError | None) -> bool:
        return outcome is not None and outcome.status is Status.RESOURCE_EXHAUSTED

    async def scenario() -> tuple[EdgeboxClientError, list[EdgeboxClientError | None]]:
        # Two calls announce 2 MiB messages and send 1 KiB of each: the engine holds 4 MiB for them.
        async with contextlib.AsyncExitStack() as held:
            channel = Channel(host, port, codec=RawCodec(), status_details_codec=ProtoStatusDetailsCodec())
            held.callback(channel.close)
            for _ in range(2):
                stream = await held.enter_async_context(
                    channel.request(INFER, Cardinality.UNARY_UNARY, bytes, bytes, timeout=60))
                await stream.send_request()
                await stream._stream.send_data(struct.pack(">BI", 0, BUDGET_MESSAGE_BYTES) + bytes(1024))
                held.push_async_callback(stream.cancel)
            # A third 2 MiB message does not fit; until the engine has read both prefixes it may still be taken
            # (an undecodable one, so that it only costs a quick INVALID_ARGUMENT).
            undecodable = b"\x0f" * BUDGET_MESSAGE_BYTES
            full = await until_outcome(lambda: raw_call(host, port, INFER, message=undecodable), refused,
                                       "a third message while two are held")
            assert (await raw_call(host, port, HEALTH, message=b"")), "a small call still fits"
        # The two held calls are cancelled: their bytes go back, and stay back call after call.
        await until_outcome(lambda: raw_call(host, port, INFER, message=bgr_request()), lambda o: o is None,
                            "a 2 MiB message once the held calls are gone")
        after = []
        for _ in range(3):  # a leak of one message per call would refuse the third
            try:
                await raw_call(host, port, INFER, message=bgr_request())
                after.append(None)
            except EdgeboxClientError as exc:
                after.append(exc)
        return full, after

    full, after = await aio.run(scenario)
    check(full, Status.RESOURCE_EXHAUSTED, ErrorCode.RESOURCE_EXHAUSTED)
    assert "grpc.max_buffered_request_bytes" in full.message and "retry after" in full.message.lower(), full.message
    assert after == [None, None, None]
    assert budget_engine.proc.poll() is None
