"""Every RPC of the InferenceService, called with edgebox.client against one real engine process (module-wide).

Tests share the engine, so each one uses its own camera and workflow ids. Error codes are in test_errors.py,
stream lifetimes in test_streams.py, request size limits in test_limits.py.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import cv2
import pytest
import trio

from edgebox import __version__
from edgebox.client import pb
from edgebox.config import EngineConfig
from edgebox.engine.models import cpu_executions
from edgebox.errors import ErrorCode
from tests.support.engine import (
    DATA,
    connect,
    expect_error,
    photo_bgr,
    photo_jpeg,
    photo_png,
    start_engine_process,
    unique_id,
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    proc = start_engine_process(tmp_path_factory.mktemp("rpcs"))
    print(f"engine READY after {proc.startup_s:.2f} s: {proc.ready_line}")
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()


@pytest.fixture(scope="module")
def client(aio, engine):
    with connect(aio, engine.host, engine.port) as c:
        yield c


def detections(result: pb.InferResult) -> list[dict]:
    return json.loads(result.json_data)["detections"]


def people(result: pb.InferResult) -> list[dict]:
    return [d for d in detections(result) if d["label"] == "person"]


def spec(workflow_id: str, plugins=("person",), **fields) -> pb.WorkflowSpec:
    return pb.WorkflowSpec(workflow_id=workflow_id, plugins=list(plugins), **fields)


def raw_frame(name: str, pixel_format: pb.PixelFormat) -> pb.Frame:
    bgr = photo_bgr(name)
    height, width = bgr.shape[:2]
    if pixel_format == pb.PixelFormat.RGB8:
        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    elif pixel_format == pb.PixelFormat.GRAY8:
        pixels = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    else:
        pixels = bgr
    return pb.Frame(image_data=pixels.tobytes(), format=pixel_format, width=width, height=height)


async def infer_frame(client, frame: pb.Frame, **fields) -> pb.InferResult:
    request = pb.InferRequest(frame=frame, **fields)
    return (await client.aio.run(client.client.stub.infer_single_frame, request)).result


# -- health and metrics -------------------------------------------------------------------------------------------
async def test_health_check_reports_serving_three_plugins_and_usable_backends(client):
    health = await client.health()
    assert health.status == pb.HealthStatus.SERVING
    assert health.plugin_count == 3
    assert sorted(health.plugins) == ["face", "motion", "person"]
    assert health.plugin_errors == []
    assert health.backends, "at least one backend must be usable"
    assert any(b.endswith("-cpu") for b in health.backends)
    assert health.version == __version__
    assert health.uptime_s > 0
    assert abs(health.timestamp - time.time() * 1000) < 60_000


async def test_health_check_round_trip_time_is_printed(client):
    async def timed_calls() -> list[float]:
        times = []
        for _ in range(50):
            started = time.perf_counter()
            await client.client.health()
            times.append((time.perf_counter() - started) * 1000)
        return times

    times = await client.aio.run(timed_calls)
    # Printed, not asserted: the 10 ms goal is measured on an idle box, not on a busy CI core.
    print(f"HealthCheck round trip over 50 calls: median {statistics.median(times):.2f} ms, "
          f"p90 {sorted(times)[44]:.2f} ms, max {max(times):.2f} ms")
    assert len(times) == 50


async def test_get_metrics_counters_move_after_inferences(client):
    before = await client.metrics()
    await client.infer(photo_png("astronaut"), plugin="person")
    await client.infer(photo_png("chelsea"), plugin="person")
    after = await client.metrics()
    assert after.total_infer_requests >= before.total_infer_requests + 2
    assert after.total_infer_requests_64 >= before.total_infer_requests_64 + 2
    assert after.total_infer_requests == min(after.total_infer_requests_64, 2**31 - 1)
    assert after.avg_infer_latency_ms > 0
    assert after.avg_compute_ms > 0
    assert after.avg_batch_size >= 1
    assert after.memory_usage_bytes > 10 * 1024 * 1024
    assert after.workflows == len(await client.list_workflows())
    assert after.registered_cameras == len(await client.list_cameras())
    # The models with what they really run on, matching HealthCheck's list.
    person = next(m for m in after.models if m.model == "person")
    assert person.backend in (await client.health()).backends and person.device and person.batch_limit >= 1
    assert person.executions == cpu_executions(EngineConfig())  # a CPU backend here: the config's default
    assert f"person: {person.backend} on {person.device}" in (await client.health()).models


async def test_get_metrics_counts_failed_inferences(client):
    before = await client.metrics()
    items = await client.infer_batch([b"\xff\xd8 not a jpeg"], plugin="person")
    assert items[0].error_code == pb.InferErrorCode.INVALID_REQUEST
    after = await client.metrics()
    assert after.failed_infer_requests >= before.failed_infer_requests + 1


# -- workflows ----------------------------------------------------------------------------------------------------
async def test_deploy_update_list_delete_workflow_versions_increase(client):
    wid = unique_id("wf")
    deployed = await client.deploy_workflow(spec(wid, min_score=0.6))
    assert deployed.version == 1
    assert deployed.spec.workflow_id == wid
    assert deployed.spec.plugins == ["person"]
    assert deployed.spec.min_score == pytest.approx(0.6)
    assert deployed.updated_at_ms > 0

    updated = await client.update_workflow(spec(wid, plugins=["person", "face"], min_score=0.7))
    assert updated.version == 2
    assert updated.spec.plugins == ["person", "face"]
    assert updated.updated_at_ms >= deployed.updated_at_ms
    again = await client.update_workflow(spec(wid, min_score=0.8))
    assert again.version == 3

    listed = {w.spec.workflow_id: w for w in await client.list_workflows()}
    assert listed[wid].version == 3
    assert listed[wid].spec.min_score == pytest.approx(0.8)
    ids = [w.spec.workflow_id for w in await client.list_workflows()]
    assert ids == sorted(ids)

    await client.delete_workflow(wid)
    assert wid not in {w.spec.workflow_id for w in await client.list_workflows()}


async def test_deploy_keeps_zones_alarm_params_and_backend(client):
    wid = unique_id("wf")
    zone = pb.Zone(name="door", points=[pb.Point(x=0, y=0), pb.Point(x=1, y=0), pb.Point(x=1, y=1)])
    alarm = pb.AlarmRule(labels=["person"], min_score=0.7, min_consecutive_frames=2, cooldown_ms=5000)
    info = await client.deploy_workflow(spec(wid, zones=[zone], alarm=alarm, attach_snapshot=False,
                                             backend="auto", params={"person.min_box": "0.1"}))
    assert info.spec.zones[0].name == "door"
    assert [(p.x, p.y) for p in info.spec.zones[0].points] == [(0, 0), (1, 0), (1, 1)]
    assert info.spec.alarm.labels == ["person"]
    assert info.spec.alarm.min_consecutive_frames == 2
    assert info.spec.alarm.cooldown_ms == 5000
    assert info.spec.attach_snapshot is False
    assert info.spec.backend == "auto"
    assert info.spec.params == {"person.min_box": "0.1"}
    await client.delete_workflow(wid)


async def test_update_with_unloadable_plugin_returns_2001_and_old_version_keeps_running(client):
    wid = unique_id("wf")
    await client.deploy_workflow(spec(wid))
    exc = await expect_error(client.update_workflow(spec(wid, plugins=["no_such_plugin"])))
    assert exc.code == ErrorCode.PLUGIN_LOAD_FAILED
    assert exc.status.name == "FAILED_PRECONDITION"
    assert "no_such_plugin" in exc.message

    [info] = [w for w in await client.list_workflows() if w.spec.workflow_id == wid]
    assert info.version == 1
    assert info.spec.plugins == ["person"]
    result = await client.infer(photo_png("astronaut"), workflow_id=wid)
    assert result.workflow_version == 1
    assert people(result)
    await client.delete_workflow(wid)


async def test_workflow_update_applies_to_the_next_inference(client):
    wid = unique_id("wf")
    await client.deploy_workflow(spec(wid))
    assert people(await client.infer(photo_png("astronaut"), workflow_id=wid))
    # A zone in the top-left corner: the astronaut stands outside it, so nothing counts any more.
    corner = pb.Zone(name="corner", points=[pb.Point(x=0, y=0), pb.Point(x=0.1, y=0), pb.Point(x=0, y=0.1)])
    await client.update_workflow(spec(wid, zones=[corner]))
    result = await client.infer(photo_png("astronaut"), workflow_id=wid)
    assert result.workflow_version == 2
    assert detections(result) == []
    assert result.type == pb.ResultType.NORMAL
    await client.delete_workflow(wid)


# -- cameras ------------------------------------------------------------------------------------------------------
async def test_add_list_remove_camera(client):
    wid = unique_id("wf")
    cid = unique_id("cam")
    await client.deploy_workflow(spec(wid))
    camera = await client.add_camera(cid, "demo://empty", wid, {"fps": "2"})
    assert camera.camera_id == cid
    assert camera.rtsp_url == "demo://empty"
    assert camera.workflow_id == wid
    assert camera.config == {"fps": "2"}
    assert camera.state != pb.CameraState.CAMERA_STATE_UNSPECIFIED

    listed = {c.camera_id: c for c in await client.list_cameras()}
    assert listed[cid].workflow_id == wid
    ids = [c.camera_id for c in await client.list_cameras()]
    assert ids == sorted(ids)
    [info] = [w for w in await client.list_workflows() if w.spec.workflow_id == wid]
    assert info.camera_ids == [cid]

    await client.remove_camera(cid)
    assert cid not in {c.camera_id for c in await client.list_cameras()}
    [info] = [w for w in await client.list_workflows() if w.spec.workflow_id == wid]
    assert info.camera_ids == []
    await client.delete_workflow(wid)


async def test_demo_camera_reaches_streaming_with_resolution(client):
    wid = unique_id("wf")
    cid = unique_id("cam")
    await client.deploy_workflow(spec(wid))
    await client.add_camera(cid, "demo://empty", wid, {"fps": "2"})

    async def camera():
        return next(c for c in await client.list_cameras() if c.camera_id == cid)

    with trio.fail_after(60):
        while (info := await camera()).state != pb.CameraState.STREAMING:
            await trio.sleep(0.2)
    assert info.resolution == "640x360"
    assert info.error == pb.StreamError.STREAM_ERROR_NONE
    assert (await client.metrics()).active_cameras >= 1
    await client.remove_camera(cid)
    await client.delete_workflow(wid)


async def test_camera_password_is_masked_in_camera_info(client):
    wid = unique_id("wf")
    cid = unique_id("cam")
    await client.deploy_workflow(spec(wid))
    camera = await client.add_camera(cid, "rtsp://admin:s3cret@127.0.0.1:9/stream", wid,
                                     {"open_timeout_s": "1", "fps": "1"})
    assert "s3cret" not in camera.rtsp_url
    assert camera.rtsp_url == "rtsp://admin:***@127.0.0.1:9/stream"
    listed = next(c for c in await client.list_cameras() if c.camera_id == cid)
    assert "s3cret" not in listed.rtsp_url
    await client.remove_camera(cid)
    await client.delete_workflow(wid)


# -- InferSingleFrame ---------------------------------------------------------------------------------------------
async def test_infer_png_finds_the_astronaut_with_box_and_score(client):
    result = await client.infer(photo_png("astronaut"), plugin="person", source_id="client-7")
    data = json.loads(result.json_data)
    assert (data["width"], data["height"]) == (512, 512)
    [person] = people(result)
    assert person["score"] > 0.85
    x1, y1, x2, y2 = person["box"]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
    assert (x2 - x1) * (y2 - y1) > 0.3 * 512 * 512  # the astronaut fills much of the photo
    assert result.camera_id == "client-7"
    assert result.workflow_id == ""
    assert result.type == pb.ResultType.ALARM
    assert result.frame_seq == 1
    assert result.latency_ms > 0
    assert result.image_data == b""


async def test_infer_jpeg_finds_the_astronaut(client):
    result = await client.infer(photo_jpeg("astronaut"), plugin="person")
    assert people(result)[0]["score"] > 0.8


async def test_infer_finds_no_person_in_chelsea_or_coffee(client):
    for name in ("chelsea", "coffee"):
        result = await client.infer(photo_png(name), plugin="person")
        assert people(result) == [], name
        assert result.type == pb.ResultType.NORMAL


async def test_infer_raw_bgr8_frame_finds_the_astronaut(client):
    result = await infer_frame(client, raw_frame("astronaut", pb.PixelFormat.BGR8), plugin="person")
    assert people(result)[0]["score"] > 0.85


async def test_infer_raw_rgb8_frame_finds_the_astronaut(client):
    result = await infer_frame(client, raw_frame("astronaut", pb.PixelFormat.RGB8), plugin="person")
    assert people(result)[0]["score"] > 0.85


async def test_infer_raw_gray8_frame_finds_the_cameraman(client):
    result = await infer_frame(client, raw_frame("camera", pb.PixelFormat.GRAY8), plugin="person")
    assert people(result)[0]["score"] > 0.8


async def test_infer_grayscale_png_finds_the_cameraman(client):
    result = await client.infer(photo_png("camera"), plugin="person")
    assert people(result)[0]["score"] > 0.8


async def test_infer_with_workflow_reports_workflow_version_and_returns_image(client):
    wid = unique_id("wf")
    await client.deploy_workflow(spec(wid))
    result = await client.infer(photo_png("astronaut"), workflow_id=wid, return_image=True, source_id="door")
    assert result.workflow_id == wid
    assert result.workflow_version == 1
    assert result.camera_id == "door"
    assert result.image_data[:2] == b"\xff\xd8"
    assert people(result)
    await client.delete_workflow(wid)


async def test_infer_alarm_attaches_snapshot_when_the_workflow_asks(client):
    wid = unique_id("wf")
    await client.deploy_workflow(spec(wid, attach_snapshot=True))
    alarm = await client.infer(photo_png("astronaut"), workflow_id=wid)
    assert alarm.type == pb.ResultType.ALARM
    assert alarm.image_data[:2] == b"\xff\xd8"
    normal = await client.infer(photo_png("chelsea"), workflow_id=wid)
    assert normal.type == pb.ResultType.NORMAL
    assert normal.image_data == b""
    await client.delete_workflow(wid)


async def test_infer_workflow_min_score_drops_weaker_detections(client):
    wid = unique_id("wf")
    await client.deploy_workflow(spec(wid, min_score=0.99))
    result = await client.infer(photo_png("astronaut"), workflow_id=wid)
    assert detections(result) == []
    await client.delete_workflow(wid)


# -- InferBatch ---------------------------------------------------------------------------------------------------
async def test_infer_batch_mixed_frames_fail_individually(client):
    frames = [photo_png("astronaut"), photo_jpeg("astronaut")[:200], photo_jpeg("chelsea"), b"", photo_png("camera")]
    items = await client.infer_batch(frames, plugin="person")
    assert len(items) == len(frames)
    ok = [items[i] for i in (0, 2, 4)]
    for item in ok:
        assert item.error_code == pb.InferErrorCode.OK
        assert item.error_message == ""
        assert item.result is not None
    assert people(items[0].result)
    assert people(items[2].result) == []
    assert people(items[4].result)
    for bad in (items[1], items[3]):
        assert bad.error_code == pb.InferErrorCode.INVALID_REQUEST
        assert bad.error_message.startswith("[400 INVALID_REQUEST] ")
        assert bad.result is None
    assert "empty" in items[3].error_message
    assert [items[i].result.frame_seq for i in (0, 2, 4)] == [1, 3, 5]


async def test_infer_batch_of_many_frames_returns_one_result_per_frame_in_order(client):
    names = ["astronaut", "chelsea", "coffee", "camera"] * 4
    items = await client.infer_batch([photo_jpeg(n) for n in names], plugin="person")
    assert len(items) == len(names)
    for name, item in zip(names, items):
        assert item.error_code == pb.InferErrorCode.OK
        assert bool(people(item.result)) == (name in ("astronaut", "camera")), name


# -- StreamInfer --------------------------------------------------------------------------------------------------
async def test_stream_infer_answers_each_frame_in_order_and_survives_bad_frames(client):
    frames = [
        pb.StreamFrame(plugin="person", frame=pb.Frame(image_data=photo_png("astronaut")), source_id="s"),
        pb.StreamFrame(frame=pb.Frame(image_data=photo_jpeg("chelsea")), source_id="s"),
        pb.StreamFrame(frame=pb.Frame(image_data=b"\x89PNG\r\n\x1a\n truncated"), source_id="s"),
        pb.StreamFrame(frame=pb.Frame(image_data=b""), source_id="s"),
        pb.StreamFrame(frame=pb.Frame(image_data=photo_jpeg("astronaut")), source_id="s", return_image=True),
    ]
    results = [r async for r in client.stream_infer(frames)]
    assert [r.frame_seq for r in results] == [1, 2, 3, 4, 5]
    assert [r.error_code for r in results] == [pb.InferErrorCode.OK, pb.InferErrorCode.OK,
                                               pb.InferErrorCode.INVALID_REQUEST, pb.InferErrorCode.INVALID_REQUEST,
                                               pb.InferErrorCode.OK]
    assert people(results[0])
    assert people(results[1]) == []
    assert results[2].error_message.startswith("[400 INVALID_REQUEST] ")
    assert "empty" in results[3].error_message
    assert people(results[4])
    assert results[4].image_data[:2] == b"\xff\xd8"
    assert all(r.camera_id == "s" for r in results)


async def test_stream_infer_answers_each_frame_before_the_next_is_sent(client):
    names = ["astronaut", "chelsea", "camera", "coffee"]

    async def lockstep() -> list[tuple[int, bool]]:
        answered = asyncio.Event()

        async def frames():
            for i, name in enumerate(names):
                if i:  # the next frame only after the previous answer: the stream is truly bidirectional
                    await asyncio.wait_for(answered.wait(), 60)
                    answered.clear()
                yield pb.StreamFrame(plugin="person", frame=pb.Frame(image_data=photo_jpeg(name)))

        seen = []
        async for result in client.client.stream_infer(frames()):
            seen.append((result.frame_seq, bool(people(result))))
            answered.set()
        return seen

    assert await client.aio.run(lockstep) == [(1, True), (2, False), (3, True), (4, False)]


async def test_stream_infer_with_workflow_keeps_alarm_state_across_frames(client):
    wid = unique_id("wf")
    await client.deploy_workflow(spec(wid, alarm=pb.AlarmRule(min_consecutive_frames=2)))
    frames = [pb.StreamFrame(workflow_id=wid, frame=pb.Frame(image_data=photo_jpeg("astronaut")))]
    frames += [pb.StreamFrame(frame=pb.Frame(image_data=photo_jpeg("astronaut"))) for _ in range(2)]
    results = [r async for r in client.stream_infer(frames)]
    # The rule wants two consecutive frames with a person: the stream remembers the first one.
    assert [r.type for r in results] == [pb.ResultType.NORMAL, pb.ResultType.ALARM, pb.ResultType.ALARM]
    assert all(r.workflow_id == wid and r.workflow_version == 1 for r in results)
    await client.delete_workflow(wid)


async def test_stream_infer_frame_with_unknown_workflow_carries_1002_and_stream_goes_on(client):
    frames = [
        pb.StreamFrame(workflow_id="no-such-workflow", frame=pb.Frame(image_data=photo_jpeg("astronaut"))),
        pb.StreamFrame(plugin="person", frame=pb.Frame(image_data=photo_jpeg("astronaut"))),
    ]
    results = [r async for r in client.stream_infer(frames)]
    assert results[0].error_code == pb.InferErrorCode.WORKFLOW_NOT_FOUND
    assert results[0].error_message.startswith("[1002 WORKFLOW_NOT_FOUND] ")
    assert results[1].error_code == pb.InferErrorCode.OK
    assert people(results[1])


# -- SubscribeResults ---------------------------------------------------------------------------------------------
async def test_subscribe_results_filters_by_camera_and_alarms(client):
    wid = unique_id("wf")
    person_cam, empty_cam = unique_id("person"), unique_id("empty")
    await client.deploy_workflow(spec(wid, attach_snapshot=True))
    await client.add_camera(person_cam, "demo://person", wid, {"fps": "2"})
    await client.add_camera(empty_cam, "demo://empty", wid, {"fps": "2"})

    by_camera = client.subscribe(camera_ids=[empty_cam])
    alarms = client.subscribe(workflow_ids=[wid], alarms_only=True)
    no_images = client.subscribe(camera_ids=[person_cam], omit_images=True)
    try:
        for _ in range(3):
            result = await by_camera.next()
            assert result.camera_id == empty_cam
            assert result.workflow_id == wid
            assert result.type == pb.ResultType.NORMAL
            assert result.frame_seq > 0
        for _ in range(3):
            result = await alarms.next()
            assert result.type == pb.ResultType.ALARM
            assert result.camera_id == person_cam
            assert people(result)
            assert result.image_data[:2] == b"\xff\xd8"  # the workflow attaches snapshots to alarms
        for _ in range(2):
            result = await no_images.next()
            assert result.camera_id == person_cam
            assert result.image_data == b""
    finally:
        for stream in (by_camera, alarms, no_images):
            await stream.aclose()
        await client.remove_camera(person_cam)
        await client.remove_camera(empty_cam)
        await client.delete_workflow(wid)


# -- the ctl command is a client too ------------------------------------------------------------------------------
async def test_ctl_health_prints_json_from_a_running_engine(engine):
    proc = await trio.run_process([sys.executable, "-m", "edgebox", "ctl", "--target", engine.grpc_address, "health"],
                                  capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    answer = json.loads(proc.stdout)
    assert answer["status"] == "SERVING"
    assert answer["pluginCount"] == 3


async def test_ctl_infer_prints_the_person_result(engine):
    proc = await trio.run_process(
        [sys.executable, "-m", "edgebox", "ctl", "--target", engine.grpc_address, "infer", str(DATA / "astronaut.png")],
        capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    answer = json.loads(proc.stdout)
    assert json.loads(answer["jsonData"])["detections"][0]["label"] == "person"


async def test_ctl_reports_an_error_code_and_exits_1(engine):
    proc = await trio.run_process(
        [sys.executable, "-m", "edgebox", "ctl", "--target", engine.grpc_address, "infer", str(DATA / "astronaut.png"),
         "--workflow", "no-such-workflow"],
        capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 1
    assert "NOT_FOUND code 1002 WORKFLOW_NOT_FOUND" in proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
