"""Start and stop of a real engine process: READY after start, grpc.health.v1 answers, and SIGTERM drains:
the call in flight finishes, new calls get UNAVAILABLE (SHUTTING_DOWN 503) while HealthCheck says STOPPING,
result streams end, and the process exits 0. A second signal during the drain stops at once.
"""

from __future__ import annotations

import signal

import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from edgebox.client import EdgeboxClientError, pb
from edgebox.errors import ErrorCode
from tests.support.engine import (
    CALL_TIMEOUT_S,
    aio,  # noqa: F401 - fixture
    assert_readable,
    connect,
    engine_config,
    expect_error,
    photo_jpeg,
    running_engine,
    start_engine_process,
)

BATCH = 16
# Frames of the batch wait up to this long for a fuller batch: the call is surely in flight meanwhile.
SLOW_BATCH_CONFIG = {"engine": {"max_batch_size": 64, "max_queue_delay_ms": 5000},
                     "grpc": {"drain_timeout_s": 120}}


async def grpc_health(host: str, port: int) -> int:
    """grpc.health.v1.Health/Check for the whole server (service ""), as load balancers ask it."""
    channel = Channel(host, port)
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S)
        return reply.status
    finally:
        channel.close()


async def wait_until_in_flight(client) -> None:
    """Until the batch's first frame waits in the scheduler: from then on the call lasts max_queue_delay_ms."""
    with trio.fail_after(CALL_TIMEOUT_S):
        while (await client.metrics()).queue_depth < 1:
            await trio.sleep(0.02)


async def wait_for_stopping(client) -> None:
    with trio.fail_after(CALL_TIMEOUT_S):
        while (await client.health()).status != pb.HealthStatus.STOPPING:
            await trio.sleep(0.02)


async def test_grpc_health_v1_check_answers_serving(aio, tmp_path):  # noqa: F811 - fixture
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        status = await aio.run(grpc_health, engine.host, engine.port)
        assert status == HealthCheckResponse.SERVING


async def test_sigterm_drains_the_call_in_flight_refuses_new_ones_and_exits_0(aio, tmp_path):  # noqa: F811
    engine = start_engine_process(tmp_path, SLOW_BATCH_CONFIG)
    print(f"start to SERVING: {engine.startup_s:.2f} s ({engine.ready_line})")
    try:
        with connect(aio, engine.host, engine.port) as client:
            assert await aio.run(grpc_health, engine.host, engine.port) == HealthCheckResponse.SERVING
            batch: list = []
            stream_end: list[EdgeboxClientError] = []

            async def run_batch() -> None:
                batch.extend(await client.infer_batch([photo_jpeg("astronaut")] * BATCH, plugin="person"))

            async def watch_results() -> None:
                stream_end.append(await expect_error(client.subscribe(camera_ids=["nobody"]).__anext__()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_batch)
                nursery.start_soon(watch_results)
                await wait_until_in_flight(client)

                engine.send_signal(signal.SIGTERM)
                await wait_for_stopping(client)
                refused = await expect_error(client.list_workflows())
                assert refused.status == Status.UNAVAILABLE
                assert refused.code == ErrorCode.SHUTTING_DOWN
                assert_readable(refused)
                refused = await expect_error(client.infer(photo_jpeg("chelsea"), plugin="person"))
                assert refused.code == ErrorCode.SHUTTING_DOWN
                assert await aio.run(grpc_health, engine.host, engine.port) == HealthCheckResponse.NOT_SERVING

            assert len(batch) == BATCH, "the call in flight must finish during the drain"
            assert all(item.error_code == pb.InferErrorCode.OK for item in batch)
            assert all("person" in item.result.json_data for item in batch)
            [ended] = stream_end
            assert ended.status == Status.UNAVAILABLE and ended.code == ErrorCode.SHUTTING_DOWN
        assert await engine.wait_async() == 0, engine.log()
    finally:
        engine.kill()
    assert "received SIGTERM: draining" in engine.log_path.read_text()


async def test_second_sigterm_during_the_drain_stops_at_once_and_exits_0(aio, tmp_path):  # noqa: F811
    engine = start_engine_process(tmp_path, SLOW_BATCH_CONFIG)
    try:
        with connect(aio, engine.host, engine.port) as client:
            outcome: list[object] = []

            async def run_batch() -> None:
                try:
                    outcome.append(await client.infer_batch([photo_jpeg("astronaut")] * BATCH, plugin="person"))
                except Exception as exc:  # noqa: BLE001 - any failure will do: the call must not succeed
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_batch)
                await wait_until_in_flight(client)
                engine.send_signal(signal.SIGTERM)
                await wait_for_stopping(client)
                engine.send_signal(signal.SIGTERM)
                assert await engine.wait_async() == 0, engine.log()
            [result] = outcome
            assert isinstance(result, Exception), "the second signal must not wait for the call in flight"
    finally:
        engine.kill()
    assert "second SIGTERM" in engine.log_path.read_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signal_on_an_idle_engine_exits_0(tmp_path, sig):
    engine = start_engine_process(tmp_path)
    try:
        engine.send_signal(sig)
        assert await engine.wait_async() == 0, engine.log()
    finally:
        engine.kill()
    assert f"received {signal.Signals(sig).name}" in engine.log_path.read_text()


async def test_engine_serving_cameras_stops_cleanly_on_sigterm(aio, tmp_path):  # noqa: F811 - fixture
    engine = start_engine_process(tmp_path)
    try:
        with connect(aio, engine.host, engine.port) as client:
            await client.deploy_workflow(pb.WorkflowSpec(workflow_id="people", plugins=["person"]))
            for kind in ("person", "empty"):
                await client.add_camera(kind, f"demo://{kind}", "people", {"fps": "10"})
            results = client.subscribe()
            for _ in range(4):
                with trio.fail_after(CALL_TIMEOUT_S):
                    await results.__anext__()
            engine.send_signal(signal.SIGTERM)
            ended = await expect_error(_drain(results))
            assert ended.code == ErrorCode.SHUTTING_DOWN
        assert await engine.wait_async() == 0, engine.log()
    finally:
        engine.kill()


async def _drain(stream) -> None:
    with trio.fail_after(CALL_TIMEOUT_S):
        async for _ in stream:
            pass

