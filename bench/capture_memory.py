"""Where a camera's resident memory goes: FFmpeg's capture state, its decoded frames, the BGR conversion, and
what glibc's arenas keep.

    .venv/bin/python bench/capture_memory.py [--cameras 50] [--sizes 640x360,1280x720] [--duration 15]
    .venv/bin/python bench/capture_memory.py --arenas default,cores   # glibc's arena count against one per core

One RTSP server (Debian's gst-rtsp-server, tests/support/rtsp.py) serves 4 H.264 mounts of each size at 10 fps
(half a still photo, half a moving pattern). For each size, arena setting and mode, a fresh child process fixes
glibc's thresholds as the engine does (edgebox.memory), opens --cameras captures with the engine's OpenCV options
(edgebox.cameras.opencv_source: RTSP over TCP, one decoding thread), and reads each in its own thread for
--duration seconds; mode `decode` only grabs (demux + decode) every frame, mode `decode+bgr` also converts 2 frames
per second to BGR as the engine does for the frames it samples. Per camera it prints the RSS after the open and
while decoding, how much of that glibc counts as live blocks (`mallinfo2` in use) and how much as free blocks it
keeps in its arenas, the CPU per decoded frame, and the RSS left after every capture is released and
`malloc_trim(0)` ran (per camera, over the child's RSS before the first open). Ratios compare each row with the
first row of its size. No engine, no model, no gRPC: decoding alone.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHOTO = ROOT / "tests" / "data" / "astronaut.png"
MOUNTS_PER_SIZE = 4
CONVERTED_PER_SECOND = 2.0  # the engine's usual sampling rate; it converts only the frames it samples
WARMUP_S = 5.0
M_ARENA_MAX = -8  # mallopt() parameter number in glibc's malloc.h


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def malloc_mb(libc: ctypes.CDLL) -> tuple[float, float]:
    """glibc's live (in use, heap and mmap) and free-but-kept bytes over every arena, in MB."""
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20


