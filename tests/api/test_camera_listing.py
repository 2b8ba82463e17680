"""ListCameras' published listing (edgebox.camera_listing): when it is fresh, when it is rebuilt, how `keep_fresh`
paces itself, and that gRPC answers from it while the trio thread is busy."""

from __future__ import annotations

import time

import trio

from edgebox.camera_listing import IDLE_TICKS, MAX_AGE_S, REFRESH_INTERVAL_S, CameraListingPublisher
from edgebox.client import pb
from edgebox.fleet import Camera
from tests.support.engine import connect, engine_config, running_engine, unique_id, wait_until


class CountingFleet:
    """The two things a publisher reads from a CameraFleet, counting each build of a listing."""

    def __init__(self) -> None:
        self.revision = 0
        self.builds = 0

    def cameras(self) -> list[Camera]:
        self.builds += 1
        return []


async def test_a_listing_is_fresh_until_the_fleet_changes_or_it_is_older_than_max_age(tmp_path):
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        node = engine.node
        publisher = CameraListingPublisher(node.fleet)  # its own: the engine's keep_fresh does not refresh it
        assert publisher.current() is None  # nothing published yet

        listing = publisher.publish()
        assert listing.cameras == ()
        assert publisher.current() is listing
        assert publisher.current(now=listing.built_at + MAX_AGE_S - 0.01) is listing
        assert publisher.current(now=listing.built_at + MAX_AGE_S + 0.01) is None  # counters would lag too much

        await node.deploy_workflow({"workflow_id": "listed", "plugins": ["motion"]})
        await node.add_camera("lobby", "demo://person", "listed", {"fps": "2"})
        assert publisher.current() is None  # added since it was built
        listing = publisher.publish()  # before the camera's task first runs: add_camera ends without a checkpoint
        assert [(c.camera_id, c.status.state.name) for c in listing.cameras] == [("lobby", "REGISTERED")]

        # A state change alone (to CONNECTING and STREAMING, on the camera's own task) also makes it stale.
        await wait_until(lambda: node.fleet.get("lobby").state.name == "STREAMING", what="lobby streams")
        assert publisher.current() is None
        listing = publisher.publish()
        assert listing.cameras[0].status.state.name == "STREAMING"

        await node.remove_camera("lobby")
        assert publisher.current() is None
        assert publisher.publish().cameras == ()


async def test_keep_fresh_republishes_while_read_and_idles_without_reads(autojump_clock):
    fleet = CountingFleet()
    publisher = CameraListingPublisher(fleet)  # type: ignore[arg-type] - the fleet's two members, counted
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher.keep_fresh)
        await trio.sleep(30)
        assert fleet.builds == 0  # never read, never published: nothing to refresh

        publisher.publish()  # what a stale read makes the trio thread do
        assert fleet.builds == 1
        for _ in range(20):  # 2 s of reads every 0.1 s
            publisher.current()
            await trio.sleep(0.1)
        refreshed = fleet.builds - 1
        assert abs(refreshed - 2 / REFRESH_INTERVAL_S) <= 1

        publisher.publish()  # a stale read while it refreshes (a camera changed state) must not keep it awake
        before = fleet.builds
        await trio.sleep(REFRESH_INTERVAL_S * IDLE_TICKS * 3)  # no reads: idle after IDLE_TICKS ticks
        assert fleet.builds - before == IDLE_TICKS
        idle = fleet.builds
        await trio.sleep(60)
        assert fleet.builds == idle

        publisher.publish()  # the next stale read wakes it
        await trio.sleep(1 + REFRESH_INTERVAL_S / 2)
        assert fleet.builds == idle + 1 + 5
        nursery.cancel_scope.cancel()


async def test_list_cameras_is_answered_while_the_trio_thread_is_blocked(aio, tmp_path):
    async with running_engine(engine_config(tmp_path / "data")) as engine:
        with connect(aio, engine.host, engine.port) as client:
            workflow, camera = unique_id("wf"), unique_id("cam")
            await client.deploy_workflow(pb.WorkflowSpec(workflow_id=workflow, plugins=["motion"]))
            await client.add_camera(camera, "demo://person", workflow, {"fps": "2"})

            async def streaming() -> bool:
                return [(c.state, c.fps_in > 0) for c in await client.list_cameras()] == [
                    (pb.CameraState.STREAMING, True)]

            with trio.fail_after(30):
                while not await streaming():
                    await trio.sleep(0.05)

            engine.node.camera_listing.publish()
            started = time.monotonic()
            # The trio thread now waits inside this call: a reply that needed it could not come before the timeout.
            cameras = aio.run_blocking(client.client.list_cameras, timeout=MAX_AGE_S * 10)
            blocked_s = time.monotonic() - started
            assert [(c.camera_id, c.state, c.workflow_id) for c in cameras] == [
                (camera, pb.CameraState.STREAMING, workflow)]
            assert cameras[0].fps_in > 0
            print(f"ListCameras answered in {blocked_s * 1000:.1f} ms with the trio thread blocked")
