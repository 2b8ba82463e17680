"""Client-supplied frames: size limits checked before decoding, then JPEG/PNG/raw bytes -> BGR arrays.

The image header is read first so that a 1 KB file claiming 100,000 x 100,000 pixels is refused without
allocating anything. Every failure is InvalidRequest saying what was wrong with which frame.
"""

from __future__ import annotations

import contextlib
import enum
import struct
from collections.abc import AsyncIterator

import cv2
import numpy as np
import trio

from edgebox.errors import InvalidRequest
from edgebox.limits import MAX_DECODED_PIXELS_IN_FLIGHT, MAX_FRAME_BYTES, MAX_FRAME_SIDE

JPEG_QUALITY = 85


class PixelFormat(enum.IntEnum):
    """Same values as proto `infer.PixelFormat`."""

    ENCODED = 0
    BGR8 = 1
    RGB8 = 2
    GRAY8 = 3


def encoded_image_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from a PNG or JPEG header; InvalidRequest if it is neither or is truncated."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidRequest("the PNG image is truncated (no IHDR header)")
        width, height = struct.unpack(">II", data[16:24])
        return "png", width, height
    if data[:2] == b"\xff\xd8":
        return ("jpeg", *_jpeg_size(data))
    raise InvalidRequest("image_data is neither JPEG nor PNG (for raw pixels set format BGR8, RGB8 or GRAY8 "
                         "with width and height)")


# Header segments (APPn, DQT, DHT...) that `header_pixels` walks on the event loop before handing the rest of the
# search to a worker thread. Real JPEGs have under 20 before the frame header; a crafted file can have millions.
INLINE_HEADER_SEGMENTS = 64


class _LongHeader(Exception):
    """The JPEG frame header was not among the first `max_segments` segments."""


def _jpeg_size(data: bytes, max_segments: int | None = None) -> tuple[int, int]:
    i = 2
    segments = 0
    while i + 4 <= len(data):
        segments += 1
        if max_segments is not None and segments > max_segments:
            raise _LongHeader
        if data[i] != 0xFF:
            raise InvalidRequest(f"the JPEG image is corrupt (bad marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise InvalidRequest("the JPEG image is truncated or corrupt (no frame header found)")


def _check_side(width: int, height: int) -> None:
    if not (0 < width <= MAX_FRAME_SIDE and 0 < height <= MAX_FRAME_SIDE):
        raise InvalidRequest(f"frame is {width}x{height} pixels; each side must be 1..{MAX_FRAME_SIDE} "
                             "(MAX_FRAME_SIDE)")


def decoded_pixels(data: bytes, fmt: int, width: int = 0, height: int = 0) -> int:
    """Pixels the frame will decode to, from its header alone; 0 when decode_frame is going to refuse it."""
    try:
        if not data or len(data) > MAX_FRAME_BYTES:
            return 0
        if fmt == PixelFormat.ENCODED:
            _, width, height = encoded_image_size(data)
        _check_side(width, height)
    except InvalidRequest:
        return 0
    return width * height


def header_pixels(data: bytes, fmt: int, width: int = 0, height: int = 0) -> int | None:
    """`decoded_pixels` when the header is short enough to read on the event loop (microseconds); else None."""
    if fmt == PixelFormat.ENCODED and data[:2] == b"\xff\xd8" and len(data) <= MAX_FRAME_BYTES:
        try:
            width, height = _jpeg_size(data, INLINE_HEADER_SEGMENTS)
            _check_side(width, height)
        except _LongHeader:
            return None
        except InvalidRequest:
            return 0
        return width * height
    return decoded_pixels(data, fmt, width, height)  # PNG, raw pixels and refusals: constant time


class DecodeBudget:
    """Bounds the pixels of client frames decoded and held at once (MAX_DECODED_PIXELS_IN_FLIGHT).

    Frames take their share in arrival order; one that does not fit waits until earlier frames are done.
    """

    def __init__(self, pixels: int = MAX_DECODED_PIXELS_IN_FLIGHT) -> None:
        self.total = self.free = pixels
        self._turn = trio.Lock()  # one waiter at a time, so no frame holds a part while waiting for the rest
        self._released = trio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, data: bytes, fmt: int, width: int, height: int) -> AsyncIterator[None]:
        # The header is read here, not in a worker thread: a thread hop costs more than reading a normal header.
        pixels = header_pixels(data, fmt, width, height)
        if pixels is None:
            pixels = await trio.to_thread.run_sync(decoded_pixels, data, fmt, width, height)
        pixels = min(pixels, self.total)
        async with self._turn:
            while self.free < pixels:
                self._released = trio.Event()
                await self._released.wait()
            self.free -= pixels
        try:
            yield
        finally:
            self.free += pixels
            self._released.set()


def decode_frame(data: bytes, fmt: int, width: int = 0, height: int = 0) -> np.ndarray:
    """Bytes from a client -> BGR uint8 array (H, W, 3). Blocking: call it off the event loop."""
    if not data:
        raise InvalidRequest("frame image_data is empty")
    if len(data) > MAX_FRAME_BYTES:
        raise InvalidRequest(f"frame is {len(data)} bytes; the limit is {MAX_FRAME_BYTES} (MAX_FRAME_BYTES)")
    try:
        pixel_format = PixelFormat(fmt)
    except ValueError:
        raise InvalidRequest(f"unknown pixel format {fmt}") from None
    if pixel_format is PixelFormat.ENCODED:
        kind, w, h = encoded_image_size(data)
        _check_side(w, h)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise InvalidRequest(f"the {kind.upper()} image ({w}x{h}) could not be decoded: corrupt or truncated")
        return image
    _check_side(width, height)
    channels = 1 if pixel_format is PixelFormat.GRAY8 else 3
    expected = width * height * channels
    if len(data) != expected:
        raise InvalidRequest(f"raw {pixel_format.name} frame {width}x{height} needs {expected} bytes, "
                             f"got {len(data)}")
    pixels = np.frombuffer(data, np.uint8).reshape(height, width, channels)
    if pixel_format is PixelFormat.RGB8:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    if pixel_format is PixelFormat.GRAY8:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    return pixels.copy()


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


BOX_COLOURS = {"person": (60, 76, 231), "face": (113, 204, 46), "motion": (18, 156, 243)}


def draw_detections(image: np.ndarray, detections: list[dict]) -> np.ndarray:
    """A copy of `image` with boxes and labels drawn (detections as in result JSON)."""
    canvas = image.copy()
    thickness = max(2, image.shape[1] // 400)
    for det in detections:
        x1, y1, x2, y2 = (round(v) for v in det["box"])
        colour = BOX_COLOURS.get(det["label"], (219, 152, 52))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
        text = f"{det['label']} {det['score']:.2f}"
        cv2.putText(canvas, text, (x1 + 3, max(14, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1,
                    cv2.LINE_AA)
    return canvas
