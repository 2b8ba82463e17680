"""Frame sources: the `FrameSource` protocol the runner drives and `open_source`, which picks one by URL scheme.

A source is single-use (open, read until StreamFailure, aclose); the runner builds a new one per attempt. This
module re-exports the implementations (`OpenCvSource`, `DemoSource`) and the URL check AddCamera calls.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from edgebox.cameras.demo_source import DemoSource
from edgebox.cameras.opencv_source import OpenCvSource
from edgebox.cameras.options import CameraOptions
from edgebox.cameras.state import StreamError, StreamFailure
from edgebox.cameras.urls import MAX_URL_LENGTH, mask_url, parse_source_url, validate_source_url

__all__ = [
    "MAX_URL_LENGTH",
    "DemoSource",
    "FrameSource",
    "OpenCvSource",
    "StreamError",
    "StreamFailure",
    "mask_url",
    "open_source",
    "validate_source_url",
]


class FrameSource(Protocol):
    """What the runner needs from a camera: all three may block only by awaiting."""

    async def open(self) -> None:
        """Connect; raises StreamFailure saying why not."""

    async def read(self) -> np.ndarray:
        """The next BGR uint8 frame (H, W, 3); raises StreamFailure, SOURCE_ENDED at the end."""

    async def aclose(self) -> None:
        """Release everything; safe to call after a failed open and more than once."""


def open_source(url: str, options: CameraOptions) -> FrameSource:
    """A new, unopened source for `url` (already checked by validate_source_url; raises InvalidRequest if not)."""
    parsed = parse_source_url(url)
    if parsed.kind == "demo":
        return DemoSource(parsed.target)
    return OpenCvSource(url, options, parsed=parsed)
