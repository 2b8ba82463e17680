"""Frame sources: the `FrameSource` protocol the runner drives and `open_source`, which picks one by URL scheme.

A source is single-use (open, read until StreamFailure, aclose); the runner builds a new one per attempt. It counts
every frame it receives with the runner's `Sampler` and hands over only the sampled ones. This module re-exports
the implementations (`OpenCvSource`, `DemoSource`) and the URL check AddCamera calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edgebox.cameras.demo_source import DemoSource
from edgebox.cameras.opencv_source import OpenCvSource
from edgebox.cameras.options import CameraOptions
from edgebox.cameras.sampling import SampledFrame, Sampler
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
    """What the runner needs from a camera: the three methods may block only by awaiting."""

    clock: Callable[[], float]  # the clock the source times arrivals with (Sampler.arrived's `now`)

    async def open(self, sampler: Sampler) -> None:
        """Connect; raises StreamFailure saying why not. From then on it calls sampler.arrived() for every
        frame it receives, in whichever thread receives it, and decodes and keeps only the ones it samples."""

    async def read(self) -> SampledFrame | None:
        """The next sampled frame, or None when frames arrived but none was sampled (a source that runs on the
        trio thread returns after every frame, so that the runner's watchdog deadline moves on); raises
        StreamFailure (StreamStalled when the sampler judged a frame stale, SOURCE_ENDED at the end)."""

    async def aclose(self) -> None:
        """Release everything; safe to call after a failed open and more than once."""


def open_source(url: str, options: CameraOptions) -> FrameSource:
    """A new, unopened source for `url` (already checked by validate_source_url; raises InvalidRequest if not)."""
    parsed = parse_source_url(url)
    if parsed.kind == "demo":
        return DemoSource(parsed.target)
    return OpenCvSource(url, options, parsed=parsed)
