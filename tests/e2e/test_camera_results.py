"""Cameras on a real RTSP server through the whole engine: results with snapshots, subscription filters, frame
age, slow and stalled subscribers, and hot workflow updates with no frame skipped.

Every call goes through gRPC; `engine.node` is read only to check internals (subscriber buffers, metrics).
Measured figures are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict

import cv2
import numpy as np
import pytest
import trio
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from edgebox import results as results_module
from edgebox.api import service as service_module
from edgebox.client import EdgeboxClientError
from edgebox.errors import ErrorCode
from edgebox.metrics import histogram_sum_count
from edgebox.proto_gen import infer as pb
from tests.e2e.engine import SUBSCRIBE_ROUTE, Engine, person_workflow
from tests.support.rtsp import RtspServer

QUICK = {"watchdog_s": "2", "open_timeout_s": "3", "max_backoff_s": "1"}
SMALL_WINDOW = 65_535  # the HTTP/2 minimum: a stalled client then holds back only a few results in flight


def by_camera(results: list[pb.InferResult]) -> dict[str, list[pb.InferResult]]:
    grouped: dict[str, list[pb.InferResult]] = defaultdict(list)
    for r in results:
        grouped[r.camera_id].append(r)
    return grouped


def assert_continuous(results: list[pb.InferResult]) -> None:
    """Per camera, frame_seq goes up by one from result to result: nothing skipped."""
    for camera_id, items in by_camera(results).items():
        seqs = [r.frame_seq for r in items]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{camera_id}: frame_seq not continuous: {seqs}"


async def test_a_person_in_view_gives_alarms_with_a_jpeg_snapshot_and_filters_select(engine: Engine,
                                                                                     rtsp_server: RtspServer):
    await engine.call("deploy_workflow", person_workflow("people"))
    await engine.call("deploy_workflow", person_workflow("people2", attach_snapshot=False))
    alarms = engine.subscribe(camera_ids=["door"], workflow_ids=["people"], alarms_only=True)
    everything = engine.subscribe()
    by_workflow = engine.subscribe(workflow_ids=["people2"], omit_images=True)
    only_alarms = engine.subscribe(alarms_only=True, omit_images=True)
    started_ms = time.time() * 1000
    await engine.call("add_camera", "door", rtsp_server.url("/person"), "people", {"fps": "2", **QUICK})
    await engine.call("add_camera", "yard", rtsp_server.url("/ball"), "people2", {"fps": "2", **QUICK})
    await alarms.wait_for(lambda r: len(r) >= 3, timeout=60, what="3 alarms from the person camera")
    await everything.wait_for(lambda r: len(by_camera(r)["yard"]) >= 3, timeout=30, what="3 results from yard")

    for result in alarms.results:
        assert (result.camera_id, result.workflow_id, result.type) == ("door", "people", pb.ResultType.ALARM)
        assert result.workflow_version == 1 and started_ms - 1000 <= result.timestamp <= time.time() * 1000
        detections = json.loads(result.json_data)["detections"]
        assert any(d["label"] == "person" and d["score"] >= 0.4 for d in detections)
        image = cv2.imdecode(np.frombuffer(result.image_data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and image.shape == (360, 640, 3)
        assert 0 < result.latency_ms < 30_000
    yard = by_camera(everything.results)["yard"]
    assert all(r.type == pb.ResultType.NORMAL and r.image_data == b"" for r in yard)  # a ball is no person
    assert {r.camera_id for r in by_workflow.results} == {"yard"}
    assert {r.camera_id for r in only_alarms.results} == {"door"}
    assert all(r.image_data == b"" for r in only_alarms.results)  # omit_images
    assert_continuous(everything.results)

    # Frame age, capture to result, per camera: in ListCameras and in the histogram.
    door = await engine.camera("door")
    age_sum, age_count = histogram_sum_count(engine.node.metrics.frame_age, camera="door")
    print(f"\nperson camera: frame age median {door.frame_age_ms:.0f} ms in ListCameras, mean "
          f"{age_sum / age_count * 1000:.0f} ms over {age_count:.0f} results; fps in {door.fps_in:.1f}")
    assert door.frame_age_ms > 0 and age_count >= 3 and door.backend and door.resolution == "640x360"
    for sub in (alarms, everything, by_workflow, only_alarms):
        sub.cancel()


async def test_a_stalled_subscriber_never_slows_the_others_and_learns_what_it_missed(
        engine: Engine, rtsp_server: RtspServer, monkeypatch: pytest.MonkeyPatch):
    await engine.call("deploy_workflow", person_workflow())
    fast = engine.subscribe()  # the default buffer (256)
    with trio.fail_after(30):
        while engine.node.hub.subscriber_count < 1:
            await trio.sleep(0.05)
    monkeypatch.setattr(service_module, "DEFAULT_SUBSCRIBER_BUFFER", 8)  # fills in seconds instead of minutes
    slow_channel, slow = await open_stalled_subscription(engine)
    for i, mount in enumerate(("/person", "/ball")):
        await engine.call("add_camera", f"cam{i}", rtsp_server.url(mount), "people", {"fps": "3", **QUICK})
    stalled = await wait_for_slow_subscription(engine)
    with trio.fail_after(90):
        while stalled.missed_total < 10:  # its buffer filled and kept overflowing
            assert stalled.pending <= stalled.capacity
            await trio.sleep(0.05)
    fast_count = len(fast.results)
    await fast.wait_for(lambda r: len(r) >= fast_count + 6, timeout=30, what="more results for the fast one")

    resumed = await engine.bridge.call_in_asyncio(read_messages, slow, stalled.capacity + 12)
    missed = [r.missed_before for r in resumed]
    print(f"\nstalled subscriber: buffer {stalled.capacity}, resumed with {len(resumed)} results, missed_before "
          f"{[m for m in missed if m]}; the fast one got {len(fast.results)} with no gap")
    assert any(m > 0 for m in missed)
    assert_continuous(fast.results)
    assert all(c.frames_dropped == 0 for c in await engine.call("list_cameras"))
    fast.cancel()
    engine.bridge.loop.call_soon_threadsafe(slow_channel.close)


async def test_a_subscriber_that_stopped_reading_is_evicted_with_resource_exhausted(
        engine: Engine, rtsp_server: RtspServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(service_module, "DEFAULT_SUBSCRIBER_BUFFER", 4)
    monkeypatch.setattr(results_module, "EVICT_AFTER_S", 2.0)  # the real limit is 60 s (MockClock test in test_results)
    await engine.call("deploy_workflow", person_workflow())
    slow_channel, slow = await open_stalled_subscription(engine)
    await engine.call("add_camera", "cam", rtsp_server.url("/person"), "people", {"fps": "5", **QUICK})
    stalled = await wait_for_slow_subscription(engine)
    with trio.fail_after(60):
        while not stalled.evicted:
            await trio.sleep(0.1)
    assert engine.node.hub.subscriber_count == 0

    with pytest.raises(GRPCError) as ended:
        await engine.bridge.call_in_asyncio(read_messages, slow, 10_000)
    print(f"\nevicted: {ended.value.status.name}: {ended.value.message}")
    assert ended.value.status is Status.RESOURCE_EXHAUSTED and "subscribe again" in ended.value.message
    engine.bridge.loop.call_soon_threadsafe(slow_channel.close)


async def test_workflow_update_under_load_switches_version_once_with_no_frame_skipped(
        engine: Engine, rtsp_server: RtspServer):
    await engine.call("deploy_workflow", person_workflow())
    sub = engine.subscribe(omit_images=True)
    cameras = {"a": "/person", "b": "/ball", "c": "/person"}
    for camera_id, mount in cameras.items():
        await engine.call("add_camera", camera_id, rtsp_server.url(mount), "people", {"fps": "1", **QUICK})
    await sub.wait_for(lambda r: all(len(by_camera(r)[c]) >= 3 for c in cameras), timeout=60,
                       what="3 results per camera")
    updated = await engine.call("update_workflow", person_workflow(min_score=0.45))
    assert updated.version == 2
    await sub.wait_for(lambda r: all(by_camera(r)[c][-1].workflow_version == 2 and
                                     sum(x.workflow_version == 2 for x in by_camera(r)[c]) >= 3 for c in cameras),
                       timeout=60, what="3 v2 results per camera")

    # A version that cannot load is refused and the running one stays: a plugin that is not installed, and a
    # model that fails to load on the backend asked for (an NPU this machine does not have).
    with pytest.raises(EdgeboxClientError) as failed:
        await engine.call("update_workflow", person_workflow(plugins=["no_such_plugin"]))
    assert failed.value.code == ErrorCode.PLUGIN_LOAD_FAILED and "no_such_plugin" in failed.value.message
    if "openvino-npu" not in engine.node.hardware.usable_backends():
        with pytest.raises(EdgeboxClientError) as failed:
            await engine.call("update_workflow", person_workflow(backend="openvino-npu"))
        assert failed.value.code == ErrorCode.BACKEND_INIT_FAILED
    [info] = await engine.call("list_workflows")
    assert info.version == 2 and list(info.spec.plugins) == ["person"]
    count = len(sub.results)
    await sub.wait_for(lambda r: len(r) >= count + len(cameras) * 2, timeout=30, what="results after the refusal")

    # A workflow in use cannot be deleted.
    with pytest.raises(EdgeboxClientError) as in_use:
        await engine.call("delete_workflow", "people")
    assert in_use.value.status is Status.FAILED_PRECONDITION and "a, b, c" in in_use.value.message

    sub.cancel()
    listed = await engine.call("list_cameras")
    assert [c.frames_dropped for c in listed] == [0, 0, 0]  # a load where nothing drops: continuity is a real check
    assert_continuous(sub.results)
    for camera_id, items in by_camera(sub.results).items():
        versions = [r.workflow_version for r in items]
        switch = versions.index(2)
        assert versions == [1] * switch + [2] * (len(versions) - switch), f"{camera_id}: {versions}"
        assert switch > 0 and all(r.error_code == 0 for r in items)
    print(f"\nupdate under load: {len(sub.results)} results from {len(cameras)} cameras, v1 -> v2 once each, "
          "no frame_seq gap, 0 dropped")


# -- a subscriber that reads nothing until told -------------------------------------------------------------
async def open_stalled_subscription(engine: Engine) -> tuple[Channel, object]:
    """A SubscribeResults stream on its own connection with the smallest HTTP/2 window, read by no one."""

    async def open_stream() -> tuple[Channel, object]:
        host, _, port = engine.endpoints.grpc.rpartition(":")
        channel = Channel(host, int(port), config=Configuration(http2_connection_window_size=SMALL_WINDOW,
                                                                http2_stream_window_size=SMALL_WINDOW))
        stream = await channel.request(SUBSCRIBE_ROUTE, Cardinality.UNARY_STREAM, pb.SubscribeRequest,
                                       pb.InferResult).__aenter__()
        await stream.send_message(pb.SubscribeRequest(), end=True)
        return channel, stream

    return await engine.bridge.call_in_asyncio(open_stream)


async def wait_for_slow_subscription(engine: Engine) -> results_module.Subscription:
    """The hub's record of the stalled subscriber: the one with the (monkeypatched) small buffer."""
    capacity = service_module.DEFAULT_SUBSCRIBER_BUFFER
    with trio.fail_after(30):
        while True:
            small = [s for s in engine.node.hub.subscriptions() if s.capacity == capacity]
            if small:
                return small[0]
            await trio.sleep(0.05)


async def read_messages(stream, count: int) -> list[pb.InferResult]:
    """Read up to `count` results (asyncio side); stops early after a quiet second."""
    got: list[pb.InferResult] = []
    while len(got) < count:
        try:
            message = await asyncio.wait_for(stream.recv_message(), 1.0 if got else 30.0)
        except TimeoutError:
            break
        if message is None:
            await stream.recv_trailing_metadata()  # raises GRPCError with the status
            break
        got.append(message)
    return got
