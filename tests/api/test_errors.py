"""Every error code a client can meet today, each checked three ways: the gRPC status, the numeric code from the
google.rpc.ErrorInfo detail, and a message a person can read ("[code NAME] what happened", no traceback).

Most tests share one engine process whose --plugin_dir holds a plugin that fails at import (`broken`) and one
that raises in postprocess (`crashing`). Configs that would disturb the others (a tiny inference timeout, a
one-frame queue, one camera at most) get an in-process engine of their own.
"""

from __future__ import annotations

import functools
import json
import re

import pytest
import trio
from grpclib.const import Status

from edgebox.client import pb
from edgebox.engine.hardware import cuda_device_count
from edgebox.errors import ErrorCode
from edgebox.limits import MAX_BATCH_FRAMES, MAX_FRAME_SIDE, MAX_SUBSCRIPTION_FILTERS
from tests.support.engine import (
    assert_readable,
    connect,
    engine_config,
    expect_error,
    photo_jpeg,
    photo_png,
    running_engine,
    start_engine_process,
    unique_id,
    write_test_plugins,
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("errors")
    plugin_dir = write_test_plugins(folder / "plugins")
    proc = start_engine_process(folder, {"plugin_dir": str(plugin_dir)})
    yield proc
    code = proc.stop()
    assert code == 0, proc.log()


@pytest.fixture(scope="module")
def client(aio, engine):
    with connect(aio, engine.host, engine.port) as c:
        yield c


def check(exc, status: Status, code: ErrorCode) -> None:
    assert exc.status == status, exc
    assert exc.code == int(code), exc
    assert exc.reason == code.name, exc
    assert_readable(exc)


def spec(workflow_id: str, plugins=("person",), **fields) -> pb.WorkflowSpec:
    return pb.WorkflowSpec(workflow_id=workflow_id, plugins=list(plugins), **fields)


async def deployed(client, **fields) -> str:
    wid = unique_id("wf")
    await client.deploy_workflow(spec(wid, **fields))
    return wid


async def infer_frame(client, frame: pb.Frame | None, **fields):
    request = pb.InferRequest(frame=frame, **fields)
    return await client.aio.run(client.client._call, "infer_single_frame", request)


# -- 1001 CAMERA_NOT_FOUND ----------------------------------------------------------------------------------------
async def test_remove_unknown_camera_returns_not_found_1001(client):
    exc = await expect_error(client.remove_camera("no-such-camera"))
    check(exc, Status.NOT_FOUND, ErrorCode.CAMERA_NOT_FOUND)
    assert "no-such-camera" in exc.message


# -- 1002 WORKFLOW_NOT_FOUND --------------------------------------------------------------------------------------
async def test_update_unknown_workflow_returns_not_found_1002(client):
    exc = await expect_error(client.update_workflow(spec("no-such-workflow")))
    check(exc, Status.NOT_FOUND, ErrorCode.WORKFLOW_NOT_FOUND)
    assert "no-such-workflow" in exc.message


async def test_delete_unknown_workflow_returns_not_found_1002(client):
    check(await expect_error(client.delete_workflow("no-such-workflow")), Status.NOT_FOUND,
          ErrorCode.WORKFLOW_NOT_FOUND)


async def test_infer_with_unknown_workflow_returns_not_found_1002(client):
    exc = await expect_error(client.infer(photo_jpeg("astronaut"), workflow_id="no-such-workflow"))
    check(exc, Status.NOT_FOUND, ErrorCode.WORKFLOW_NOT_FOUND)
    exc = await expect_error(client.infer_batch([photo_jpeg("astronaut")], workflow_id="no-such-workflow"))
    check(exc, Status.NOT_FOUND, ErrorCode.WORKFLOW_NOT_FOUND)


async def test_add_camera_with_unknown_workflow_returns_not_found_1002(client):
    cid = unique_id("cam")
    exc = await expect_error(client.add_camera(cid, "demo://empty", "no-such-workflow"))
    check(exc, Status.NOT_FOUND, ErrorCode.WORKFLOW_NOT_FOUND)
    assert cid not in {c.camera_id for c in await client.list_cameras()}


# -- 2001 PLUGIN_LOAD_FAILED --------------------------------------------------------------------------------------
async def test_deploy_with_unknown_plugin_returns_plugin_load_failed_2001(client):
    wid = unique_id("wf")
    exc = await expect_error(client.deploy_workflow(spec(wid, plugins=["no_such_plugin"])))
    check(exc, Status.FAILED_PRECONDITION, ErrorCode.PLUGIN_LOAD_FAILED)
    assert "no_such_plugin" in exc.message and "person" in exc.message  # names what is installed
    assert wid not in {w.spec.workflow_id for w in await client.list_workflows()}


async def test_plugin_that_fails_at_import_is_listed_and_answers_2001(client):
    health = await client.health()
    assert health.status == pb.HealthStatus.SERVING
    assert sorted(health.plugins) == ["crashing", "face", "motion", "person"]
    assert health.plugin_count == 4
    [error] = health.plugin_errors
    assert error.startswith("broken: ")
    assert "this plugin is broken on purpose" in error

    exc = await expect_error(client.deploy_workflow(spec(unique_id("wf"), plugins=["broken"])))
    check(exc, Status.FAILED_PRECONDITION, ErrorCode.PLUGIN_LOAD_FAILED)
    assert "broken on purpose" in exc.message
    exc = await expect_error(client.infer(photo_jpeg("astronaut"), plugin="broken"))
    check(exc, Status.FAILED_PRECONDITION, ErrorCode.PLUGIN_LOAD_FAILED)
    # The engine goes on serving the plugins that did load.
    result = await client.infer(photo_jpeg("astronaut"), plugin="person")
    assert "person" in result.json_data


# -- 2002 BACKEND_INIT_FAILED -------------------------------------------------------------------------------------
@pytest.mark.skipif(cuda_device_count() > 0, reason="this machine has a CUDA device: onnxruntime-cuda may start")
async def test_deploy_on_cuda_backend_without_gpu_returns_backend_init_failed_2002(client):
    wid = unique_id("wf")
    exc = await expect_error(client.deploy_workflow(spec(wid, backend="onnxruntime-cuda")))
    check(exc, Status.UNAVAILABLE, ErrorCode.BACKEND_INIT_FAILED)
    assert "onnxruntime-cuda" in exc.message
    assert wid not in {w.spec.workflow_id for w in await client.list_workflows()}
    assert (await client.health()).status == pb.HealthStatus.SERVING


# -- 400 INVALID_REQUEST ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("camera_id", ["", "has space", "x" * 65, "slash/id", "ünïcode"])
async def test_add_camera_with_bad_id_returns_invalid_request(client, camera_id):
    wid = await deployed(client)
    exc = await expect_error(client.add_camera(camera_id, "demo://empty", wid))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "camera_id" in exc.message


@pytest.mark.parametrize("workflow_id", ["", "has space", "x" * 65, "semi;colon"])
async def test_deploy_with_bad_workflow_id_returns_invalid_request(client, workflow_id):
    exc = await expect_error(client.deploy_workflow(spec(workflow_id)))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "workflow_id" in exc.message


async def test_deploy_without_workflow_field_returns_invalid_request(client):
    exc = await expect_error(client.aio.run(client.client._call, "deploy_workflow", pb.DeployWorkflowRequest()))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "workflow" in exc.message


@pytest.mark.parametrize(("zones", "words"), [
    ([pb.Zone(name="two", points=[pb.Point(x=0, y=0), pb.Point(x=1, y=1)])], "zones[0].points"),
    ([pb.Zone(name="out", points=[pb.Point(x=0, y=0), pb.Point(x=1.5, y=0), pb.Point(x=1, y=1)])],
     "zones[0].points[1].x"),
    ([pb.Zone(name="n" * 65, points=[pb.Point(x=0, y=0), pb.Point(x=1, y=0), pb.Point(x=1, y=1)])],
     "zones[0].name"),
    ([pb.Zone(name=f"z{i}", points=[pb.Point(x=0, y=0), pb.Point(x=1, y=0), pb.Point(x=1, y=1)])
      for i in range(33)], "zones"),
])
async def test_deploy_with_bad_zones_returns_invalid_request_naming_the_field(client, zones, words):
    exc = await expect_error(client.deploy_workflow(spec(unique_id("wf"), zones=zones)))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert words in exc.message


@pytest.mark.parametrize(("fields", "words"), [
    ({"plugins": []}, "plugins"),
    ({"plugins": ["person", "person"]}, "plugins"),
    ({"min_score": 1.5}, "min_score"),
    ({"backend": "tpu"}, "backend"),
    ({"params": {"min_box": "0.1"}}, "params"),
    ({"params": {"person.min_box": "lots"}}, "min_box"),
    ({"alarm": pb.AlarmRule(min_score=2.0)}, "alarm.min_score"),
])
async def test_deploy_with_bad_spec_returns_invalid_request_naming_the_field(client, fields, words):
    plugins = fields.pop("plugins", ["person"])
    exc = await expect_error(client.deploy_workflow(pb.WorkflowSpec(workflow_id=unique_id("wf"), plugins=plugins,
                                                                    **fields)))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert words in exc.message


async def test_infer_needs_exactly_one_of_workflow_and_plugin(client):
    exc = await expect_error(client.infer(photo_jpeg("astronaut")))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    wid = await deployed(client)
    exc = await expect_error(client.infer(photo_jpeg("astronaut"), workflow_id=wid, plugin="person"))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    exc = await expect_error(client.infer(photo_jpeg("astronaut"), plugin="../person"))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)


