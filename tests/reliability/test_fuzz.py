"""Fuzzing every RPC of one real engine (a subprocess) with hypothesis: random field values and raw bytes.

Every call must end OK or with a clean status from the engine's error table ("[code NAME] prose", no
traceback), never INTERNAL or UNKNOWN. Afterwards the engine must still be SERVING and find the astronaut.
Examples are bounded so that the whole module runs in about two minutes on two busy cores.
"""

from __future__ import annotations

import collections
import operator
import random
import string
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edgebox.client import EdgeboxClient
from edgebox.config import BACKEND_CHOICES
from edgebox.limits import MAX_SUBSCRIPTION_FILTERS
from edgebox.proto_gen import infer as pb
from tests.reliability.helpers import (
    UNARY_METHODS,
    Outcome,
    assert_clean,
    attempt,
    field_bytes,
    field_varint,
    raw_channel,
    raw_server_stream,
    raw_unary,
)
from tests.support.engine import AsyncioThread, EngineProcess, photo_bgr, start_engine_process

# No shrinking: a failing example is reported as found (shrinking huge strings against a live engine takes
# many minutes), and the suite stays bounded in time.
FUZZ = settings(max_examples=200, deadline=None, database=None, print_blob=True, report_multiple_bugs=False,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
RAW_FUZZ = settings(FUZZ, max_examples=40)  # per method

WORKFLOWS = {"fz-motion": ["motion"], "fz-person": ["person"]}
KNOWN_IDS = [*WORKFLOWS, "fz-new-1", "fz-new-2", "cam-1", "cam-2", "cam-3"]
PLUGINS = ["person", "face", "motion"]
CALL_TIMEOUT_S = 60.0
OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)


# -- the engine and its clients ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    eng = start_engine_process(tmp_path_factory.mktemp("fuzz"),
                               {"engine": {"max_cameras": 4}, "log_level": "WARNING"})
    yield eng
    code = eng.stop()
    assert code == 0, eng.log()


@pytest.fixture(scope="module")
def client(engine: EngineProcess, aio: AsyncioThread) -> Iterator[EdgeboxClient]:
    async def make() -> EdgeboxClient:
        made = EdgeboxClient(engine.host, engine.port, timeout=CALL_TIMEOUT_S)
        for workflow_id, plugins in WORKFLOWS.items():
            await made.deploy_workflow(pb.WorkflowSpec(workflow_id=workflow_id, plugins=plugins))
        return made

    made = aio.run_blocking(make)
    yield made
    aio.run_blocking(_as_async(made.close))


@pytest.fixture(scope="module")
def raw(engine: EngineProcess, aio: AsyncioThread) -> Iterator[Channel]:
    channel = aio.run_blocking(_as_async(lambda: raw_channel(engine.host, engine.port)))
    yield channel
    aio.run_blocking(_as_async(channel.close))


