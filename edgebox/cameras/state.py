"""The vocabulary of a camera's health: its state, why a stream failed, and a status snapshot.

Owns the enums the gRPC layer maps by name (keep member names stable) and `StreamFailure`, the one exception a
frame source raises. It does not decide transitions; `runner.py` does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class CameraState(enum.Enum):
    """Where a camera's decode task is in its connect / stream / retry cycle."""

    REGISTERED = "registered"  # created, task not started yet
    CONNECTING = "connecting"  # first open in progress
    STREAMING = "streaming"  # frames arriving
    STALLED = "stalled"  # no new frame within watchdog_s; the source is being closed
    RECONNECTING = "reconnecting"  # transient failure; waiting out back-off or reopening
    FAILED = "failed"  # permanent-looking failure; still retried, at max_backoff_s


class StreamError(enum.Enum):
    """Why the last open or read failed, as precisely as the source could tell."""

    NONE = "none"
    REFUSED = "refused"  # nothing listens on host:port
    NOT_FOUND = "not_found"  # unknown path / mount / file / host name
    UNAUTHORIZED = "unauthorized"  # credentials missing or rejected
    TIMEOUT = "timeout"  # no answer, or no frame, in time
    UNSUPPORTED_CODEC = "unsupported_codec"  # reachable, but nothing decodable
    SOURCE_ENDED = "source_ended"  # end of file, or the server closed the stream
    OTHER = "other"


# Errors that retrying soon will not fix; the runner reports FAILED and retries at the cap.
PERMANENT_ERRORS = frozenset({StreamError.NOT_FOUND, StreamError.UNAUTHORIZED, StreamError.UNSUPPORTED_CODEC})


class StreamFailure(Exception):
    """A source could not open or read; `error` classifies it, `message` never holds a password."""

    def __init__(self, error: StreamError, message: str) -> None:
        super().__init__(f"{error.name}: {message}")
        self.error = error
        self.message = message


class StreamStalled(StreamFailure):
    """Frames stopped arriving (the watchdog) or a frame came back too late to be a new one: always TIMEOUT."""

    def __init__(self, message: str) -> None:
        super().__init__(StreamError.TIMEOUT, message)


@dataclass
class CameraStatus:
    """A copy of a camera's counters; `since` is trio.current_time() of the last state change."""

    state: CameraState = CameraState.REGISTERED
    error: StreamError = StreamError.NONE  # current error; NONE while STREAMING
    last_error: str = ""  # most recent failure message, kept after recovery
    fps_in: float = 0.0  # moving average of the arrival rate; 0 when not STREAMING
    frames_in: int = 0  # every frame the source received (decoded or only grabbed)
    frames_sampled: int = 0  # frames handed to on_frame (== last CapturedFrame.seq)
    reconnects: int = 0  # open attempts after the first one
    resolution: str = ""  # "WxH" of the last frame
    last_frame_at: float | None = None  # wall-clock time.time() of the last frame
    since: float = 0.0
