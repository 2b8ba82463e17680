"""Named limits on what clients may send; every check that enforces one names it in its error message."""

import re

MAX_ID_LENGTH = 64
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_URL_LENGTH = 2048
MAX_FRAME_BYTES = 32 * 1024 * 1024
MAX_FRAME_SIDE = 8192
MAX_BATCH_FRAMES = 64
MAX_PLUGINS_PER_WORKFLOW = 8
MAX_ZONES = 32
MAX_ZONE_POINTS = 64
MAX_PARAMS = 64
MAX_PARAM_LENGTH = 256
MAX_CAMERA_OPTIONS = 32
MAX_SUBSCRIPTION_FILTERS = 256


def check_id(kind: str, value: str) -> str | None:
    """None if `value` is a valid id, else the reason."""
    if not value:
        return f"{kind} is required"
    if not ID_PATTERN.match(value):
        return (f"{kind} {value[:80]!r} is invalid: use 1..{MAX_ID_LENGTH} characters of letters, digits, "
                "'_', '.' and '-'")
    return None
