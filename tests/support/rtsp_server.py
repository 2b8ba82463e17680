#!/usr/bin/python3
"""A small, real RTSP server for tests and benchmarks (Debian's gst-rtsp-server).

Run it with Debian's ``/usr/bin/python3`` (``gi`` only imports there; install the
packages with ``scripts/install-system-deps.sh``). The test-side helper is
``tests/support/rtsp.py`` (class ``RtspServer``), which starts this program as a
subprocess.

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 --mounts '[
      {"path": "/ball", "kind": "pattern", "pattern": "ball", "width": 640, "height": 360, "fps": 10},
      {"path": "/person", "kind": "image", "file": "/abs/astronaut.png", "width": 640, "height": 360, "fps": 10},
      {"path": "/secure", "kind": "pattern", "pattern": "smpte", "user": "u", "password": "p"}
    ]'

Mount keys: ``path`` (required, starts with "/"), ``kind`` ("pattern" | "image"),
``pattern`` (a videotestsrc pattern nick, default "ball"), ``file`` (image path;
.png/.jpg decoded directly, anything else through decodebin), ``width``/``height``
(default 640x360), ``fps`` (integer, default 10), ``bitrate`` (kbit/s, default 800),
and optionally ``user`` + ``password`` to require RTSP basic auth on that mount.

Every mount is a shared media factory: all clients of a mount see the same encoder
output. H.264 via x264enc (zerolatency, ultrafast, key frame every 2 s, 1 thread),
rtph264pay with config-interval=1 so SPS/PPS precede every key frame.

Prints exactly one line ``READY <port>`` on stdout once the server is listening,
then runs until SIGTERM/SIGINT and exits 0. Exits 2 on bad arguments and 3 when
the port cannot be bound; errors go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import NoReturn

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstRtsp", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer

ANONYMOUS_ROLE = "anonymous"


def _fail(msg: str, code: int = 2) -> NoReturn:
    print(f"rtsp_server: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def _int(mount: dict, key: str, default: int) -> int:
    value = mount.get(key, default)
    try:
        value = int(value)
    except (TypeError, ValueError):
        _fail(f"mount {mount.get('path')!r}: {key} must be an integer, got {value!r}")
    if value <= 0:
        _fail(f"mount {mount.get('path')!r}: {key} must be > 0, got {value}")
    return value


def _quote(value: str) -> str:
    """Quote a property value for a gst-launch description."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_launch(mount: dict) -> str:
    width = _int(mount, "width", 640)
    height = _int(mount, "height", 360)
    fps = _int(mount, "fps", 10)
    bitrate = _int(mount, "bitrate", 800)
    kind = mount.get("kind", "pattern")

    raw_caps = f"video/x-raw,width={width},height={height},framerate={fps}/1"
    encode = (
        f"x264enc tune=zerolatency speed-preset=ultrafast bitrate={bitrate} "
        f"key-int-max={fps * 2} threads=1 "
        "! video/x-h264,profile=constrained-baseline "
        "! rtph264pay name=pay0 pt=96 config-interval=1"
    )

    if kind == "pattern":
        pattern = str(mount.get("pattern", "ball"))
        if not pattern.replace("-", "").isalnum():
            _fail(f"mount {mount['path']!r}: bad pattern {pattern!r}")
        source = f"videotestsrc is-live=true pattern={pattern} ! {raw_caps}"
    elif kind == "image":
        file = mount.get("file")
        if not file:
            _fail(f"mount {mount['path']!r}: kind 'image' needs 'file'")
        file = os.path.abspath(str(file))
        if not os.path.isfile(file):
            _fail(f"mount {mount['path']!r}: image file not found: {file}")
        ext = os.path.splitext(file)[1].lower()
        decoder = {".png": "pngdec", ".jpg": "jpegdec", ".jpeg": "jpegdec"}.get(
            ext, "decodebin"
        )
        # Scale into the requested size keeping the aspect ratio (black borders),
        # then imagefreeze repeats the still image as a live stream at fps.
        source = (
            f"filesrc location={_quote(file)} ! {decoder} ! videoconvert ! videoscale add-borders=true "
            f"! video/x-raw,width={width},height={height},pixel-aspect-ratio=1/1 "
            f"! imagefreeze is-live=true ! {raw_caps} ! videoconvert ! video/x-raw,format=I420"
        )
    else:
        _fail(
            f"mount {mount.get('path')!r}: unknown kind {kind!r} (use 'pattern' or 'image')"
        )

    return f"( {source} ! {encode} )"


