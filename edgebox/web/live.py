"""Live views: each camera's latest frame with boxes (JPEG and MJPEG), recent alarms, and the alarm event stream.

Each browser's event stream has its own bounded hub subscription that ends when the browser goes away or the hub
closes; snapshots and replays come from the `AlarmLog`. JPEG encoding runs in worker threads behind one limiter.
It does not decide what is an alarm (workflows do).
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.errors import CameraNotFound, InvalidRequest, ShuttingDown
from edgebox.fleet import Camera
from edgebox.frames import draw_detections, encode_jpeg
from edgebox.limits import check_id
from edgebox.node import Lifecycle, Node
from edgebox.pipeline import LatestFrame
from edgebox.results import Delivery, ResultFilter, Subscription, TrioSink
from edgebox.web.alarm_log import AlarmEntry, AlarmLog
from edgebox.web.streaming import LiveStream, SendChunk, sse_event

log = logging.getLogger("edgebox.web.live")

EVENT_BUFFER = 16  # alarms queued per event stream; beyond it the hub counts them as missed for that browser
KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
RECONNECT_MS = 3000  # the browser's EventSource retry delay
THUMBNAIL_WIDTH = 320
FRAME_WIDTH_RANGE = (160, 1920)  # ?width= for frame.jpg and stream.mjpg
MJPEG_MAX_FPS = 15.0
MJPEG_POLL_S = 0.05  # how often a stream looks for a newer frame
ENCODE_THREADS = 2  # JPEG encodes at once; the machine has few cores and inference comes first
FRAME_CACHE_SIZE = 256  # (camera, width) pairs whose last JPEG is kept
JPEG_QUALITY = 80


# -- frames -------------------------------------------------------------------------------------------------
def _render(frame: LatestFrame, width: int) -> bytes:
    canvas = draw_detections(frame.image, frame.detections) if frame.detections else frame.image
    return encode_jpeg(_fit(canvas, width), JPEG_QUALITY)


def _fit(image: np.ndarray, width: int) -> np.ndarray:
    h, w = image.shape[:2]
    if width <= 0 or w <= width:
        return image
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def _thumbnail(snapshot: bytes) -> bytes:
    image = cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return snapshot
    return encode_jpeg(_fit(image, THUMBNAIL_WIDTH), JPEG_QUALITY)


@dataclass
class FrameRenderer:
    """The latest frame of a camera as JPEG, drawn and encoded once per (frame, width) however many watch it."""

    limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(ENCODE_THREADS))
    _cache: collections.OrderedDict[tuple[str, int], tuple[LatestFrame, bytes]] = field(
        default_factory=collections.OrderedDict)

    async def jpeg(self, camera: Camera, width: int) -> tuple[LatestFrame, bytes] | None:
        frame = camera.pipeline.latest
        if frame is None:
            return None
        key = (camera.camera_id, width)
        cached = self._cache.get(key)
        if cached is not None and cached[0] is frame:
            self._cache.move_to_end(key)
            return cached
        data = await trio.to_thread.run_sync(_render, frame, width, limiter=self.limiter)
        self._cache[key] = (frame, data)
        self._cache.move_to_end(key)
        while len(self._cache) > FRAME_CACHE_SIZE:
            self._cache.popitem(last=False)
        return frame, data

    async def thumbnail(self, entry: AlarmEntry) -> bytes:
        if entry.thumbnail is None:
            entry.thumbnail = await trio.to_thread.run_sync(_thumbnail, entry.result.image_jpeg,
                                                            limiter=self.limiter)
        return entry.thumbnail


def _width(request: Request) -> int:
    raw = request.query_params.get("width", "")
    if not raw:
        return 0
    try:
        width = int(raw)
    except ValueError:
        raise InvalidRequest(f"width must be a whole number of pixels, got {raw!r}") from None
    lo, hi = FRAME_WIDTH_RANGE
    return min(hi, max(lo, width))


def _cameras_param(request: Request) -> frozenset[str]:
    ids = frozenset(request.query_params.getlist("camera"))
    for camera_id in ids:
        if problem := check_id("camera", camera_id):
            raise InvalidRequest(problem)
    return ids


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number, got {raw!r}") from None


class LiveViews:
    def __init__(self, node: Node, alarm_log: AlarmLog) -> None:
        self.node = node
        self.alarms = alarm_log
        self.frames = FrameRenderer()

    def routes(self) -> list[Route]:
        return [
            Route("/api/cameras/{camera_id}/frame.jpg", self.frame, methods=["GET"]),
            Route("/api/cameras/{camera_id}/stream.mjpg", self.mjpeg, methods=["GET"]),
            Route("/api/alarms", self.recent_alarms, methods=["GET"]),
            Route("/api/alarms/{seq:int}/snapshot.jpg", self.snapshot, methods=["GET"]),
            Route("/api/alarms/{seq:int}/thumbnail.jpg", self.thumbnail, methods=["GET"]),
            Route("/api/events", self.events, methods=["GET"]),
        ]

    async def frame(self, request: Request) -> Response:
        """The camera's newest processed frame with boxes; 204 until its first result."""
        camera = self.node.fleet.get(request.path_params["camera_id"])
        rendered = await self.frames.jpeg(camera, _width(request))
        if rendered is None:
            return Response(status_code=204, headers={"Cache-Control": "no-store"})
        frame, data = rendered
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "no-store", "X-Frame-Timestamp-Ms": str(frame.timestamp_ms)})

    async def mjpeg(self, request: Request) -> Response | LiveStream:
        """Each new processed frame as one part of a multipart/x-mixed-replace stream, until the camera goes."""
        camera_id = request.path_params["camera_id"]
        self.node.fleet.get(camera_id)
        width = _width(request)

        async def produce(send_chunk: SendChunk) -> None:
            sent: LatestFrame | None = None
            await send_chunk(b"--frame\r\n")
            while self.node.lifecycle != Lifecycle.STOPPING:
                try:
                    camera = self.node.fleet.get(camera_id)
                except CameraNotFound:  # removed while watched: end the stream
                    return
                if camera.pipeline.latest is not None and camera.pipeline.latest is not sent:
                    rendered = await self.frames.jpeg(camera, width)
                    if rendered is not None:
                        sent, data = rendered
                        await send_chunk(b"Content-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                                         + data + b"\r\n--frame\r\n")
                        await trio.sleep(1 / MJPEG_MAX_FPS)
                        continue
                await trio.sleep(MJPEG_POLL_S)

        return LiveStream(produce, "multipart/x-mixed-replace; boundary=frame")

    async def recent_alarms(self, request: Request) -> Response:
        entries = self.alarms.recent(cameras=_cameras_param(request), after=_int_param(request, "after", 0),
                                     limit=_int_param(request, "limit", 50))
        return JSONResponse({"alarms": [e.to_json() for e in reversed(entries)]})

    def _entry(self, request: Request) -> AlarmEntry | None:
        entry = self.alarms.get(request.path_params["seq"])
        return entry if entry is not None and entry.result.image_jpeg else None

    async def snapshot(self, request: Request) -> Response:
        entry = self._entry(request)
        if entry is None:
            return JSONResponse({"message": "no such alarm snapshot (only the last alarms are kept)"},
                                status_code=404)
        return Response(entry.result.image_jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    async def thumbnail(self, request: Request) -> Response:
        entry = self._entry(request)
        if entry is None:
            return JSONResponse({"message": "no such alarm snapshot (only the last alarms are kept)"},
                                status_code=404)
        return Response(await self.frames.thumbnail(entry), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    async def events(self, request: Request) -> LiveStream:
        """Server-Sent Events: `alarm` for each new alarm (after a replay of those the browser has not seen),
        then `closing` when the engine shuts down. ?camera=ID (repeatable) narrows it."""
        if self.node.lifecycle == Lifecycle.STOPPING:
            raise ShuttingDown("the engine is shutting down; no new event streams")
        cameras = _cameras_param(request)
        after = _int_param(request, "after", 0)
        last_event_id = request.headers.get("last-event-id", "")
        if last_event_id.isdigit():  # EventSource reconnecting: resume after what it has
            after = int(last_event_id)
        hub = self.node.hub
        alarms = self.alarms

        async def produce(send_chunk: SendChunk) -> None:
            sink = TrioSink(EVENT_BUFFER)
            subscription = Subscription(ResultFilter(camera_ids=cameras, alarms_only=True), sink, EVENT_BUFFER)
            hub.subscribe(subscription)  # before the replay, so that nothing falls between the two
            try:
                await send_chunk(f"retry: {RECONNECT_MS}\n\n".encode())
                last = after
                for entry in alarms.recent(cameras=cameras, after=after, limit=EVENT_BUFFER):
                    await send_chunk(sse_event("alarm", entry.to_json(), entry.seq))
                    last = entry.seq
                await send_chunk(sse_event("ready", {"after": last}))
                while True:
                    delivery: Delivery | None = None
                    with trio.move_on_after(KEEPALIVE_S):
                        delivery = await sink.receive.receive()
                        if delivery is None:  # the hub closed: the engine is shutting down
                            await send_chunk(sse_event("closing", {"reason": sink.closed_reason or ""}))
                            return
                    if delivery is None:
                        await send_chunk(b": keepalive\n\n")
                        continue
                    subscription.taken()
                    entry = alarms.entry_for(delivery.result)
                    if entry is None:
                        continue  # logged before us, so only an alarm already evicted from the log
                    if entry.seq > last:
                        last = entry.seq
                        await send_chunk(sse_event("alarm", entry.to_json(delivery.missed_before), entry.seq))
            finally:
                hub.unsubscribe(subscription)

        return LiveStream(produce, "text/event-stream")

