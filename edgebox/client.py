"""A small async Python client for the InferenceService (grpclib + the generated stubs).

Errors come back as `EdgeboxClientError` carrying the gRPC status, the numeric InferErrorCode read from the
google.rpc.ErrorInfo detail, and the retry hint when the server gave one. Used by the tests, the CLI and the
docs examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from google.rpc import error_details_pb2
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from edgebox.proto_gen import infer as pb

__all__ = ["EdgeboxClient", "EdgeboxClientError", "pb"]

STREAM_INFER = "/infer.InferenceService/StreamInfer"


class EdgeboxClientError(Exception):
    def __init__(self, status: Status, message: str, code: int, reason: str, retry_after_s: float | None) -> None:
        super().__init__(f"{status.name}: {message}")
        self.status = status
        self.message = message
        self.code = code  # InferErrorCode value, 0 if the server sent none
        self.reason = reason  # InferErrorCode name
        self.retry_after_s = retry_after_s

    @classmethod
    def from_grpc(cls, exc: GRPCError) -> EdgeboxClientError:
        code, reason, retry = 0, "", None
        for detail in exc.details or ():
            if isinstance(detail, error_details_pb2.ErrorInfo):
                code, reason = int(detail.metadata.get("code", "0")), detail.reason
            elif isinstance(detail, error_details_pb2.RetryInfo):
                retry = detail.retry_delay.ToMilliseconds() / 1000
        return cls(exc.status, exc.message or "", code, reason, retry)


def client_ssl_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert_file is not None:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    context.set_alpn_protocols(["h2"])
    return context


class EdgeboxClient:
    """`async with EdgeboxClient("127.0.0.1", 50051) as client: await client.health()`"""

    def __init__(self, host: str = "127.0.0.1", port: int = 50051, *, timeout: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.channel = Channel(host, port, ssl=ssl_context)
        self.stub = pb.InferenceServiceStub(self.channel, timeout=timeout)
        # Streams live as long as the caller reads them: no default deadline.
        self.stream_stub = pb.InferenceServiceStub(self.channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    async def _call(self, method: str, request: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self.stub, method)(request, **kwargs)
        except GRPCError as exc:
            raise EdgeboxClientError.from_grpc(exc) from None

    async def health(self) -> pb.HealthCheckResponse:
        return await self._call("health_check", pb.HealthCheckRequest())

    async def metrics(self) -> pb.MetricsResponse:
        return await self._call("get_metrics", pb.MetricsRequest())

    async def add_camera(self, camera_id: str, url: str, workflow_id: str,
                         config: Mapping[str, str] | None = None) -> pb.CameraInfo:
        request = pb.AddCameraRequest(camera_id=camera_id, rtsp_url=url, workflow_id=workflow_id,
                                      config=dict(config or {}))
        return (await self._call("add_camera", request)).camera

    async def remove_camera(self, camera_id: str) -> None:
        await self._call("remove_camera", pb.RemoveCameraRequest(camera_id=camera_id))

    async def list_cameras(self) -> list[pb.CameraInfo]:
        return list((await self._call("list_cameras", pb.ListCamerasRequest())).cameras)

    async def deploy_workflow(self, spec: pb.WorkflowSpec) -> pb.WorkflowInfo:
        return (await self._call("deploy_workflow", pb.DeployWorkflowRequest(workflow=spec))).workflow

    async def update_workflow(self, spec: pb.WorkflowSpec) -> pb.WorkflowInfo:
        return (await self._call("update_workflow", pb.UpdateWorkflowRequest(workflow=spec))).workflow

    async def delete_workflow(self, workflow_id: str) -> None:
        await self._call("delete_workflow", pb.DeleteWorkflowRequest(workflow_id=workflow_id))

    async def list_workflows(self) -> list[pb.WorkflowInfo]:
        return list((await self._call("list_workflows", pb.ListWorkflowsRequest())).workflows)

    async def infer(self, image: bytes, *, workflow_id: str = "", plugin: str = "", return_image: bool = False,
                    source_id: str = "", timeout: float | None = None) -> pb.InferResult:
        request = pb.InferRequest(workflow_id=workflow_id, plugin=plugin, frame=pb.Frame(image_data=image),
                                  return_image=return_image, source_id=source_id)
        kwargs = {"timeout": timeout} if timeout is not None else {}
        return (await self._call("infer_single_frame", request, **kwargs)).result

    async def infer_batch(self, images: Iterable[bytes], *, workflow_id: str = "", plugin: str = "",
                          return_image: bool = False) -> list[pb.BatchItem]:
        request = pb.InferBatchRequest(workflow_id=workflow_id, plugin=plugin, return_image=return_image,
                                       frames=[pb.Frame(image_data=i) for i in images])
        return list((await self._call("infer_batch", request)).items)

    async def subscribe(self, *, camera_ids: Iterable[str] = (), workflow_ids: Iterable[str] = (),
                        alarms_only: bool = False, omit_images: bool = False) -> AsyncIterator[pb.InferResult]:
        request = pb.SubscribeRequest(camera_ids=list(camera_ids), workflow_ids=list(workflow_ids),
                                      alarms_only=alarms_only, omit_images=omit_images)
        try:
            # aclosing: closing this generator must end the call now, not when the inner one is collected.
            async with contextlib.aclosing(self.stream_stub.subscribe_results(request)) as results:
                async for result in results:
                    yield result
        except GRPCError as exc:
            raise EdgeboxClientError.from_grpc(exc) from None

    async def stream_infer(self, frames: AsyncIterator[pb.StreamFrame] | Iterable[pb.StreamFrame]
                           ) -> AsyncIterator[pb.InferResult]:
        """Send `frames` while yielding their results; the server's final status is raised as EdgeboxClientError.

        Not the generated stub: when the server ends the call first (a drain, an error) while frames are still
        being sent, the stub leaves the request side open and grpclib then raises ProtocolError("Outgoing stream
        was not ended") instead of the server's status. Here the sender stops and the request side is ended
        (or, when the server has reset the stream, grpclib is told so) before the status is read.
        """
        try:
            async with self.channel.request(STREAM_INFER, Cardinality.STREAM_STREAM, pb.StreamFrame,
                                            pb.InferResult) as stream:
                await stream.send_request()
                sender = asyncio.ensure_future(_send_all(stream, frames))
                try:
                    async for result in stream:
                        yield result
                except BaseException:  # the caller stopped reading, or the call failed: grpclib cancels it
                    sender.cancel()
                    raise
                # The server ended the call (its status is in the trailers): stop sending, end the request side.
                sender.cancel()
                ended = (await asyncio.gather(sender, return_exceptions=True))[0] is True
                if not ended:
                    try:
                        await stream.end()
                    except Exception as exc:
                        # After a non-OK status the server also resets the stream, so it cannot be ended;
                        # grpclib then raises the status from the trailers it already has.
                        raise StreamTerminatedError("the server ended the call while frames were sent") from exc
        except GRPCError as exc:
            raise EdgeboxClientError.from_grpc(exc) from None


async def _send_all(stream: Any, frames: AsyncIterator[pb.StreamFrame] | Iterable[pb.StreamFrame]) -> bool:
    """Send every frame, then end the request side; True once ended."""
    if isinstance(frames, Iterable):
        for frame in frames:
            await stream.send_message(frame)
    else:
        async for frame in frames:
            await stream.send_message(frame)
    await stream.end()
    return True