def _as_async(fn: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> Any:
        return fn()

    return run


def call(aio: AsyncioThread, rpc: str, make_call: Callable[[], Any], what: object) -> Outcome:
    """Run one call on the asyncio thread, check that it ended cleanly, and count its status."""
    async def run() -> Outcome:
        return await attempt(make_call())

    outcome = aio.run_blocking(run, timeout=CALL_TIMEOUT_S * 2)
    assert_clean(outcome, what)
    OUTCOMES[rpc][outcome.status.name] += 1
    return outcome


# -- strategies ---------------------------------------------------------------------------------------------------
ID_CHARS = string.ascii_letters + string.digits + "_.-"
huge_text = st.builds(operator.mul, st.sampled_from(["a", "é", "\x00", "🙂", "../", "%00", "\u202e"]),
                      st.integers(1_000, 100_000))
odd_text = st.text(max_size=80)  # any code point but surrogates: NUL, controls, RTL marks, emoji...
ids = st.one_of(st.sampled_from(KNOWN_IDS), st.text(ID_CHARS, min_size=1, max_size=70), odd_text, huge_text)
floats = st.floats(width=32)  # NaN, infinities, negatives, subnormals
uint32 = st.integers(0, 2**32 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)

points = st.builds(pb.Point, x=floats, y=floats)
zones = st.builds(pb.Zone, name=st.one_of(odd_text, huge_text), points=st.lists(points, max_size=70))
alarms = st.builds(pb.AlarmRule, labels=st.lists(st.one_of(st.sampled_from(["person", "face"]), odd_text),
                                                  max_size=5),
                   min_score=floats, min_consecutive_frames=uint32, cooldown_ms=uint32)
param_keys = st.one_of(st.sampled_from(["person.min_box", "motion.threshold", "motion.min_area",
                                        "face.threshold", "person.", ".x"]), odd_text)
param_values = st.one_of(st.sampled_from(["0.5", "nan", "inf", "-1", "1e309", "", "25"]), odd_text,
                         floats.map(str))
specs = st.builds(
    pb.WorkflowSpec,
    workflow_id=ids,
    plugins=st.lists(st.one_of(st.sampled_from(PLUGINS), odd_text), max_size=10),
    min_score=floats,
    zones=st.lists(zones, max_size=34),
    alarm=st.one_of(st.none(), alarms),
    attach_snapshot=st.booleans(),
    backend=st.one_of(st.sampled_from(["", *BACKEND_CHOICES]), odd_text),
    params=st.dictionaries(param_keys, param_values, max_size=70),
)

unit = st.floats(0, 1, width=32)
# Specs that pass validation more often than not, so that deploy and update reach loading and storing.
valid_specs = st.builds(
    pb.WorkflowSpec,
    workflow_id=st.sampled_from(KNOWN_IDS[:4]),
    plugins=st.lists(st.sampled_from(PLUGINS), min_size=1, max_size=3, unique=True),
    min_score=unit,
    zones=st.lists(st.builds(pb.Zone, name=st.text(ID_CHARS, max_size=10),
                             points=st.lists(st.builds(pb.Point, x=unit, y=unit), min_size=3, max_size=8)),
                   max_size=3),
    alarm=st.one_of(st.none(), st.builds(pb.AlarmRule, labels=st.lists(st.sampled_from(["person", "face"]),
                                                                          max_size=2),
                                         min_score=unit, min_consecutive_frames=st.integers(0, 5),
                                         cooldown_ms=st.integers(0, 10_000))),
    attach_snapshot=st.booleans(),
    backend=st.sampled_from(["", "auto", "openvino-cpu", "onnxruntime-cpu"]),
    params=st.dictionaries(st.sampled_from(["person.min_box", "motion.threshold", "face.threshold"]),
                           st.sampled_from(["0.1", "0.5", "30", "x"]), max_size=2),
)


def _small_photo(name: str, size: int, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.resize(photo_bgr(name), (size, size)))
    assert ok
    return buf.tobytes()


REAL_IMAGES = [_small_photo("astronaut", 96, ".jpg"), _small_photo("astronaut", 96, ".png"),
               _small_photo("coffee", 64, ".jpg")]


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds one tiny IDAT: the header is all the engine may trust."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + \
        chunk(b"IEND", b"")


def _flip(data: bytes, positions: list[int]) -> bytes:
    out = bytearray(data)
    for p in positions:
        out[p % len(out)] ^= 0xFF
    return bytes(out)


image_data = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from(REAL_IMAGES),
    st.builds(lambda img, n: img[:n], st.sampled_from(REAL_IMAGES), st.integers(0, 4000)),
    st.builds(_flip, st.sampled_from(REAL_IMAGES), st.lists(st.integers(0, 10_000), min_size=1, max_size=8)),
    st.builds(png_header, uint32, uint32),
    st.builds(lambda b: b"\xff\xd8" + b, st.binary(max_size=512)),
)
pixel_formats = st.sampled_from(list(pb.PixelFormat))
frames = st.one_of(
    st.builds(pb.Frame, image_data=image_data, format=pixel_formats, width=uint32, height=uint32,
              timestamp=int64),
    # raw frames whose length is right, or off by a little
    st.builds(lambda w, h, fmt, extra, seed: pb.Frame(
        image_data=random.Random(seed).randbytes(max(0, w * h * (1 if fmt == pb.PixelFormat.GRAY8 else 3) + extra)),
        format=fmt, width=w, height=h),
        st.integers(1, 48), st.integers(1, 48), st.sampled_from([pb.PixelFormat.BGR8, pb.PixelFormat.RGB8,
                                                                 pb.PixelFormat.GRAY8]),
        st.integers(-2, 2), st.integers(0, 2**32)),
)
targets = st.one_of(st.tuples(st.sampled_from(list(WORKFLOWS)), st.just("")),
                    st.tuples(st.just(""), st.sampled_from(PLUGINS)),
                    st.tuples(st.one_of(st.just(""), ids), st.one_of(st.just(""), ids)))
