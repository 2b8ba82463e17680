"""The real RTSP test server works end to end with cv2 (and survives restart())."""

from __future__ import annotations

import os
import time

# Must be set before the first VideoCapture opens (fast RTSP open over TCP).
os.environ.setdefault(
    "OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|analyzeduration;0|probesize;32"
)

import cv2


def _open(url: str) -> cv2.VideoCapture:
    return cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000],
    )


def _read_frames(url: str, count: int, budget_s: float = 10.0) -> list:
    cap = _open(url)
    try:
        assert cap.isOpened(), f"could not open {url}"
        frames = []
        deadline = time.monotonic() + budget_s
        while len(frames) < count and time.monotonic() < deadline:
            ok, frame = cap.read()
            assert ok, f"read() failed on {url} after {len(frames)} frames"
            frames.append(frame)
        return frames
    finally:
        cap.release()


def test_ball_frames_then_restart(rtsp_server):
    url = rtsp_server.url("/ball")
    frames = _read_frames(url, 5)
    assert len(frames) == 5
    assert all(f.shape == (360, 640, 3) for f in frames)

    port = rtsp_server.port
    rtsp_server.restart()
    assert rtsp_server.port == port
    assert rtsp_server.url("/ball") == url

    frames = _read_frames(url, 3)
    assert len(frames) == 3
    assert all(f.shape == (360, 640, 3) for f in frames)


def test_person_mount_serves_frames(rtsp_server):
    frames = _read_frames(rtsp_server.url("/person"), 2)
    assert frames[-1].shape == (360, 640, 3)
    assert frames[-1].std() > 5  # a picture, not a blank frame


def test_secure_mount_needs_credentials(rtsp_server):
    from tests.support.fixtures import SECURE_PASSWORD, SECURE_USER

    cap = _open(rtsp_server.url("/secure"))
    assert not cap.isOpened()
    cap.release()
    frames = _read_frames(
        rtsp_server.url("/secure", user=SECURE_USER, password=SECURE_PASSWORD), 1
    )
    assert frames[0].shape == (360, 640, 3)