def _role_structure(role: str, construct: bool) -> Gst.Structure:
    structure = Gst.Structure.new_empty(role)
    structure.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, True)
    structure.set_value(GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT, construct)
    return structure


def _token(role: str) -> GstRtspServer.RTSPToken:
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, role)
    return token


def load_mounts(args: argparse.Namespace) -> list[dict]:
    try:
        if args.mounts_file:
            with open(args.mounts_file, encoding="utf-8") as fh:
                mounts = json.load(fh)
        else:
            mounts = json.loads(args.mounts)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read mounts: {exc}")
    if isinstance(mounts, dict):
        mounts = [mounts]
    if not isinstance(mounts, list) or not mounts:
        _fail("mounts must be a non-empty JSON list of objects")
    seen = set()
    for mount in mounts:
        if not isinstance(mount, dict):
            _fail(f"mount must be an object, got {mount!r}")
        path = mount.get("path")
        if not isinstance(path, str) or not path.startswith("/") or len(path) < 2:
            _fail(f"mount path must start with '/' and not be empty, got {path!r}")
        if path in seen:
            _fail(f"duplicate mount path {path!r}")
        seen.add(path)
        if ("user" in mount) != ("password" in mount):
            _fail(f"mount {path!r}: give both 'user' and 'password' or neither")
    return mounts


def build_server(
    address: str, port: int, mounts: list[dict]
) -> GstRtspServer.RTSPServer:
    server = GstRtspServer.RTSPServer.new()
    server.set_address(address)
    server.set_service(str(port))

    # Distinct credentials -> distinct roles. Only built when some mount wants auth:
    # once an RTSPAuth is installed every factory needs explicit permissions.
    credentials: dict[tuple[str, str], str] = {}
    for mount in mounts:
        if "user" in mount:
            key = (str(mount["user"]), str(mount["password"]))
            credentials.setdefault(key, f"cred{len(credentials)}")

    if credentials:
        auth = GstRtspServer.RTSPAuth.new()
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        auth.set_realm("edgebox-test")
        # Requests without credentials get the anonymous role.
        auth.set_default_token(_token(ANONYMOUS_ROLE))
        for (user, password), role in credentials.items():
            auth.add_basic(
                GstRtspServer.RTSPAuth.make_basic(user, password), _token(role)
            )
        server.set_auth(auth)

    mount_points = server.get_mount_points()
    for mount in mounts:
        factory = GstRtspServer.RTSPMediaFactory.new()
        factory.set_launch(build_launch(mount))
        factory.set_shared(True)
        if credentials:
            # gst-rtsp-server answers a missing "access" permission with 404 (it hides
            # the mount) and a missing "construct" permission with 401. So every role
            # may access every mount; only the mount's own credentials may construct
            # (= play) a protected one, and everybody else gets 401 Unauthorized.
            own = None
            if "user" in mount:
                own = credentials[(str(mount["user"]), str(mount["password"]))]
            for role in [ANONYMOUS_ROLE, *credentials.values()]:
                construct = own is None or role == own
                factory.add_role_from_structure(_role_structure(role, construct))
        mount_points.add_factory(mount["path"], factory)
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port", type=int, required=True, help="TCP port (0 = any free port)"
    )
    parser.add_argument(
        "--address", default="127.0.0.1", help="listen address (default 127.0.0.1)"
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--mounts", help="JSON list of mount objects")
    group.add_argument(
        "--mounts-file", help="file holding the JSON list of mount objects"
    )
    args = parser.parse_args()
    if not 0 <= args.port <= 65535:
        _fail(f"bad port {args.port}")

    mounts = load_mounts(args)
    Gst.init(None)
    server = build_server(args.address, args.port, mounts)

    # Validate every launch description now, so a typo fails before READY.
    for mount in mounts:
        try:
            Gst.parse_launch(build_launch(mount))
        except GLib.Error as exc:
            _fail(f"mount {mount['path']!r}: bad pipeline: {exc.message}")

    loop = GLib.MainLoop()

    def on_signal(*_args) -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, on_signal)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, on_signal)

    # attach() creates, binds (SO_REUSEADDR) and listens on the socket; 0 = failure.
    if server.attach(None) == 0:
        _fail(f"cannot listen on {args.address}:{args.port} (port in use?)", code=3)
    port = server.get_bound_port()

    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()

    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