def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process; prints one JSON line."""
    from edgebox.cameras.opencv_source import CAPTURE_OPTIONS_ENV, DECODE_THREADS, RTSP_TCP_OPTIONS
    from edgebox.libc import libc as load_libc
    from edgebox.memory import fix_malloc_thresholds

    libc = load_libc()
    assert libc is not None and fix_malloc_thresholds(), "glibc's mallopt is needed (Linux)"
    if args.child_arenas != "default":
        assert libc.mallopt(M_ARENA_MAX, int(args.child_arenas)) == 1
    os.environ[CAPTURE_OPTIONS_ENV] = RTSP_TCP_OPTIONS
    import cv2

    urls = args.child_urls.split(",")
    base_rss, (base_live, base_free) = rss_mb(), malloc_mb(libc)
    caps = []
    for i in range(args.cameras):
        cap = cv2.VideoCapture(urls[i % len(urls)], cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, DECODE_THREADS])
        if not cap.isOpened():
            raise SystemExit(f"capture {i} did not open {urls[i % len(urls)]}")
        caps.append(cap)
    opened_rss = rss_mb()
    stop = threading.Event()
    grabbed = [0] * len(caps)
    convert_every = max(1, round(args.child_fps / CONVERTED_PER_SECOND))

    def read(i: int) -> None:
        cap, n = caps[i], 0
        while not stop.is_set() and cap.grab():
            n += 1
            grabbed[i] = n
            if args.child_mode == "decode+bgr" and n % convert_every == 0:
                frame = cap.retrieve()[1]
                assert frame is not None
                del frame  # the engine hands it on and frees it later; here it goes at once

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(caps))]
    for t in threads:
        t.start()
    time.sleep(WARMUP_S)
    cpu0, frames0, t0 = sum(os.times()[:2]), sum(grabbed), time.monotonic()
    time.sleep(args.duration)
    cpu, frames = sum(os.times()[:2]) - cpu0, sum(grabbed) - frames0
    elapsed = time.monotonic() - t0
    decoding_rss, (live, free) = rss_mb(), malloc_mb(libc)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    for cap in caps:
        cap.release()
    caps.clear()
    libc.malloc_trim(0)
    n = args.cameras
    print(json.dumps({
        "open": (opened_rss - base_rss) / n, "decoding": (decoding_rss - base_rss) / n,
        "live": (live - base_live) / n, "free": (free - base_free) / n,
        "cpu_ms": 1000 * cpu / max(1, frames), "fps": frames / elapsed, "after": (rss_mb() - base_rss) / n,
        "stalled": sum(1 for g in grabbed if g == 0),
    }))


def arena_count(setting: str) -> str:
    return str(len(os.sched_getaffinity(0))) if setting == "cores" else setting


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=50, help="captures per measurement (default 50)")
    p.add_argument("--sizes", default="640x360,1280x720", help="stream sizes, WxH,WxH (default 640x360,1280x720)")
    p.add_argument("--arenas", default="default,cores",
                   help="glibc arena settings: default (8 per core), cores (one per usable core) or a number")
    p.add_argument("--modes", default="decode,decode+bgr", help="decode and/or decode+bgr (default both)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds measured per row (default 15)")
    p.add_argument("--fps", type=int, default=10, help="frame rate of the test streams (default 10)")
    p.add_argument("--child-mode", help=argparse.SUPPRESS)
    p.add_argument("--child-arenas", help=argparse.SUPPRESS)
    p.add_argument("--child-urls", help=argparse.SUPPRESS)
    p.add_argument("--child-fps", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_mode:
        child(args)
        return

    from tests.support.rtsp import RtspServer, gi_rtsp_available, image_mount, pattern_mount

    ok, reason = gi_rtsp_available()
    if not ok:
        raise SystemExit(f"the RTSP test server cannot run here: {reason} (scripts/install-system-deps.sh)")
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    mounts = {size: [image_mount(f"/photo{i}_{size[0]}x{size[1]}", PHOTO, width=size[0], height=size[1],
                                 fps=args.fps) if i % 2 == 0 else
                     pattern_mount(f"/ball{i}_{size[0]}x{size[1]}", width=size[0], height=size[1], fps=args.fps)
                     for i in range(MOUNTS_PER_SIZE)] for size in sizes}
    print(f"# edgebox capture memory, {time.strftime('%Y-%m-%d %H:%M')}, {len(os.sched_getaffinity(0))} cores, "
          f"{args.cameras} captures per row over {MOUNTS_PER_SIZE} mounts per size at {args.fps} fps, "
          f"{args.duration:g} s per row; load average before {os.getloadavg()[0]:.2f}")
    print(f"# {' '.join(sys.argv)}")
    print("| size | arenas | mode | open | decoding | live in malloc | kept free by malloc | CPU per frame | "
          "frames/s | after release + trim | decoding vs first row |")
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    with RtspServer([m for ms in mounts.values() for m in ms]) as server:
        for size in sizes:
            urls = ",".join(server.url(m["path"]) for m in mounts[size])
            first: float | None = None
            for arenas in args.arenas.split(","):
                for mode in args.modes.split(","):
                    cmd = [sys.executable, __file__, "--cameras", str(args.cameras), "--duration",
                           str(args.duration), "--child-mode", mode, "--child-arenas", arena_count(arenas),
                           "--child-urls", urls, "--child-fps", str(args.fps)]
                    done = subprocess.run(cmd, capture_output=True, text=True,
                                          timeout=args.duration + 180, check=False)
                    if done.returncode != 0:
                        raise SystemExit(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
                    r = json.loads(done.stdout.strip().splitlines()[-1])
                    first = first or r["decoding"]
                    label = f"{arenas} ({arena_count(arenas)})" if arenas == "cores" else arenas
                    stalled = f", {r['stalled']} never read" if r["stalled"] else ""
                    print(f"| {size[0]}x{size[1]} | {label} | {mode} | {r['open']:.2f} MB | {r['decoding']:.2f} MB"
                          f" | {r['live']:.2f} MB | {r['free']:.2f} MB | {r['cpu_ms']:.3f} ms | {r['fps']:.0f}"
                          f"{stalled} | {r['after']:.2f} MB | {r['decoding'] / first:.2f}x |", flush=True)
    print(f"# per camera; load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
