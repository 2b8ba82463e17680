"""Cameras: one decode task per camera (`CameraRunner`) with a reconnecting state machine, its options and sources.

Import the public names from here; the modules behind them are `options`, `state`, `sampling`, `sources` and
`runner`.
"""

from edgebox.cameras import decode_meter
from edgebox.cameras.options import CAMERA_CONFIG_KEYS, CameraOptions, Roi, parse_camera_options
from edgebox.cameras.runner import CameraRunner, CapturedFrame, backoff_delay
from edgebox.cameras.sampling import PerFrameSource, SampledFrame, Sampler
from edgebox.cameras.sources import (
    MAX_URL_LENGTH,
    DemoSource,
    FrameSource,
    OpenCvSource,
    mask_url,
    open_source,
    validate_source_url,
)
from edgebox.cameras.state import CameraState, CameraStatus, StreamError, StreamFailure, StreamStalled

__all__ = [
    "CAMERA_CONFIG_KEYS",
    "MAX_URL_LENGTH",
    "CameraOptions",
    "CameraRunner",
    "CameraState",
    "CameraStatus",
    "CapturedFrame",
    "DemoSource",
    "FrameSource",
    "OpenCvSource",
    "PerFrameSource",
    "Roi",
    "SampledFrame",
    "Sampler",
    "StreamError",
    "StreamFailure",
    "StreamStalled",
    "backoff_delay",
    "decode_meter",
    "mask_url",
    "open_source",
    "parse_camera_options",
    "validate_source_url",
]
