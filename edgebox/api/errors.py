"""Domain errors -> gRPC status with a google.rpc.ErrorInfo detail; unexpected exceptions -> INTERNAL_ERROR.

Clients read the numeric code from ErrorInfo.metadata["code"] (reason = the code's name); the status message
starts with "[code NAME]" for people. No traceback ever reaches a client; it goes to the log with an incident id.
"""

from __future__ import annotations

import logging

from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from edgebox.errors import EdgeboxError, InternalError, new_incident_id

log = logging.getLogger("edgebox.api")

ERROR_DOMAIN = "edgebox.infer"


def to_grpc_error(exc: EdgeboxError) -> GRPCError:
    details: list = [error_details_pb2.ErrorInfo(
        reason=exc.code.name, domain=ERROR_DOMAIN, metadata={"code": str(int(exc.code))})]
    if exc.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(exc.retry_after_s * 1000))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    return GRPCError(Status(int(exc.grpc_code)), exc.client_message(), details)


def internal_error(method: str, exc: BaseException) -> GRPCError:
    """Log an unexpected exception with an incident id and return the INTERNAL_ERROR status naming it."""
    incident = new_incident_id()
    log.error("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
    return to_grpc_error(InternalError(f"unexpected error in {method} (incident {incident}); the engine log "
                                       "has the details; please report it"))
