"""Shared pieces of the reliability tests: raw gRPC calls, call outcomes, RSS, and polling the engine.

The engine itself is run with `tests.support.engine` (subprocess or in-process); nothing here fakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase
from grpclib.encoding.proto import ProtoStatusDetailsCodec
from grpclib.exceptions import GRPCError, StreamTerminatedError

from edgebox.client import EdgeboxClientError
from edgebox.config import EngineConfig
from edgebox.proto_gen import infer as pb

SERVICE = "/infer.InferenceService/"
UNARY_METHODS = ("AddCamera", "RemoveCamera", "ListCameras", "DeployWorkflow", "UpdateWorkflow", "DeleteWorkflow",
                 "ListWorkflows", "InferSingleFrame", "InferBatch", "HealthCheck", "GetMetrics")
# Statuses a malformed or hostile request may legitimately end with. INTERNAL and UNKNOWN mean a bug.
CLEAN_ERRORS = {Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS, Status.FAILED_PRECONDITION,
                Status.RESOURCE_EXHAUSTED, Status.DEADLINE_EXCEEDED, Status.UNAVAILABLE}


@dataclass(frozen=True)
class Outcome:
    """How one call ended: status OK with a value, or a gRPC status with the engine's code and message."""

    status: Status
    code: int = 0
    message: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


async def attempt(call: Awaitable[Any]) -> Outcome:
    """Await a client call and return how it ended (client errors become an Outcome, not an exception)."""
    try:
        value = await call
    except EdgeboxClientError as exc:
        return Outcome(exc.status, exc.code, exc.message)
    except GRPCError as exc:
        return Outcome(exc.status, EdgeboxClientError.from_grpc(exc).code, exc.message or "")
    return value if isinstance(value, Outcome) else Outcome(Status.OK, value=value)


def assert_clean(outcome: Outcome, what: object = "") -> None:
    """OK, or a clean status from the engine's error table: "[code NAME] prose", no traceback, never INTERNAL."""
    if outcome.ok:
        return
    assert outcome.status in CLEAN_ERRORS, f"{what!r:.300} ended with {outcome}"
    assert "Traceback" not in outcome.message and 'File "' not in outcome.message, outcome
    if outcome.code:  # statuses made by the engine carry the code; grpclib's own (deadline) do not
        assert outcome.message.startswith(f"[{outcome.code} "), outcome


class Figures:
    """Measured figures (recovery times, RSS, counts), printed at the end of the run and with -s."""

    def __init__(self, store: list[tuple[str, str]]) -> None:
        self._store = store

    def add(self, what: str, value: str) -> None:
        self._store.append((what, value))
        print(f"[reliability] {what}: {value}")


# -- raw calls: bytes in, bytes out, the 5-byte gRPC prefix written by hand when asked ---------------------------
class RawCodec(CodecBase):
    """A codec that sends and returns bytes as they are (the content type stays application/grpc+proto)."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return bytes(data)


def raw_channel(host: str, port: int) -> Channel:
    return Channel(host, port, codec=RawCodec(), status_details_codec=ProtoStatusDetailsCodec())


async def raw_unary(channel: Channel, method: str, body: bytes | None, *, framed: bool = True,
                    timeout: float = 30.0) -> Outcome:
    """Call `method` with `body` as the request message (framed=True: grpclib adds the prefix) or as the whole
    DATA payload (framed=False: prefix and all, written as given). body=None ends the request with no message."""
    try:
        async with channel.request(SERVICE + method, Cardinality.STREAM_UNARY, None, None,
                                   timeout=timeout) as stream:
            if body is None:
                await stream.send_request(end=True)
            elif framed:
                await stream.send_message(body, end=True)
            else:
                await stream.send_request()
                await stream._stream.send_data(body, end_stream=True)  # raw bytes on purpose, prefix and all
                stream._end_done = True  # tell grpclib the request side is ended
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
            return Outcome(Status.OK, value=reply)
    except GRPCError as exc:
        info = EdgeboxClientError.from_grpc(exc)
        return Outcome(exc.status, info.code, exc.message or "")


async def raw_server_stream(channel: Channel, method: str, body: bytes, *, read_for: float = 0.3,
                            timeout: float = 30.0) -> Outcome:
    """Open a server-streaming (or bidi) call with one raw message; read replies for `read_for` seconds, then
    cancel. A stream still open then counts as OK (value = replies so far)."""
    replies: list[bytes] = []
    try:
        async with channel.request(SERVICE + method, Cardinality.STREAM_STREAM, None, None,
                                   timeout=timeout) as stream:
            await stream.send_message(body, end=True)
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(read_for):
                    while (reply := await stream.recv_message()) is not None:
                        replies.append(reply)
                    await stream.recv_trailing_metadata()
                    return Outcome(Status.OK, value=replies)
            await stream.cancel()
            return Outcome(Status.OK, value=replies)
    except GRPCError as exc:
        info = EdgeboxClientError.from_grpc(exc)
        return Outcome(exc.status, info.code, exc.message or "", replies)
    except StreamTerminatedError as exc:
        return Outcome(Status.CANCELLED, message=str(exc), value=replies)


# -- protobuf wire helpers (to send what the generated classes cannot: unknown enum values, odd fields) ----------
def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers are ten-byte two's complement on the wire
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(value)) + value


def without_admission(engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """An `engine` config section with load-based admission off (where this version has it): these tests add
    cameras on a busy machine, and only engine.max_cameras may refuse them."""
    section = dict(engine or {})
    if "admission_max_load" in EngineConfig.__dataclass_fields__:
        section["admission_max_load"] = 0
    return section


# -- processes and polling --------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB, from /proc."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def poll(check: Callable[[], Awaitable[Any]], *, timeout: float, interval: float = 0.25,
               what: str = "the condition") -> Any:
    """Await `check()` until it returns something truthy (asyncio side); fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} did not hold within {timeout:g} s (last: {last!r:.500})")


async def camera(client: Any, camera_id: str) -> pb.CameraInfo | None:
    return next((c for c in await client.list_cameras() if c.camera_id == camera_id), None)


async def wait_streaming(client: Any, camera_ids: list[str], timeout: float = 90.0) -> float:
    """Seconds until every camera in `camera_ids` is STREAMING (asyncio side)."""
    started = time.monotonic()

    async def all_streaming() -> bool:
        states = {c.camera_id: c.state for c in await client.list_cameras()}
        return all(states.get(cid) == pb.CameraState.STREAMING for cid in camera_ids)

    await poll(all_streaming, timeout=timeout, what=f"cameras {camera_ids} STREAMING")
    return time.monotonic() - started