camera_urls = st.one_of(st.sampled_from(["demo://empty", "demo://person", "demo://nothing", "rtsp://", "rtsp://:0/x",
                                         "rtsp://127.0.0.1:1/none", "file:///nonexistent.mp4", "http://[::1", ""]),
                        odd_text, huge_text, st.builds(lambda s: "rtsp://" + s, odd_text))
camera_options = st.dictionaries(
    st.one_of(st.sampled_from(["fps", "roi", "transport", "watchdog_s", "open_timeout_s", "max_backoff_s"]),
              odd_text),
    st.one_of(st.sampled_from(["1", "0", "-1", "nan", "inf", "1e309", "0.5,0.5,0.5,0.5", "0,0,2,2", "udp", "",
                               "1,2,3"]), odd_text, floats.map(str)),
    max_size=40)


# -- 1. typed requests with random field values ------------------------------------------------------------------
@FUZZ
@given(camera_id=ids, url=camera_urls, workflow_id=st.one_of(st.sampled_from(list(WORKFLOWS)), ids),
       options=camera_options, remove=st.booleans())
def test_add_and_remove_camera_with_random_fields_end_cleanly(aio, client, camera_id, url, workflow_id, options,
                                                              remove):
    request = pb.AddCameraRequest(camera_id=camera_id, rtsp_url=url, workflow_id=workflow_id, config=options)
    added = call(aio, "AddCamera", lambda: client.stub.add_camera(request), request)
    if added.ok:
        assert added.value.camera.camera_id == camera_id
    if remove or added.ok:
        call(aio, "RemoveCamera", lambda: client.stub.remove_camera(pb.RemoveCameraRequest(camera_id=camera_id)),
             camera_id)


def test_no_fuzzed_camera_is_left(aio, client):
    async def leftovers() -> list[str]:
        return [c.camera_id for c in await client.list_cameras()]

    assert aio.run_blocking(leftovers) == []


@settings(FUZZ, max_examples=250)
@given(spec=st.one_of(specs, valid_specs, st.none()), update=st.booleans(), delete=st.booleans())
def test_deploy_update_delete_workflow_with_random_specs_end_cleanly(aio, client, spec, update, delete):
    if update:
        request = pb.UpdateWorkflowRequest(workflow=spec)
        call(aio, "UpdateWorkflow", lambda: client.stub.update_workflow(request), request)
    else:
        request = pb.DeployWorkflowRequest(workflow=spec)
        call(aio, "DeployWorkflow", lambda: client.stub.deploy_workflow(request), request)
    if delete and spec is not None and spec.workflow_id not in WORKFLOWS:
        call(aio, "DeleteWorkflow", lambda: client.stub.delete_workflow(
            pb.DeleteWorkflowRequest(workflow_id=spec.workflow_id)), spec.workflow_id)
    call(aio, "ListWorkflows", lambda: client.stub.list_workflows(pb.ListWorkflowsRequest()), "list")


@FUZZ
@given(target=targets, frame=st.one_of(st.none(), frames), return_image=st.booleans(),
       source_id=st.one_of(odd_text, huge_text))
