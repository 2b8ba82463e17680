"""A protobuf codec for grpclib that also sends pre-encoded bytes as they are, and types decode failures.

Results are encoded once and fanned out as bytes (see results.ResultHub); every other message is encoded by the
message itself, betterproto2 and Google protobuf alike.
"""

from __future__ import annotations

from typing import Any

from grpclib.encoding.proto import ProtoCodec

from edgebox.errors import InvalidRequest


class MalformedMessage(InvalidRequest):
    """The request bytes are not a valid message of the method's request type."""


class PreEncodedProtoCodec(ProtoCodec):
    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, (bytes, bytearray, memoryview)):
            return bytes(message)
        return super().encode(message, message_type)

    def decode(self, data: bytes, message_type: Any) -> Any:
        try:
            return message_type.FromString(data)
        except Exception as exc:
            raise MalformedMessage(f"the request is not a valid {message_type.__name__} message: {exc}") from None
