"""What ListCameras reports, published by the trio thread so that the gRPC thread answers without crossing into it.

The trio thread owns the cameras. `CameraListingPublisher.publish` copies what a listing shows into immutable
snapshots; any thread may read the last one with `current`, which returns it only while it is fresh: built at the
fleet's current revision (bumped by every add, remove and state or error change, so a caller never misses a change
it has seen happen) and at most MAX_AGE_S ago (so counters lag by at most that). A stale listing is rebuilt by
crossing into trio; while callers keep reading, `keep_fresh` republishes it before it goes stale.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import trio

from edgebox.cameras import CameraStatus
from edgebox.fleet import Camera, CameraFleet

# A listing older than this is rebuilt before it is returned: the most a listed counter (fps, frame age) can lag.
MAX_AGE_S = 0.5
# While read, the listing is republished this often, so readers find it fresh without crossing into trio.
REFRESH_INTERVAL_S = 0.2
# Refresh ticks without a read after which `keep_fresh` stops republishing until the next stale read (~10 s).
IDLE_TICKS = 50


@dataclass(frozen=True)
class CameraSnapshot:
    """One camera as a listing shows it, copied on the trio thread."""

    camera_id: str
    url: str
    workflow_id: str
    config: Mapping[str, str]
    status: CameraStatus  # a copy (CameraRunner.status); nobody writes it
    last_error: str
    fps_out: float
    frame_age_ms: float
    backend: str
    frames_dropped: int

    @classmethod
    def of(cls, camera: Camera) -> CameraSnapshot:
        pipeline = camera.pipeline
        return cls(camera_id=camera.camera_id, url=camera.url, workflow_id=camera.workflow_id,
                   config=MappingProxyType(dict(camera.config)), status=camera.status, last_error=camera.last_error,
                   fps_out=pipeline.fps_out, frame_age_ms=pipeline.frame_age_ms, backend=pipeline.backend,
                   frames_dropped=pipeline.frames_dropped)


@dataclass(frozen=True)
class CameraListing:
    revision: int  # the fleet's revision when it was built
    built_at: float  # time.monotonic()
    cameras: tuple[CameraSnapshot, ...]  # sorted by camera_id


class CameraListingPublisher:
    def __init__(self, fleet: CameraFleet) -> None:
        self._fleet = fleet
        self._listing: CameraListing | None = None
        self._reads = 0  # counted by `current` on any thread; `keep_fresh` only compares it between ticks
        self._wanted = trio.Event()

    def publish(self) -> CameraListing:
        """Build and publish the listing; on the trio thread. Wakes `keep_fresh` if it was idle."""
        listing = self._listing = self._build()
        self._wanted.set()
        return listing

    def _build(self) -> CameraListing:
        return CameraListing(self._fleet.revision, time.monotonic(),
                             tuple(CameraSnapshot.of(c) for c in self._fleet.cameras()))

    def current(self, now: float | None = None) -> CameraListing | None:
        """The published listing if it is fresh, else None (then call `publish` on the trio thread); any thread.

        Every call counts as a read for `keep_fresh` (a lost count between two threads only delays its idling).
        """
        self._reads += 1
        listing = self._listing
        if listing is None or listing.revision != self._fleet.revision:
            return None
        if (time.monotonic() if now is None else now) - listing.built_at > MAX_AGE_S:
            return None
        return listing

    async def keep_fresh(self) -> None:
        """Republish every REFRESH_INTERVAL_S while listings are read; idle after IDLE_TICKS ticks without a read."""
        while True:
            await self._wanted.wait()
            idle_ticks, reads = 0, self._reads
            while idle_ticks < IDLE_TICKS:
                await trio.sleep(REFRESH_INTERVAL_S)
                if self._reads == reads:
                    idle_ticks += 1
                else:
                    idle_ticks, reads = 0, self._reads
                self._listing = self._build()
            self._wanted = trio.Event()  # publishes while it was refreshing were reads it has counted already