def test_infer_single_frame_with_random_frames_ends_cleanly(aio, client, target, frame, return_image, source_id):
    request = pb.InferRequest(workflow_id=target[0], plugin=target[1], frame=frame, return_image=return_image,
                              source_id=source_id)
    outcome = call(aio, "InferSingleFrame", lambda: client.stub.infer_single_frame(request), request)
    if outcome.ok:
        assert outcome.value.result.camera_id == source_id


@settings(FUZZ, max_examples=60)
@given(target=targets, batch=st.lists(frames, max_size=66), return_image=st.booleans())
def test_infer_batch_with_random_frames_ends_cleanly_item_by_item(aio, client, target, batch, return_image):
    request = pb.InferBatchRequest(workflow_id=target[0], plugin=target[1], frames=batch, return_image=return_image)
    outcome = call(aio, "InferBatch", lambda: client.stub.infer_batch(request), request)
    if outcome.ok:
        assert len(outcome.value.items) == len(batch)
        for item in outcome.value.items:
            assert (item.result is None) == (item.error_code != pb.InferErrorCode.OK), item
            assert "Traceback" not in item.error_message
            assert item.error_code != pb.InferErrorCode.INTERNAL_ERROR, item


@settings(FUZZ, max_examples=40)
@given(messages=st.lists(st.builds(pb.StreamFrame, workflow_id=st.one_of(st.just(""), st.sampled_from(list(WORKFLOWS)),
                                                                         ids),
                                   plugin=st.one_of(st.just(""), st.sampled_from(PLUGINS), odd_text),
                                   frame=st.one_of(st.none(), frames), source_id=odd_text,
                                   return_image=st.booleans()),
                         min_size=1, max_size=5))
def test_stream_infer_with_random_frames_answers_in_band_or_ends_cleanly(aio, client, messages):
    async def run() -> list[pb.InferResult]:
        return [r async for r in client.stream_stub.stream_infer(messages, timeout=CALL_TIMEOUT_S)]

    outcome = call(aio, "StreamInfer", run, messages)
    if outcome.ok:
        assert len(outcome.value) == len(messages)
        for result in outcome.value:
            assert result.error_code != pb.InferErrorCode.INTERNAL_ERROR, result
            assert "Traceback" not in result.error_message


@settings(FUZZ, max_examples=40)
@given(request=st.builds(pb.SubscribeRequest, camera_ids=st.lists(st.one_of(ids, odd_text), max_size=300),
                         workflow_ids=st.lists(ids, max_size=20), alarms_only=st.booleans(),
                         omit_images=st.booleans()))
def test_subscribe_results_with_random_filters_opens_or_ends_cleanly(aio, raw, request):
    outcome = call(aio, "SubscribeResults",
                   lambda: raw_server_stream(raw, "SubscribeResults", bytes(request), read_for=0.2), request)
    if len(request.camera_ids) + len(request.workflow_ids) > MAX_SUBSCRIPTION_FILTERS:
        assert outcome.status is Status.INVALID_ARGUMENT, outcome


def test_subscribe_results_with_100000_camera_ids_is_refused_with_400(aio, raw):
    request = pb.SubscribeRequest(camera_ids=[f"cam-{i}" for i in range(100_000)])
    outcome = call(aio, "SubscribeResults", lambda: raw_server_stream(raw, "SubscribeResults", bytes(request),
                                                                      read_for=30),
                   "100000 camera ids")
    assert outcome.status is Status.INVALID_ARGUMENT and "MAX_SUBSCRIPTION_FILTERS" in outcome.message, outcome


# -- 2. raw bytes as the request of every method ---------------------------------------------------------------
@pytest.mark.parametrize("method", UNARY_METHODS)
@RAW_FUZZ
@given(body=st.binary(max_size=512))
def test_random_bytes_as_a_unary_request_end_cleanly(aio, raw, method, body):
    call(aio, method, lambda: raw_unary(raw, method, body), (method, body))


@pytest.mark.parametrize("method", UNARY_METHODS)
@RAW_FUZZ
@given(data=st.binary(max_size=64))
def test_random_bytes_as_the_whole_data_frame_prefix_included_end_cleanly(aio, raw, method, data):
    call(aio, method, lambda: raw_unary(raw, method, data, framed=False), (method, data))


