"""Bad input at volume: corrupt and truncated photos, frames of absurd size, a burst of a thousand AddCamera calls.

Nothing may crash or answer INTERNAL, the engine's memory must stay bounded (figures printed), cameras that were
streaming keep streaming, and removing every camera leaves no task, result or metrics series behind.
"""

from __future__ import annotations

import asyncio
import random
import struct
import threading
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Self

import cv2
import numpy as np
import pytest
import trio
from grpclib.const import Status

from edgebox.client import EdgeboxClient
from edgebox.metrics import process_rss_bytes
from edgebox.proto_gen import infer as pb
from tests.reliability.helpers import Outcome, assert_clean, attempt, rss_mb, without_admission
from tests.support.engine import (
    AsyncioThread,
    EngineProcess,
    TrioClient,
    engine_config,
    photo_jpeg,
    photo_png,
    running_engine,
    start_engine_process,
    wait_until,
)

OK = pb.InferErrorCode.OK
INVALID = pb.InferErrorCode.INVALID_REQUEST


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    eng = start_engine_process(tmp_path_factory.mktemp("bad-input"), {"log_level": "WARNING"})
    yield eng
    assert eng.stop() == 0, eng.log()


@pytest.fixture(scope="module")
def client(engine: EngineProcess, aio: AsyncioThread) -> Iterator[EdgeboxClient]:
    async def make() -> EdgeboxClient:
        return EdgeboxClient(engine.host, engine.port, timeout=120)

    made = aio.run_blocking(make)
    yield made

    async def close() -> None:
        made.close()

    aio.run_blocking(close)


def infer_batch(aio: AsyncioThread, client: EdgeboxClient, images: list[bytes]) -> list[pb.BatchItem]:
    """Run images through the person plugin in batches of 64; every item must be a result or a clean error."""
    items: list[pb.BatchItem] = []
    for start in range(0, len(images), 64):
        chunk = images[start:start + 64]
        items += aio.submit(client.infer_batch, chunk, plugin="person").result(300)
    for item in items:
        assert item.error_code in (OK, INVALID), item
        assert (item.result is None) == (item.error_code != OK), item
        assert "Traceback" not in item.error_message, item.error_message
    return items


def tally(items: list[pb.BatchItem]) -> str:
    counts = Counter("decoded" if i.error_code == OK else "refused" for i in items)
    return f"{counts['decoded']} decoded, {counts['refused']} refused with 400"


def offsets(length: int, count: int = 40) -> list[int]:
    """Cut points: every byte of the header region, then spread over the whole file."""
    return sorted({*range(40), *np.linspace(40, length - 1, count, dtype=int).tolist()})


