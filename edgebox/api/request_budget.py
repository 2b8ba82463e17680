"""The bytes of request messages the gRPC server holds at once, over all calls: refused beyond a budget.

grpc.max_message_bytes bounds one message; without a bound over all of them, many clients sending large messages
at once (a hundred 64 MiB batches) would make the engine hold them all. A call holds its message's declared size
from the moment the 5-byte gRPC prefix announces it until the call ends; a client stream releases each message
when it reads the next. This module owns only that count; edgebox.api.server reads the prefixes.
"""

from __future__ import annotations

from edgebox.config import GrpcConfig
from edgebox.errors import ResourceExhausted

RETRY_AFTER_S = 1.0


class RequestBufferFull(ResourceExhausted):
    """Receiving this message would take the requests held at once past grpc.max_buffered_request_bytes."""


class RequestBytesBudget:
    """Counts the request bytes held per call (asyncio thread only); `hold` refuses what does not fit."""

    def __init__(self, limit: int = GrpcConfig.max_buffered_request_bytes) -> None:
        self.limit = limit
        self.in_use = 0
        self._held: dict[int, int] = {}  # id of grpclib's protocol stream -> bytes its current message holds

    def hold(self, stream: object, size: int) -> None:
        """`stream` announced a message of `size` bytes: count it, or raise RequestBufferFull."""
        self.release(stream)  # the stream's previous message (a client stream) has been handled
        if self.in_use + size > self.limit:
            raise RequestBufferFull(
                f"the engine is already receiving {self.in_use} bytes of requests; this {size}-byte message would "
                f"take it past {self.limit} (grpc.max_buffered_request_bytes). Retry, or send smaller messages",
                retry_after_s=RETRY_AFTER_S)
        self.in_use += size
        self._held[id(stream)] = size

    def release(self, stream: object) -> None:
        """The call on `stream` is done with its message (or ended)."""
        self.in_use -= self._held.pop(id(stream), 0)


# One per process, like the grpclib reader it serves (edgebox.api.server replaces grpclib's module-level reader):
# memory is the process's, so engines sharing one process (tests) share the budget too.
REQUEST_BYTES = RequestBytesBudget()
