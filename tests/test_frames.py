"""Client frames: JPEG, PNG and raw pixels decode to BGR arrays; every bad frame is an InvalidRequest that says
what is wrong, and sizes are checked from the header before anything is allocated.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from edgebox.errors import InvalidRequest
from edgebox.frames import (
    INLINE_HEADER_SEGMENTS,
    PixelFormat,
    decode_frame,
    decoded_pixels,
    draw_detections,
    encode_jpeg,
    encoded_image_size,
    header_pixels,
)
from edgebox.limits import MAX_FRAME_BYTES, MAX_FRAME_SIDE
from tests.support.engine import photo_bgr, photo_jpeg, photo_png


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def jpeg_header(width: int, height: int) -> bytes:
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof


def test_png_decodes_to_bgr():
    image = decode_frame(photo_png("astronaut"), PixelFormat.ENCODED)
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert np.array_equal(image, photo_bgr("astronaut"))


def test_jpeg_decodes_to_bgr_close_to_the_original():
    image = decode_frame(photo_jpeg("astronaut"), PixelFormat.ENCODED)
    assert image.shape == (512, 512, 3)
    assert np.abs(image.astype(int) - photo_bgr("astronaut").astype(int)).mean() < 5


def test_grayscale_png_decodes_to_three_channels():
    assert decode_frame(photo_png("camera"), PixelFormat.ENCODED).shape == (512, 512, 3)


def test_progressive_jpeg_with_exif_segment_is_read():
    ok, buf = cv2.imencode(".jpg", photo_bgr("chelsea"), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    data = buf.tobytes()
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 6) + b"Exif\x00\x00"
    data = data[:2] + exif + data[2:]
    assert encoded_image_size(data) == ("jpeg", 451, 300)
    assert decode_frame(data, PixelFormat.ENCODED).shape == (300, 451, 3)


@pytest.mark.parametrize("fmt", [PixelFormat.BGR8, PixelFormat.RGB8, PixelFormat.GRAY8])
def test_raw_frames_decode_to_bgr(fmt):
    bgr = photo_bgr("astronaut")
    pixels = {PixelFormat.BGR8: bgr, PixelFormat.RGB8: bgr[:, :, ::-1],
              PixelFormat.GRAY8: cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)}[fmt]
    image = decode_frame(np.ascontiguousarray(pixels).tobytes(), fmt, 512, 512)
    assert image.shape == (512, 512, 3)
    if fmt != PixelFormat.GRAY8:
        assert np.array_equal(image, bgr)


def test_raw_frame_is_a_copy_not_a_view_of_the_request_bytes():
    data = bytes(12)
    image = decode_frame(data, PixelFormat.BGR8, 2, 2)
    image[0, 0, 0] = 7  # a read-only view of `data` would raise here
    assert data == bytes(12)


@pytest.mark.parametrize(("data", "fmt", "size", "words"), [
    (b"", PixelFormat.ENCODED, (0, 0), "empty"),
    (b"GIF89a", PixelFormat.ENCODED, (0, 0), "neither JPEG nor PNG"),
    (b"\xff\xd8\x00\x01\x02\x03\x04", PixelFormat.ENCODED, (0, 0), "corrupt"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", PixelFormat.ENCODED, (0, 0), "truncated"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", PixelFormat.ENCODED, (0, 0), "truncated"),
    (png_header(MAX_FRAME_SIDE + 1, 10), PixelFormat.ENCODED, (0, 0), "MAX_FRAME_SIDE"),
    (png_header(0, 10), PixelFormat.ENCODED, (0, 0), "MAX_FRAME_SIDE"),
    (jpeg_header(100_000 % 65536, 60_000), PixelFormat.ENCODED, (0, 0), "MAX_FRAME_SIDE"),
    (png_header(100, 100) + b"\x00" * 50, PixelFormat.ENCODED, (0, 0), "could not be decoded"),
    (bytes(300), PixelFormat.BGR8, (0, 0), "MAX_FRAME_SIDE"),
    (bytes(300), PixelFormat.BGR8, (MAX_FRAME_SIDE + 1, 1), "MAX_FRAME_SIDE"),
    (bytes(299), PixelFormat.BGR8, (10, 10), "needs 300 bytes"),
    (bytes(101), PixelFormat.GRAY8, (10, 10), "needs 100 bytes"),
    (bytes(300), 9, (10, 10), "unknown pixel format 9"),
])
def test_bad_frames_are_invalid_requests_saying_why(data, fmt, size, words):
    with pytest.raises(InvalidRequest) as info:
        decode_frame(data, fmt, *size)
    assert words in info.value.message


def test_truncated_photos_are_refused():
    for data in (photo_jpeg("coffee")[: len(photo_jpeg("coffee")) // 2], photo_png("coffee")[:20_000]):
        with pytest.raises(InvalidRequest, match="corrupt or truncated"):
            decode_frame(data, PixelFormat.ENCODED)


def test_frame_over_max_frame_bytes_is_refused_before_decoding():
    with pytest.raises(InvalidRequest, match="MAX_FRAME_BYTES"):
        decode_frame(b"\x89PNG" + bytes(MAX_FRAME_BYTES), PixelFormat.ENCODED)


def test_header_sizes_are_read_without_decoding():
    assert encoded_image_size(png_header(640, 360)) == ("png", 640, 360)
    assert encoded_image_size(jpeg_header(1920, 1080)) == ("jpeg", 1920, 1080)
    assert decoded_pixels(png_header(640, 360), PixelFormat.ENCODED) == 640 * 360
    assert decoded_pixels(bytes(12), PixelFormat.BGR8, 2, 2) == 4
    assert decoded_pixels(b"junk", PixelFormat.ENCODED) == 0


def test_jpeg_encoding_and_drawing_round_trip():
    image = photo_bgr("astronaut")
    drawn = draw_detections(image, [{"label": "person", "score": 0.93, "box": [3, 34, 374, 509]}])
    assert not np.array_equal(drawn, image)
    assert np.array_equal(image, photo_bgr("astronaut"))  # the input is left alone
    jpeg = encode_jpeg(drawn)
    assert jpeg[:2] == b"\xff\xd8"
    assert decode_frame(jpeg, PixelFormat.ENCODED).shape == image.shape


def test_normal_headers_are_read_inline_and_long_ones_are_left_to_a_thread():
    assert header_pixels(photo_jpeg("astronaut"), PixelFormat.ENCODED) == 512 * 512
    assert header_pixels(png_header(640, 360), PixelFormat.ENCODED) == 640 * 360
    assert header_pixels(b"\xff\xd8junk", PixelFormat.ENCODED) == 0  # refused: decode_frame will say why
    comments = b"".join(b"\xff\xfe\x00\x04ab" for _ in range(INLINE_HEADER_SEGMENTS + 1))
    long_header = b"\xff\xd8" + comments + jpeg_header(640, 360)[2:]
    assert header_pixels(long_header, PixelFormat.ENCODED) is None
    assert decoded_pixels(long_header, PixelFormat.ENCODED) == 640 * 360
