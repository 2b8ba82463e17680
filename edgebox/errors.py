"""Typed domain errors, each carrying its numeric InferErrorCode.

This module owns the one table that maps a code to a gRPC status and to an HTTP status; the gRPC layer and the
web console both read it. It does not import grpclib or starlette.
"""

from __future__ import annotations

import enum
import uuid
from typing import ClassVar

from edgebox.limits import MAX_ERROR_MESSAGE_CHARS


class ErrorCode(enum.IntEnum):
    """Numeric codes shared with clients (proto enum `infer.InferErrorCode`)."""

    OK = 0
    INVALID_REQUEST = 400
    ALREADY_EXISTS = 409
    FAILED_PRECONDITION = 412
    RESOURCE_EXHAUSTED = 429
    SHUTTING_DOWN = 503
    CAMERA_NOT_FOUND = 1001
    WORKFLOW_NOT_FOUND = 1002
    PLUGIN_LOAD_FAILED = 2001
    BACKEND_INIT_FAILED = 2002
    INFERENCE_TIMEOUT = 3001
    GPU_OUT_OF_MEMORY = 3002
    INTERNAL_ERROR = 9999


class GrpcCode(enum.IntEnum):
    """The gRPC status codes we use (values from the gRPC spec), so that domain code needs no grpclib."""

    OK = 0
    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14


# code -> (gRPC status, HTTP status). The single source of truth for both transports.
STATUS_BY_CODE: dict[ErrorCode, tuple[GrpcCode, int]] = {
    ErrorCode.INVALID_REQUEST: (GrpcCode.INVALID_ARGUMENT, 400),
    ErrorCode.ALREADY_EXISTS: (GrpcCode.ALREADY_EXISTS, 409),
    ErrorCode.FAILED_PRECONDITION: (GrpcCode.FAILED_PRECONDITION, 409),
    ErrorCode.RESOURCE_EXHAUSTED: (GrpcCode.RESOURCE_EXHAUSTED, 429),
    ErrorCode.SHUTTING_DOWN: (GrpcCode.UNAVAILABLE, 503),
    ErrorCode.CAMERA_NOT_FOUND: (GrpcCode.NOT_FOUND, 404),
    ErrorCode.WORKFLOW_NOT_FOUND: (GrpcCode.NOT_FOUND, 404),
    ErrorCode.PLUGIN_LOAD_FAILED: (GrpcCode.FAILED_PRECONDITION, 422),
    ErrorCode.BACKEND_INIT_FAILED: (GrpcCode.UNAVAILABLE, 503),
    ErrorCode.INFERENCE_TIMEOUT: (GrpcCode.DEADLINE_EXCEEDED, 504),
    ErrorCode.GPU_OUT_OF_MEMORY: (GrpcCode.RESOURCE_EXHAUSTED, 507),
    ErrorCode.INTERNAL_ERROR: (GrpcCode.INTERNAL, 500),
}


class EdgeboxError(Exception):
    """Base of every error a client may see; `code` says which, the message says what to do."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        # A hint for RESOURCE_EXHAUSTED-class errors; None means "do not retry blindly".
        self.retry_after_s = retry_after_s

    @property
    def grpc_code(self) -> GrpcCode:
        return STATUS_BY_CODE[self.code][0]

    @property
    def http_status(self) -> int:
        return STATUS_BY_CODE[self.code][1]

    def client_message(self) -> str:
        """The message as a client sees it: code and name first, so logs and grpcurl show both."""
        message = self.message
        if len(message) > MAX_ERROR_MESSAGE_CHARS:
            message = message[:MAX_ERROR_MESSAGE_CHARS] + "... (truncated)"
        text = f"[{int(self.code)} {self.code.name}] {message}"
        if self.retry_after_s is not None:
            text += f" (retry after {self.retry_after_s:g} s)"
        return text


class InvalidRequest(EdgeboxError):
    """A request field is missing, malformed or beyond its limit."""

    code = ErrorCode.INVALID_REQUEST


class AlreadyExists(EdgeboxError):
    code = ErrorCode.ALREADY_EXISTS


class FailedPrecondition(EdgeboxError):
    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhausted(EdgeboxError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class ShuttingDown(EdgeboxError):
    code = ErrorCode.SHUTTING_DOWN


class CameraNotFound(EdgeboxError):
    code = ErrorCode.CAMERA_NOT_FOUND


class WorkflowNotFound(EdgeboxError):
    code = ErrorCode.WORKFLOW_NOT_FOUND


class PluginLoadFailed(EdgeboxError):
    code = ErrorCode.PLUGIN_LOAD_FAILED


class BackendInitFailed(EdgeboxError):
    code = ErrorCode.BACKEND_INIT_FAILED


class InferenceTimeout(EdgeboxError):
    code = ErrorCode.INFERENCE_TIMEOUT


class GpuOutOfMemory(EdgeboxError):
    code = ErrorCode.GPU_OUT_OF_MEMORY


class InternalError(EdgeboxError):
    code = ErrorCode.INTERNAL_ERROR


def new_incident_id() -> str:
    """The id that ties an INTERNAL_ERROR's message to the traceback logged for it."""
    return uuid.uuid4().hex[:12]


class ConfigError(Exception):
    """The config file is invalid; `path` is the dotted key path ("grpc.port"), never reaches a client."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path or '<root>'}: {reason}")
        self.path = path
        self.reason = reason


class StoreError(Exception):
    """The state database is missing, unreadable or corrupt; startup stops with this message."""