@pytest.mark.parametrize("method", ["SubscribeResults", "StreamInfer"])
@RAW_FUZZ
@given(body=st.binary(max_size=512))
def test_random_bytes_as_a_stream_request_end_cleanly(aio, raw, method, body):
    call(aio, method, lambda: raw_server_stream(raw, method, body, read_for=0.2), (method, body))


def _prefix(length: int, compressed: bool = False) -> bytes:
    return struct.pack(">?I", compressed, length)


MALFORMED_FRAMES = {
    "no message at all": None,
    "prefix cut after 3 bytes": b"\x00\x00\x00",
    "length says 100, 4 bytes follow": _prefix(100) + b"\x0a\x02ab",
    "length says 4 GiB": _prefix(0xFFFFFFFF),
    "compressed flag set": _prefix(2, compressed=True) + b"\x0a\x00",
    "wire type 7 (invalid)": _prefix(1) + b"\x0f",
    "field number 0": _prefix(2) + b"\x00\x01",
    "length-delimited field runs past the end": _prefix(3) + b"\x0a\x7f\x01",
    "ten-byte varint overflow": _prefix(11) + b"\x08" + b"\xff" * 10,
}


@pytest.mark.parametrize("method", UNARY_METHODS)
@pytest.mark.parametrize("case", list(MALFORMED_FRAMES))
def test_malformed_grpc_framing_is_invalid_argument_never_internal(aio, raw, method, case):
    body = MALFORMED_FRAMES[case]
    outcome = call(aio, method, lambda: raw_unary(raw, method, body, framed=False), (method, case))
    if case in ("no message at all", "prefix cut after 3 bytes", "length says 100, 4 bytes follow",
                "compressed flag set"):
        assert outcome.status is Status.INVALID_ARGUMENT, outcome
    if case == "length says 4 GiB":
        assert outcome.status is Status.RESOURCE_EXHAUSTED, outcome


@settings(FUZZ, max_examples=80)
@given(fmt=st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(4, 100)), data=st.sampled_from(REAL_IMAGES),
       width=uint32, height=uint32)
def test_unknown_pixel_format_values_on_the_wire_are_refused_cleanly(aio, raw, fmt, data, width, height):
    # Frame.format is appended as a second `frame` field: protobuf merges it into the first one.
    body = bytes(pb.InferRequest(plugin="person", frame=pb.Frame(image_data=data, width=width, height=height)))
    body += field_bytes(3, field_varint(2, fmt))
    outcome = call(aio, "InferSingleFrame", lambda: raw_unary(raw, "InferSingleFrame", body), fmt)
    if not 0 <= fmt <= 3:
        assert not outcome.ok, f"format {fmt} was accepted"


# -- 3. afterwards: still serving, still correct --------------------------------------------------------------
def test_after_fuzzing_health_is_serving_and_a_real_inference_still_finds_the_person(aio, client, engine, figures):
    async def check() -> tuple[pb.HealthCheckResponse, pb.InferResult, pb.MetricsResponse]:
        health = await client.health()
        result = await client.infer(_astronaut(), plugin="person")
        return health, result, await client.metrics()

    health, result, metrics = aio.run_blocking(check)
    assert health.status == pb.HealthStatus.SERVING
    assert '"label":"person"' in result.json_data, result.json_data
    assert engine.proc is not None and engine.proc.poll() is None
    log = engine.log_path.read_text(encoding="utf-8", errors="replace")
    assert "unexpected error in" not in log, engine.log()
    total = sum(sum(c.values()) for c in OUTCOMES.values())
    figures.add("fuzz calls made (all clean)", f"{total} over {len(OUTCOMES)} methods; engine RSS "
                f"{metrics.memory_usage_bytes / 2**20:.0f} MB after fuzzing")
    for rpc in sorted(OUTCOMES):
        figures.add(f"fuzz outcomes {rpc}", ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES[rpc].items())))


def _astronaut() -> bytes:
    ok, buf = cv2.imencode(".jpg", photo_bgr("astronaut"))
    assert ok
    return buf.tobytes()