# -- corrupt and truncated photos ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_photos_at_many_offsets_are_decoded_partially_or_refused_with_400(aio, client, figures, kind):
    photo = photo_jpeg("astronaut") if kind == "jpeg" else photo_png("astronaut")
    cuts = offsets(len(photo))
    items = infer_batch(aio, client, [photo[:n] for n in cuts])
    assert items[0].error_code == INVALID  # zero bytes
    figures.add(f"truncated {kind.upper()} ({len(cuts)} cut points)", tally(items))


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_photos_with_flipped_bytes_are_decoded_or_refused_with_400(aio, client, figures, kind):
    photo = photo_jpeg("astronaut") if kind == "jpeg" else photo_png("camera")
    rng = random.Random(8)
    variants = []
    for i in range(128):
        data = bytearray(photo)
        # the first 32 variants hit the header, where a flip changes what the decoder believes
        span = 600 if i < 32 else len(data)
        for _ in range(1 + i % 8):
            data[rng.randrange(span)] ^= 1 << rng.randrange(8)
        variants.append(bytes(data))
    items = infer_batch(aio, client, variants)
    figures.add(f"{kind.upper()} with 1-8 flipped bits (128 variants)", tally(items))


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 header is rewritten to claim width x height."""
    data = bytearray(photo_jpeg("coffee"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


ABSURD_FRAMES = {
    "PNG header claiming 100000x100000": (pb.Frame(image_data=png_claiming(100_000, 100_000)), "100000x100000"),
    "PNG header claiming 4294967295x1": (pb.Frame(image_data=png_claiming(2**32 - 1, 1)), "4294967295x1"),
    "PNG header claiming 0x0": (pb.Frame(image_data=png_claiming(0, 0)), "0x0"),
    "JPEG header claiming 65535x65535": (pb.Frame(image_data=jpeg_claiming(65535, 65535)), "65535x65535"),
    "JPEG header claiming 0x480": (pb.Frame(image_data=jpeg_claiming(0, 480)), ""),
    "raw BGR8 claiming 100000x100000": (pb.Frame(image_data=b"\x00" * 300, format=pb.PixelFormat.BGR8,
                                                 width=100_000, height=100_000), "100000x100000"),
    "raw BGR8 10x10 with 299 bytes": (pb.Frame(image_data=b"\x00" * 299, format=pb.PixelFormat.BGR8, width=10,
                                               height=10), "needs 300 bytes"),
    "raw GRAY8 10x10 with 101 bytes": (pb.Frame(image_data=b"\x00" * 101, format=pb.PixelFormat.GRAY8, width=10,
                                                height=10), "needs 100 bytes"),
    "raw RGB8 without width and height": (pb.Frame(image_data=b"\x00" * 300, format=pb.PixelFormat.RGB8), "0x0"),
    "33 MiB of bytes": (pb.Frame(image_data=b"\xff\xd8" + b"\x00" * (33 * 2**20)), "33"),
}


@pytest.mark.parametrize("case", list(ABSURD_FRAMES))
def test_frames_of_absurd_size_are_refused_with_400_naming_the_size(aio, client, case):
    frame, mentions = ABSURD_FRAMES[case]

    async def run() -> Outcome:
        return await attempt(client.stub.infer_single_frame(pb.InferRequest(plugin="person", frame=frame)))

    outcome = aio.run_blocking(run)
    assert_clean(outcome, case)
    assert outcome.status is Status.INVALID_ARGUMENT and outcome.code == 400, outcome
    assert mentions in outcome.message, outcome.message


class RssSampler:
    """Samples a process's RSS every 50 ms in a thread; `peak` is the highest value seen (MB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_batch_of_tiny_pngs_that_decode_to_8192x8192_keeps_memory_bounded(aio, client, engine, figures):
    # 190 KB each, 200 MB each once decoded: all at once would need several GB. The engine decodes at most
    # MAX_DECODED_PIXELS_IN_FLIGHT pixels at a time; the others wait their turn.
    ok, buf = cv2.imencode(".png", np.zeros((8192, 8192, 3), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    bomb = buf.tobytes()
    count = 12
    assert engine.proc is not None
    before = rss_mb(engine.proc.pid)
    started = time.monotonic()
    with RssSampler(engine.proc.pid) as sampler:
        items = aio.submit(client.infer_batch, [bomb] * count, plugin="person").result(600)
    elapsed = time.monotonic() - started
    assert [i.error_code for i in items] == [OK] * count
    growth = sampler.peak - before
    figures.add(f"{count} PNGs of {len(bomb) // 1024} KB decoding to 8192x8192",
                f"engine RSS {before:.0f} MB before, peak {sampler.peak:.0f} MB (+{growth:.0f}), "
                f"batch took {elapsed:.1f} s")
    # Decoded all at once they would need about count x 375 MB; two at a time stay near 1 GB.
    assert growth < 1600, f"RSS grew by {growth:.0f} MB while decoding the batch"


def test_the_engine_still_finds_the_person_after_the_bad_input(aio, client):
    result = aio.submit(client.infer, photo_jpeg("astronaut"), plugin="person").result(120)
    assert '"label":"person"' in result.json_data


# -- a thousand AddCamera calls at once ------------------------------------------------------------------------
MAX_CAMERAS = 24
STEADY = ["steady-1", "steady-2"]
BURST_WORKFLOW = "burst-motion"


def burst_requests(rng: random.Random) -> list[tuple[str, pb.AddCameraRequest]]:
    """1000 AddCamera requests: 400 valid demo cameras and 600 invalid ones of several kinds, shuffled."""
    requests: list[tuple[str, pb.AddCameraRequest]] = []

    def add(kind: str, camera_id: str, url: str = "demo://empty", workflow: str = BURST_WORKFLOW,
            config: dict[str, str] | None = None) -> None:
        requests.append((kind, pb.AddCameraRequest(camera_id=camera_id, rtsp_url=url, workflow_id=workflow,
                                                    config={"fps": "1"} if config is None else config)))

    for i in range(400):
        add("valid", f"burst-{i:03d}")
    for i in range(600):
        match i % 8:
            case 0: add("bad id", f"burst {i} with spaces")
            case 1: add("bad url", f"burst-bad-url-{i}", url=f"ftp://10.0.0.{i % 250}/x")
            case 2: add("unknown workflow", f"burst-no-wf-{i}", workflow=f"nope-{i}")
            case 3: add("bad option value", f"burst-bad-fps-{i}", config={"fps": str(-i)})
            case 4: add("unknown option", f"burst-bad-key-{i}", config={f"opt{i}": "1"})
            case 5: add("control character", f"burst-ctl-{i}", url=f"rtsp://cam\x00{i}/x")
            case 6: add("duplicate", STEADY[i % 2])
            case 7: add("empty", "", url="", workflow="")
    rng.shuffle(requests)
    return requests


EXPECTED_STATUS = {"bad id": Status.INVALID_ARGUMENT, "bad url": Status.INVALID_ARGUMENT,
                   "unknown workflow": Status.NOT_FOUND, "bad option value": Status.INVALID_ARGUMENT,
                   "unknown option": Status.INVALID_ARGUMENT, "control character": Status.INVALID_ARGUMENT,
                   "duplicate": Status.ALREADY_EXISTS, "empty": Status.INVALID_ARGUMENT}


def trio_task_names() -> list[str]:
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return names


async def test_a_burst_of_1000_add_camera_calls_is_refused_or_bounded_and_fully_undone(tmp_path, aio, figures):
    config = engine_config(tmp_path / "data", {"engine": without_admission({"max_cameras": MAX_CAMERAS}),
                                               "log_level": "WARNING"})
    async with running_engine(config) as engine:
        node = engine.node
        client = TrioClient(aio, engine.host, engine.port, timeout=300)
        await client.deploy_workflow(pb.WorkflowSpec(workflow_id=BURST_WORKFLOW, plugins=["motion"]))
        baseline_tasks = len(trio_task_names())
        rss_start = process_rss_bytes() / 2**20
        for camera_id in STEADY:
            await client.add_camera(camera_id, "demo://empty", BURST_WORKFLOW, {"fps": "2"})
        await wait_until(lambda: all(node.fleet.get(c).state.name == "STREAMING" for c in STEADY), timeout=60,
                         what="the steady cameras STREAMING")
        frames_before = {c: node.fleet.get(c).status.frames_in for c in STEADY}
        results_before = {c: node.fleet.get(c).pipeline.results for c in STEADY}

        requests = burst_requests(random.Random(1000))

        async def burst() -> list[Outcome]:
            return await asyncio.gather(*(attempt(client.client.stub.add_camera(r)) for _, r in requests))

        started = trio.current_time()
        outcomes = await aio.run(burst)
        burst_s = trio.current_time() - started
        rss_burst = process_rss_bytes() / 2**20

        by_kind: dict[str, Counter[str]] = {}
        for (kind, request), outcome in zip(requests, outcomes, strict=True):
            assert_clean(outcome, request)
            by_kind.setdefault(kind, Counter())[outcome.status.name] += 1
            if kind != "valid":
                assert outcome.status is EXPECTED_STATUS[kind], (kind, request, outcome)
            elif not outcome.ok:
                assert outcome.status is Status.RESOURCE_EXHAUSTED and outcome.code == 429, outcome
                assert "engine.max_cameras" in outcome.message, outcome.message
        assert by_kind["valid"]["OK"] == MAX_CAMERAS - len(STEADY), by_kind
        assert by_kind["valid"]["RESOURCE_EXHAUSTED"] == 400 - (MAX_CAMERAS - len(STEADY)), by_kind
        added = [r.camera_id for (kind, r), o in zip(requests, outcomes, strict=True) if kind == "valid" and o.ok]
        assert len(node.fleet) == MAX_CAMERAS

        # the cameras that were streaming before the burst kept going through it and after it
        await wait_until(lambda: all(node.fleet.get(c).status.frames_in > frames_before[c] + 20 for c in STEADY)
                         and all(node.fleet.get(c).pipeline.results > results_before[c] + 4 for c in STEADY),
                         timeout=60, what="the steady cameras' frame counters advancing")
        assert all(node.fleet.get(c).state.name == "STREAMING" for c in STEADY)
        await wait_until(lambda: sum(c.state.name == "STREAMING" for c in node.fleet.cameras()) == MAX_CAMERAS,
                         timeout=90, what="every admitted camera STREAMING")
        rss_running = process_rss_bytes() / 2**20

        async def remove_all() -> list[Outcome]:
            return await asyncio.gather(*(attempt(client.client.remove_camera(c)) for c in added + STEADY))

        started = trio.current_time()
        removals = await aio.run(remove_all)
        remove_s = trio.current_time() - started
        assert all(o.ok for o in removals), [o for o in removals if not o.ok]
        assert await client.list_cameras() == []
        assert len(node.fleet) == 0
        await wait_until(lambda: not [n for n in trio_task_names() if n.startswith("camera:")], timeout=30,
                         what="no camera task left")
        await wait_until(lambda: len(trio_task_names()) <= baseline_tasks, timeout=30,
                         what=f"the task count back to {baseline_tasks} ({trio_task_names()})")
        exposition = node.metrics.exposition().decode()
        leftovers = [line for line in exposition.splitlines() if 'camera="' in line]
        assert leftovers == [], leftovers[:5]
        assert not set(node.hub.latest_by_source) & {*added, *STEADY}
        metrics = await client.metrics()
        assert metrics.registered_cameras == 0 and metrics.active_cameras == 0
        rss_end = process_rss_bytes() / 2**20
        client.close()

    summary = {kind: dict(counts) for kind, counts in sorted(by_kind.items())}
    figures.add("AddCamera burst (1000 concurrent calls)", f"answered in {burst_s:.1f} s: {summary}")
    figures.add("AddCamera burst RSS (test process, in-process engine)",
                f"{rss_start:.0f} MB before, {rss_burst:.0f} MB after the burst, {rss_running:.0f} MB with "
                f"{MAX_CAMERAS} cameras streaming, {rss_end:.0f} MB after removing all")
    figures.add("RemoveCamera of all 24 cameras (concurrent)",
                f"{remove_s:.1f} s; 0 camera tasks, 0 camera metrics series left; tasks back to {baseline_tasks}")
    assert rss_end - rss_start < 300, (rss_start, rss_end)
