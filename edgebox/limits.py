"""Named limits on what clients may send; every check that enforces one names it in its error message."""

import re

MAX_ID_LENGTH = 64
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_URL_LENGTH = 2048
MAX_FRAME_BYTES = 32 * 1024 * 1024
MAX_FRAME_SIDE = 8192
# Pixels of client frames decoded at the same time (two frames of the largest size): a 200 KB PNG can claim
# 8192x8192 and decode to 200 MB, so a batch of them must wait for memory instead of exhausting it.
MAX_DECODED_PIXELS_IN_FLIGHT = 2 * MAX_FRAME_SIDE * MAX_FRAME_SIDE
MAX_BATCH_FRAMES = 64
MAX_PLUGINS_PER_WORKFLOW = 8
MAX_ZONES = 32
MAX_ZONE_POINTS = 64
MAX_PARAMS = 64
MAX_PARAM_LENGTH = 256
MAX_CAMERA_OPTIONS = 32
MAX_SUBSCRIPTION_FILTERS = 256
# Characters of an error message sent to a client. Messages quote what the client sent, and a gRPC status
# message travels in an HTTP/2 header: an unbounded one (a 30 KB camera id quoted back) made clients drop the
# whole connection.
MAX_ERROR_MESSAGE_CHARS = 1000


def check_id(kind: str, value: str) -> str | None:
    """None if `value` is a valid id, else the reason."""
    if not value:
        return f"{kind} is required"
    if not ID_PATTERN.match(value):
        return (f"{kind} {value[:80]!r} is invalid: use 1..{MAX_ID_LENGTH} characters of letters, digits, "
                "'_', '.' and '-'")
    return None
