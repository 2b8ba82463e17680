"""Stream lifetimes seen from inside the engine: a closed or abandoned SubscribeResults stream releases its
subscription (the hub's subscriber_count drops back), so a gone client never holds results or memory.

The engine runs in-process (`running_engine`) so that the tests can read the node's hub directly.
"""

from __future__ import annotations

import trio

from edgebox.client import pb
from tests.support.engine import connect, engine_config, running_engine, wait_until

WORKFLOW = "people"
CAMERA = "lobby"


async def start_camera(client) -> None:
    await client.deploy_workflow(pb.WorkflowSpec(workflow_id=WORKFLOW, plugins=["person"]))
    await client.add_camera(CAMERA, "demo://person", WORKFLOW, {"fps": "4"})


async def test_closing_the_subscribe_stream_unsubscribes(aio, tmp_path):
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        with connect(aio, engine.host, engine.port) as client:
            await start_camera(client)
            hub = engine.node.hub
            stream = client.subscribe(camera_ids=[CAMERA])
            result = await stream.next()
            assert result.camera_id == CAMERA
            assert hub.subscriber_count == 1
            await stream.aclose()
            await wait_until(lambda: hub.subscriber_count == 0, what="the subscription to be released")


async def test_several_subscribers_all_released_when_closed(aio, tmp_path):
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        with connect(aio, engine.host, engine.port) as client:
            await start_camera(client)
            hub = engine.node.hub
            streams = [client.subscribe(), client.subscribe(alarms_only=True), client.subscribe(omit_images=True)]
            for stream in streams:
                await stream.next()
            assert hub.subscriber_count == 3
            for stream in streams:
                await stream.aclose()
            await wait_until(lambda: hub.subscriber_count == 0, what="every subscription to be released")


async def test_cancelling_a_subscriber_that_got_nothing_unsubscribes(aio, tmp_path):
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        with connect(aio, engine.host, engine.port) as client:
            hub = engine.node.hub
            stream = client.subscribe(camera_ids=["nobody-has-this-camera"])
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.__anext__)
                await wait_until(lambda: hub.subscriber_count == 1, what="the subscription to start")
                nursery.cancel_scope.cancel()
            await wait_until(lambda: hub.subscriber_count == 0, what="the subscription to be released")


async def test_client_disconnect_releases_its_subscription(aio, tmp_path):
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        with connect(aio, engine.host, engine.port) as client:
            await start_camera(client)
        hub = engine.node.hub
        with connect(aio, engine.host, engine.port) as leaving:
            stream = leaving.subscribe(camera_ids=[CAMERA])
            await stream.next()
            assert hub.subscriber_count == 1
        # The channel is closed without closing the stream first: the connection drop must be enough.
        await wait_until(lambda: hub.subscriber_count == 0, what="the subscription to be released")

