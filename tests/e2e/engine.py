"""The engine in-process for end-to-end tests: `run_engine` in the test's trio run, a grpclib client on an asyncio
thread (edgebox's own bridge), and result subscriptions that collect what the server streams.

Nothing here fakes the engine: cameras are real RTSP streams, inference is the real person model, and every call
goes through gRPC on a real socket. The test may also read `Engine.node` (the running node) to check internals
such as subscriber buffers, tasks and metrics series.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from edgebox.app import Endpoints, run_engine
from edgebox.bridge import Bridge, open_bridge
from edgebox.client import EdgeboxClient
from edgebox.config import parse_config
from edgebox.node import Node
from edgebox.proto_gen import infer as pb

ENGINE_START_TIMEOUT_S = 60.0
SUBSCRIBE_ROUTE = "/infer.InferenceService/SubscribeResults"


def person_workflow(workflow_id: str = "people", **overrides: Any) -> pb.WorkflowSpec:
    """The person plugin; every frame with a person is an ALARM with a snapshot unless overridden."""
    fields: dict[str, Any] = {"workflow_id": workflow_id, "plugins": ["person"], "min_score": 0.4,
                              "attach_snapshot": True}
    fields.update(overrides)
    return pb.WorkflowSpec(**fields)


@dataclass
class Subscription:
    """Collects a SubscribeResults stream on the asyncio thread; read `results` from trio."""

    results: list[pb.InferResult] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False
    future: Any = None

    async def wait_for(self, predicate: Callable[[list[pb.InferResult]], bool], timeout: float,
                       what: str = "results") -> None:
        with trio.move_on_after(timeout):
            while not predicate(self.results):
                if self.done:
                    raise AssertionError(f"the subscription ended ({self.error!r}) before {what}")
                await trio.sleep(0.05)
            return
        raise AssertionError(f"no {what} within {timeout:g} s; got {len(self.results)} results, error {self.error!r}")

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()


@dataclass
class Engine:
    endpoints: Endpoints
    node: Node
    bridge: Bridge
    client: EdgeboxClient
    subscriptions: list[Subscription] = field(default_factory=list)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call an EdgeboxClient method on the asyncio thread, e.g. `await engine.call("list_cameras")`."""
        return await self.bridge.call_in_asyncio(functools.partial(getattr(self.client, method), *args, **kwargs))

    async def camera(self, camera_id: str) -> pb.CameraInfo:
        cameras = {c.camera_id: c for c in await self.call("list_cameras")}
        return cameras[camera_id]

    async def wait_camera(self, camera_id: str, predicate: Callable[[pb.CameraInfo], bool], timeout: float,
                          what: str) -> tuple[pb.CameraInfo, float]:
        """Poll ListCameras until `predicate(info)`; returns the info and the seconds it took."""
        started = time.monotonic()
        info = None
        with trio.move_on_after(timeout):
            while True:
                info = await self.camera(camera_id)
                if predicate(info):
                    return info, time.monotonic() - started
                await trio.sleep(0.1)
        raise AssertionError(f"camera {camera_id} not {what} within {timeout:g} s: {info}")

    def subscribe(self, **request: Any) -> Subscription:
        """Start a SubscribeResults stream that collects every result (filters as in SubscribeRequest)."""
        sub = Subscription()

        async def collect() -> None:
            try:
                async for result in self.client.subscribe(**request):
                    sub.results.append(result)
            except Exception as exc:  # noqa: BLE001 - EdgeboxClientError, or the connection closing at teardown
                sub.error = exc
            finally:
                sub.done = True

        sub.future = asyncio.run_coroutine_threadsafe(collect(), self.bridge.loop)
        self.subscriptions.append(sub)
        return sub


def engine_config(data_dir: Path, **engine: Any) -> Any:
    return parse_config({"data_dir": str(data_dir), "log_level": "INFO", "grpc": {"port": 0},
                         "console": {"enabled": False}, "engine": engine}, data_dir)


@contextlib.asynccontextmanager
async def open_engine(data_dir: Path, **engine: Any) -> AsyncIterator[Engine]:
    """Run the engine until the block exits (then cancel it, as a second SIGTERM would)."""
    config = engine_config(data_dir, **engine)
    ready: list[Endpoints] = []
    ready_event = trio.Event()

    def on_ready(endpoints: Endpoints) -> None:
        ready.append(endpoints)
        ready_event.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_engine, config, on_ready)
        with trio.fail_after(ENGINE_START_TIMEOUT_S):
            await ready_event.wait()
        endpoints = ready[0]
        assert endpoints.node is not None
        host, _, port = endpoints.grpc.rpartition(":")

        async def make_client() -> EdgeboxClient:
            return EdgeboxClient(host, int(port), timeout=60)

        async with open_bridge() as bridge:
            client = await bridge.call_in_asyncio(make_client)
            engine = Engine(endpoints, endpoints.node, bridge, client)
            try:
                yield engine
            finally:
                for sub in engine.subscriptions:
                    sub.cancel()
                bridge.loop.call_soon_threadsafe(client.close)
        nursery.cancel_scope.cancel()
