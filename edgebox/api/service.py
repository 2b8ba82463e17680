"""The InferenceService handlers: decode the request, call the node in trio, convert the answer.

Every handler body runs on the asyncio thread and crosses to trio at most once per call through the bridge, so
domain objects are only ever touched on the trio thread; reads that never wait (ListWorkflows, GetMetrics) cross
as a plain function call, without a trio task. HealthCheck and ListCameras usually do not cross: they read what
the trio thread publishes (Node.publish_health, edgebox.camera_listing), so a trio thread busy with many cameras
cannot delay them. Guarding (draining, error mapping, metrics) wraps every method in one place: `__mapping__`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpclib.const
from grpclib.exceptions import GRPCError

from edgebox.api import convert
from edgebox.api.codec import MalformedMessage, encode_message
from edgebox.api.errors import internal_error, to_grpc_error
from edgebox.bridge import Bridge
from edgebox.camera_listing import CameraListing, CameraSnapshot
from edgebox.errors import EdgeboxError, InvalidRequest, ResourceExhausted, ShuttingDown
from edgebox.limits import MAX_SUBSCRIPTION_FILTERS
from edgebox.node import InferTarget, Node
from edgebox.proto_gen import infer as pb
from edgebox.results import DEFAULT_SUBSCRIBER_BUFFER, Delivery, ResultFilter, Subscription
from edgebox.workflows.runtime import SourceState

log = logging.getLogger("edgebox.api")

# Methods that still answer while draining, so that probes can see STOPPING.
ANSWERED_WHILE_DRAINING = frozenset({"HealthCheck", "Check"})


class CallTracker:
    """Counts calls in flight (on the asyncio thread) so that a drain can wait for them."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.draining = False
        self._idle: asyncio.Event | None = None  # made only while someone waits: calls pay one add and one subtract
        self.drain_started = asyncio.Event()

    def enter(self) -> None:
        self.in_flight += 1

    def exit(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def start_draining(self) -> None:
        self.draining = True
        self.drain_started.set()

    async def wait_idle(self) -> None:
        while self.in_flight:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()


class AsyncioSink:
    """Delivers results from the trio hub to one gRPC subscriber's asyncio queue; an error item ends the stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.queue: asyncio.Queue[Delivery | EdgeboxError] = asyncio.Queue()

    def push(self, delivery: Delivery) -> None:  # trio thread
        self._loop.call_soon_threadsafe(self.queue.put_nowait, delivery)

    def close(self, reason: str, evicted: bool = False) -> None:  # trio thread
        self._loop.call_soon_threadsafe(self._close, ResourceExhausted(reason) if evicted else ShuttingDown(reason))

    def _close(self, error: EdgeboxError) -> None:  # asyncio thread
        if isinstance(error, ResourceExhausted):  # evicted: free the backlog it never read
            while not self.queue.empty():
                self.queue.get_nowait()
        self.queue.put_nowait(error)


class InferenceService(pb.InferenceServiceBase):
    def __init__(self, node: Node, bridge: Bridge, tracker: CallTracker) -> None:
        self.node = node
        self.bridge = bridge
        self.tracker = tracker
        self._listed: CameraListing | None = None  # the listing whose encoded reply is `_listed_reply`
        self._listed_reply = b""
        self._health_replies = convert.HealthReplies()

    # -- guarding, in one place --------------------------------------------------------------------------
    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {path: grpclib.const.Handler(self._guard(path.rsplit("/", 1)[1], h.func, h.cardinality),
                                            h.cardinality, h.request_type, h.reply_type)
                for path, h in super().__mapping__().items()}

    def _guard(self, method: str, func: Callable[[Any], Any],
               cardinality: grpclib.const.Cardinality) -> Callable[[Any], Any]:
        metrics = self.node.metrics
        latency = metrics.grpc_latency.labels(method=method)
        counters: dict[str, Any] = {}  # code -> this method's counter child; labels() costs a lock and a lookup

        def count(code: str) -> None:
            counter = counters.get(code)
            if counter is None:
                counter = counters[code] = metrics.grpc_requests.labels(method=method, code=code)
            counter.inc()

        async def guarded(stream: Any) -> None:
            if self.tracker.draining and method not in ANSWERED_WHILE_DRAINING:
                count("UNAVAILABLE")
                raise to_grpc_error(ShuttingDown("the engine is shutting down and takes no new calls; retry on "
                                                 "another node or after it restarts"))
            self.tracker.enter()
            started = time.perf_counter()
            code = "OK"
            try:
                if not cardinality.client_streaming:
                    _require_request_message(stream)
                await func(stream)
            except EdgeboxError as exc:
                code = exc.grpc_code.name
                raise to_grpc_error(exc) from None
            except GRPCError as exc:
                code = exc.status.name
                raise
            except (asyncio.CancelledError, grpclib.exceptions.StreamTerminatedError):
                code = "CANCELLED"
                raise
            except Exception as exc:  # noqa: BLE001 - the one place a bug becomes INTERNAL 9999 with an incident id
                code = "INTERNAL"
                raise internal_error(method, exc) from None
            finally:
                self.tracker.exit()
                count(code)
                latency.observe(time.perf_counter() - started)

        return guarded

    async def _call_rpc_handler_server_stream(self, handler: Callable, stream: Any, request: Any) -> None:
        # betterproto2 does not close the generator when the client goes away; aclosing makes sure the
        # subscription is released (FACTS.md section 3).
        async with contextlib.aclosing(handler(request)) as messages:
            async for message in messages:
                await stream.send_message(message)

    def _trio(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.bridge.call_in_trio(fn, *args)

    def _trio_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.bridge.call_sync_in_trio(fn, *args)

    # -- cameras ------------------------------------------------------------------------------------------
    async def add_camera(self, message: pb.AddCameraRequest) -> pb.AddCameraResponse:
        async def op() -> pb.AddCameraResponse:
            camera = await self.node.add_camera(message.camera_id, message.rtsp_url, message.workflow_id,
                                                dict(message.config))
            return pb.AddCameraResponse(camera=convert.camera_info(CameraSnapshot.of(camera)))

        return await self._trio(op)

    async def remove_camera(self, message: pb.RemoveCameraRequest) -> pb.RemoveCameraResponse:
        await self._trio(self.node.remove_camera, message.camera_id)
        return pb.RemoveCameraResponse(camera_id=message.camera_id)

    async def list_cameras(self, message: pb.ListCamerasRequest) -> bytes:
        listing = self.node.camera_listing.current()
        if listing is None:  # stale or changed since it was built: rebuild it on the trio thread
            listing = await self._trio_sync(self.node.camera_listing.publish)
        if listing is not self._listed:  # every caller of one published listing gets the same bytes
            reply = pb.ListCamerasResponse(cameras=[convert.camera_info(c) for c in listing.cameras])
            self._listed, self._listed_reply = listing, encode_message(reply)
        return self._listed_reply

    # -- workflows ----------------------------------------------------------------------------------------
    def _info(self, entry: Any) -> pb.WorkflowInfo:
        return convert.workflow_info(entry, self.node.fleet.using(entry.spec.workflow_id))

    async def deploy_workflow(self, message: pb.DeployWorkflowRequest) -> pb.DeployWorkflowResponse:
        spec = _require_spec(message.workflow)

        async def op() -> pb.DeployWorkflowResponse:
            return pb.DeployWorkflowResponse(workflow=self._info(await self.node.deploy_workflow(spec)))

        return await self._trio(op)

    async def update_workflow(self, message: pb.UpdateWorkflowRequest) -> pb.UpdateWorkflowResponse:
        spec = _require_spec(message.workflow)

        async def op() -> pb.UpdateWorkflowResponse:
            return pb.UpdateWorkflowResponse(workflow=self._info(await self.node.update_workflow(spec)))

        return await self._trio(op)

    async def delete_workflow(self, message: pb.DeleteWorkflowRequest) -> pb.DeleteWorkflowResponse:
        await self._trio(self.node.delete_workflow, message.workflow_id)
        return pb.DeleteWorkflowResponse(workflow_id=message.workflow_id)

    async def list_workflows(self, message: pb.ListWorkflowsRequest) -> pb.ListWorkflowsResponse:
        def op() -> pb.ListWorkflowsResponse:
            return pb.ListWorkflowsResponse(workflows=[self._info(e) for e in self.node.list_workflows()])

        return await self._trio_sync(op)

    # -- inference ----------------------------------------------------------------------------------------
    async def infer_single_frame(self, message: pb.InferRequest) -> pb.InferResponse:
        target = InferTarget(message.workflow_id, message.plugin)
        frame = convert.client_frame(message.frame)
        [outcome] = await self._trio(self._infer, target, [frame], message.return_image, message.source_id)
        if isinstance(outcome, EdgeboxError):
            raise outcome
        return pb.InferResponse(result=convert.infer_result(outcome))

    async def infer_batch(self, message: pb.InferBatchRequest) -> pb.InferBatchResponse:
        target = InferTarget(message.workflow_id, message.plugin)
        frames = [convert.client_frame(f) for f in message.frames]
        outcomes = await self._trio(self._infer, target, frames, message.return_image, message.source_id)
        return pb.InferBatchResponse(items=[_batch_item(o) for o in outcomes])

    async def _infer(self, target: InferTarget, frames: list, return_image: bool, source_id: str,
                     state: SourceState | None = None, seq_start: int = 1) -> list:
        return await self.node.infer(target, frames, return_image=return_image, source_id=source_id,
                                     state=state, seq_start=seq_start)

    async def stream_infer(self, messages: AsyncIterator[pb.StreamFrame]) -> AsyncIterator[bytes]:
        target: InferTarget | None = None
        state_holder: dict[str, SourceState] = {}
        seq = 0
        async for message in messages:
            if self.tracker.draining:
                raise ShuttingDown("the engine is shutting down; frames after this one were not processed")
            if message.workflow_id or message.plugin:
                target = InferTarget(message.workflow_id, message.plugin)
            if target is None:
                raise InvalidRequest("the first StreamFrame must name workflow_id or plugin")
            seq += 1
            outcome = await self._trio(self._stream_one, target, message, state_holder, seq)
            yield encode_message(outcome)

    async def _stream_one(self, target: InferTarget, message: pb.StreamFrame, holder: dict[str, SourceState],
                          seq: int) -> pb.InferResult:
        key = f"{target.workflow_id}|{target.plugin}"
        try:
            runtime = await self.node.resolve(target)
            state = holder.get(key)
            if state is None:
                holder.clear()
                state = holder[key] = runtime.new_source_state()
            [outcome] = await self._infer(target, [convert.client_frame(message.frame)], message.return_image,
                                          message.source_id, state, seq)
        except EdgeboxError as exc:
            outcome = exc
        if isinstance(outcome, EdgeboxError):
            return pb.InferResult(camera_id=message.source_id, workflow_id=target.workflow_id, frame_seq=seq,
                                  timestamp=int(time.time() * 1000), error_code=pb.InferErrorCode(int(outcome.code)),
                                  error_message=outcome.client_message())
        return convert.infer_result(outcome)

    # -- results ------------------------------------------------------------------------------------------
    async def subscribe_results(self, message: pb.SubscribeRequest) -> AsyncIterator[bytes]:
        filters = len(message.camera_ids) + len(message.workflow_ids)
        if filters > MAX_SUBSCRIPTION_FILTERS:
            raise InvalidRequest(f"the subscription names {filters} cameras and workflows; at most "
                                 f"{MAX_SUBSCRIPTION_FILTERS} (MAX_SUBSCRIPTION_FILTERS), or none for all")
        result_filter = ResultFilter(frozenset(message.camera_ids), frozenset(message.workflow_ids),
                                     message.alarms_only, message.omit_images)
        sink = AsyncioSink(asyncio.get_running_loop())
        subscription = Subscription(result_filter, sink, DEFAULT_SUBSCRIBER_BUFFER)

        await self._trio_sync(self.node.hub.subscribe, subscription)
        try:
            while True:
                item = await sink.queue.get()
                if isinstance(item, EdgeboxError):
                    raise item
                self.bridge.run_in_trio_soon(subscription.taken)
                payload = item.payload
                if item.missed_before:
                    payload += convert.missed_suffix(item.missed_before)
                yield payload
        finally:
            self.bridge.run_in_trio_soon(lambda: self.node.hub.unsubscribe(subscription))

    # -- health and metrics -------------------------------------------------------------------------------
    async def health_check(self, message: pb.HealthCheckRequest) -> bytes:
        # Answered here, from what the trio thread published: a busy trio thread (50 cameras) cannot delay it.
        return self._health_replies.encode(self.node.health_facts(), int(time.time() * 1000), self.node.uptime_s())

    async def get_metrics(self, message: pb.MetricsRequest) -> pb.MetricsResponse:
        return await self._trio_sync(lambda: convert.metrics_response(self.node.metrics_snapshot()))


def _require_request_message(stream: Any) -> None:
    """A unary request stream that ends without a message is the client's error, not an assertion failure."""
    receive = stream.recv_message

    async def recv_message() -> Any:
        message = await receive()
        if message is None:
            raise MalformedMessage("the request ended without a message; send exactly one request message")
        return message

    stream.recv_message = recv_message


def _require_spec(spec: pb.WorkflowSpec | None) -> dict[str, Any]:
    if spec is None:
        raise InvalidRequest("the workflow field is required")
    return convert.workflow_spec_to_dict(spec)


def _batch_item(outcome: Any) -> pb.BatchItem:
    if isinstance(outcome, EdgeboxError):
        return pb.BatchItem(error_code=pb.InferErrorCode(int(outcome.code)), error_message=outcome.client_message())
    return pb.BatchItem(result=convert.infer_result(outcome))