def _huge_png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + b"\x00" * 64)


BAD_FRAMES = {
    "corrupt_jpeg": (pb.Frame(image_data=b"\xff\xd8\x00garbage that is not a jpeg at all"), "JPEG"),
    "truncated_jpeg": (pb.Frame(image_data=photo_jpeg("astronaut")[:3000]), "JPEG"),
    "truncated_png": (pb.Frame(image_data=photo_png("astronaut")[:5000]), "PNG"),
    "neither_jpeg_nor_png": (pb.Frame(image_data=b"GIF89a...."), "neither JPEG nor PNG"),
    "absurd_png_size": (pb.Frame(image_data=_huge_png_header(100_000, 100_000)), "MAX_FRAME_SIDE"),
    "absurd_raw_size": (pb.Frame(image_data=b"\x00" * 300, format=pb.PixelFormat.BGR8, width=MAX_FRAME_SIDE + 1,
                                 height=1), "MAX_FRAME_SIDE"),
    "raw_without_size": (pb.Frame(image_data=b"\x00" * 300, format=pb.PixelFormat.BGR8), "MAX_FRAME_SIDE"),
    "raw_wrong_length": (pb.Frame(image_data=b"\x00" * 299, format=pb.PixelFormat.BGR8, width=10, height=10),
                         "needs 300 bytes"),
    "empty": (pb.Frame(image_data=b""), "empty"),
    "missing": (None, "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
async def test_infer_bad_frame_returns_invalid_request(client, case):
    frame, words = BAD_FRAMES[case]
    exc = await expect_error(infer_frame(client, frame, plugin="person"))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert words in exc.message


async def test_infer_batch_size_outside_limits_returns_invalid_request(client):
    exc = await expect_error(client.infer_batch([], plugin="person"))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    exc = await expect_error(client.infer_batch([b"x"] * (MAX_BATCH_FRAMES + 1), plugin="person"))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "MAX_BATCH_FRAMES" in exc.message


@pytest.mark.parametrize(("url", "config", "words"), [
    ("ftp://example.com/cam", {}, "scheme"),
    ("", {}, "empty"),
    ("demo://unicorn", {}, "demo"),
    ("rtsp://127.0.0.1:0/x", {}, "port"),
    ("demo://empty", {"colour": "red"}, "colour"),
    ("demo://empty", {"fps": "999"}, "fps"),
    ("demo://empty", {"roi": "0.5,0.5,0.9,0.9"}, "roi"),
])
async def test_add_camera_with_bad_source_or_options_returns_invalid_request(client, url, config, words):
    wid = await deployed(client)
    cid = unique_id("cam")
    exc = await expect_error(client.add_camera(cid, url, wid, config))
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert words in exc.message
    assert cid not in {c.camera_id for c in await client.list_cameras()}


async def test_stream_infer_first_frame_without_target_ends_the_stream_with_invalid_request(client):
    frames = [pb.StreamFrame(frame=pb.Frame(image_data=photo_jpeg("astronaut")))]
    exc = await expect_error(client.stream_infer(frames).__anext__())
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "workflow_id or plugin" in exc.message


async def test_subscription_with_too_many_filters_returns_invalid_request(client):
    ids = [f"cam{i}" for i in range(MAX_SUBSCRIPTION_FILTERS + 1)]
    exc = await expect_error(client.subscribe(camera_ids=ids).__anext__())
    check(exc, Status.INVALID_ARGUMENT, ErrorCode.INVALID_REQUEST)
    assert "MAX_SUBSCRIPTION_FILTERS" in exc.message


# -- 409 ALREADY_EXISTS -------------------------------------------------------------------------------------------
async def test_deploy_existing_workflow_returns_already_exists(client):
    wid = await deployed(client)
    exc = await expect_error(client.deploy_workflow(spec(wid, plugins=["face"])))
    check(exc, Status.ALREADY_EXISTS, ErrorCode.ALREADY_EXISTS)
    assert "UpdateWorkflow" in exc.message
    [info] = [w for w in await client.list_workflows() if w.spec.workflow_id == wid]
    assert (info.version, info.spec.plugins) == (1, ["person"])


async def test_add_existing_camera_returns_already_exists(client):
    wid = await deployed(client)
    cid = unique_id("cam")
    await client.add_camera(cid, "demo://empty", wid, {"fps": "1"})
    exc = await expect_error(client.add_camera(cid, "demo://person", wid))
    check(exc, Status.ALREADY_EXISTS, ErrorCode.ALREADY_EXISTS)
    [camera] = [c for c in await client.list_cameras() if c.camera_id == cid]
    assert camera.rtsp_url == "demo://empty"
    await client.remove_camera(cid)


# -- 412 FAILED_PRECONDITION --------------------------------------------------------------------------------------
async def test_delete_workflow_in_use_returns_failed_precondition(client):
    wid = await deployed(client)
    cid = unique_id("cam")
    await client.add_camera(cid, "demo://empty", wid, {"fps": "1"})
    exc = await expect_error(client.delete_workflow(wid))
    check(exc, Status.FAILED_PRECONDITION, ErrorCode.FAILED_PRECONDITION)
    assert cid in exc.message
    assert wid in {w.spec.workflow_id for w in await client.list_workflows()}
    await client.remove_camera(cid)
    await client.delete_workflow(wid)


# -- 9999 INTERNAL_ERROR ------------------------------------------------------------------------------------------
async def test_plugin_bug_returns_internal_error_with_incident_id_in_the_log(client, engine):
    exc = await expect_error(client.infer(photo_jpeg("astronaut"), plugin="crashing"))
    check(exc, Status.INTERNAL, ErrorCode.INTERNAL_ERROR)
    match = re.search(r"incident ([0-9a-f]{8,})", exc.message)
    assert match, exc.message
    with trio.fail_after(30):
        while match.group(1) not in engine.log_path.read_text():
            await trio.sleep(0.1)
    # Other calls go on working, on the very same model.
    result = await client.infer(photo_jpeg("astronaut"), plugin="person")
    assert "person" in result.json_data
    assert (await client.health()).status == pb.HealthStatus.SERVING


async def test_plugin_bug_in_a_batch_fails_each_item_with_internal_error(client):
    items = await client.infer_batch([photo_jpeg("astronaut"), photo_jpeg("chelsea")], plugin="crashing")
    for item in items:
        assert item.error_code == pb.InferErrorCode.INTERNAL_ERROR
        assert item.error_message.startswith("[9999 INTERNAL_ERROR] ")
        assert "incident" in item.error_message


async def test_workflow_with_one_crashing_plugin_still_reports_the_others(client):
    wid = await deployed(client, plugins=["person", "crashing"])
    result = await client.infer(photo_jpeg("astronaut"), workflow_id=wid)
    data = json.loads(result.json_data)
    assert [d["label"] for d in data["detections"]] == ["person"]
    assert "crashing" in data["errors"]


# -- configs of their own: 3001 INFERENCE_TIMEOUT, 429 RESOURCE_EXHAUSTED -----------------------------------------
async def test_inference_slower_than_the_deadline_returns_inference_timeout_3001(aio, tmp_path):
    # The first frame waits max_queue_delay_ms (100 ms) for a batch: far past a 10 ms deadline.
    config = engine_config(tmp_path / "data", {"engine": {"inference_timeout_s": 0.01}})
    async with running_engine(config) as engine:
        with connect(aio, engine.host, engine.port) as client:
            exc = await expect_error(client.infer(photo_jpeg("astronaut"), plugin="person"))
            check(exc, Status.DEADLINE_EXCEEDED, ErrorCode.INFERENCE_TIMEOUT)
            assert "inference_timeout_s" in exc.message
            assert (await client.health()).status == pb.HealthStatus.SERVING


async def test_full_inference_queue_returns_resource_exhausted_with_retry_hint(aio, tmp_path):
    # One frame fits in the queue, and it waits there 3 s for a batch: every other RPC frame is refused.
    config = engine_config(tmp_path / "data", {"engine": {"queue_capacity": 1, "max_queue_delay_ms": 3000}})
    async with running_engine(config) as engine:
        with connect(aio, engine.host, engine.port) as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(functools.partial(client.infer, photo_jpeg("astronaut"), plugin="person"))
                with trio.fail_after(30):
                    while engine.node.pool.queue_depth() < 1:
                        await trio.sleep(0.01)
                exc = await expect_error(client.infer(photo_jpeg("astronaut"), plugin="person"))
                check(exc, Status.RESOURCE_EXHAUSTED, ErrorCode.RESOURCE_EXHAUSTED)
                assert exc.retry_after_s is not None and exc.retry_after_s > 0
                items = await client.infer_batch([photo_jpeg("coffee")] * 2, plugin="person")
                assert [i.error_code for i in items] == [pb.InferErrorCode.RESOURCE_EXHAUSTED] * 2
                nursery.cancel_scope.cancel()  # no need to wait out the queued frame's batching delay


async def test_camera_beyond_max_cameras_returns_resource_exhausted(aio, tmp_path):
    config = engine_config(tmp_path / "data", {"engine": {"max_cameras": 1}})
    async with running_engine(config) as engine:
        with connect(aio, engine.host, engine.port) as client:
            await client.deploy_workflow(spec("wf"))
            await client.add_camera("one", "demo://empty", "wf", {"fps": "1"})
            exc = await expect_error(client.add_camera("two", "demo://empty", "wf"))
            check(exc, Status.RESOURCE_EXHAUSTED, ErrorCode.RESOURCE_EXHAUSTED)
            assert "engine.max_cameras" in exc.message
            assert [c.camera_id for c in await client.list_cameras()] == ["one"]
