"""One HTTP/2 stream's state on the server side, and the receive-side flow-control window (RFC 9113 5.1, 6.9)."""

from __future__ import annotations

MAX_WINDOW = 2**31 - 1


class InboundWindow:
    """What the peer may still send, and when to give back what the application has read.

    The same rule as h2's WindowManager, so a client sees the WINDOW_UPDATEs it saw before: give back what was read
    once it is half the window, or sooner when the window is empty, so that a stream never stalls.
    """

    __slots__ = ("_processed", "available", "max_size")

    def __init__(self, size: int) -> None:
        self.available = size
        self.max_size = size
        self._processed = 0

    def consume(self, size: int) -> bool:
        """Count received bytes; False if the peer sent more than the window allowed."""
        self.available -= size
        return self.available >= 0

    def open(self, increment: int) -> None:
        """We widen the window (a WINDOW_UPDATE we send ourselves, or our larger SETTINGS_INITIAL_WINDOW_SIZE)."""
        self.available += increment
        self.max_size = max(self.max_size, self.available)

    def processed(self, size: int) -> int:
        """The application has read `size` bytes; returns the increment to send now (0: none yet)."""
        self._processed += size
        if not self._processed:
            return 0
        if self._processed >= self.max_size // 2 or (
                self.available == 0 and self._processed > min(1024, self.max_size // 4)):
            increment = min(self._processed, self.max_size - self.available)
            self._processed = 0
            self.available += increment
            return increment
        return 0


class ServerStream:
    """A client-opened stream while it is open in either direction; a closed stream is dropped by the connection.

    `open` and `closed` are what grpclib reads of h2's streams.
    """

    __slots__ = (
        "expected_length",
        "inbound",
        "local_closed",
        "outbound_window",
        "received_length",
        "remote_closed",
        "stream_id",
    )

    open = True
    closed = False

    def __init__(self, stream_id: int, inbound_window: int, outbound_window: int,
                 expected_length: int | None) -> None:
        self.stream_id = stream_id
        self.remote_closed = False  # the client sent END_STREAM: half-closed (remote)
        self.local_closed = False  # we sent END_STREAM: half-closed (local)
        self.inbound = InboundWindow(inbound_window)
        self.outbound_window = outbound_window
        self.expected_length = expected_length  # the request's content-length, checked against its DATA
        self.received_length = 0
