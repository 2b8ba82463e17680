"""pytest fixtures for a real RTSP server (see ``tests/support/rtsp.py``).

Registered in ``tests/conftest.py``. Use in a test:

    def test_something(rtsp_server):
        url = rtsp_server.url("/ball")            # live 640x360 @ 10 fps test pattern
        url = rtsp_server.url("/person")          # still photo of a person, 640x360 @ 10 fps
        url = rtsp_server.url("/secure", user=SECURE_USER, password=SECURE_PASSWORD)
        rtsp_server.kill(); rtsp_server.restart(); rtsp_server.freeze(); rtsp_server.thaw()

    def test_custom(rtsp_server_factory):
        server = rtsp_server_factory([pattern_mount("/a", fps=25)])   # started; stopped at teardown

Tests are skipped (with the install command) only when Debian's /usr/bin/python3
cannot import GstRtspServer; any other start failure is an error.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.rtsp import (
    INSTALL_HINT,
    RtspServer,
    gi_rtsp_available,
    image_mount,
    pattern_mount,
)

ASTRONAUT_PNG = Path(__file__).resolve().parents[1] / "data" / "astronaut.png"
SECURE_USER = "user"
SECURE_PASSWORD = "secret"


def _write_placeholder_png(path: Path, width: int = 320, height: int = 240) -> Path:
    """A plain RGB PNG (grey background, a lighter block), no imaging library needed."""
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type 0
        for x in range(width):
            inside = width // 3 <= x < 2 * width // 3 and height // 5 <= y
            row += bytes((200, 170, 150) if inside else (90, 90, 90))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = b"\x89PNG\r\n\x1a\n" + chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    )
    png += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def _skip_without_gi() -> None:
    ok, reason = gi_rtsp_available()
    if not ok:
        message = (
            f"real RTSP server unavailable ({reason}); install with: {INSTALL_HINT}"
        )
        print(message, file=sys.stderr)
        pytest.skip(message)


@pytest.fixture(scope="session")
def person_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/data/astronaut.png when present, else a generated placeholder PNG."""
    if ASTRONAUT_PNG.is_file():
        return ASTRONAUT_PNG
    return _write_placeholder_png(tmp_path_factory.mktemp("rtsp-media") / "person.png")


def default_mounts(person_png: Path) -> list[dict]:
    return [
        pattern_mount("/ball", pattern="ball"),
        image_mount("/person", person_png),
        pattern_mount(
            "/secure", pattern="smpte", user=SECURE_USER, password=SECURE_PASSWORD
        ),
    ]


@pytest.fixture
def rtsp_server_factory() -> Iterator[Callable[..., RtspServer]]:
    """Start RtspServer(mounts, **kwargs) instances; all are stopped at teardown."""
    _skip_without_gi()
    servers: list[RtspServer] = []

    def make(mounts: list[dict], **kwargs) -> RtspServer:
        server = RtspServer(mounts, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in reversed(servers):
        server.close()


@pytest.fixture
def rtsp_server(
    rtsp_server_factory: Callable[..., RtspServer], person_image: Path
) -> RtspServer:
    """A started RTSP server on 127.0.0.1 with mounts /ball (videotestsrc ball),
    /person (still photo) and /secure (basic auth SECURE_USER/SECURE_PASSWORD),
    all 640x360 H.264 at 10 fps."""
    return rtsp_server_factory(default_mounts(person_image))
