"""The console's JSON API under /api: thin handlers over the same `Node` methods the gRPC service calls.

Handlers decode the request, call the node, and shape the answer as JSON. Domain errors become
{"code": 1001, "name": "CAMERA_NOT_FOUND", "message": ...} with the HTTP status of `errors.STATUS_BY_CODE`.
Live views (frames, alarms, events) are in `edgebox.web.live`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

import trio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edgebox.cameras import mask_url
from edgebox.errors import EdgeboxError, InternalError, InvalidRequest, ShuttingDown
from edgebox.fleet import Camera
from edgebox.node import Lifecycle, Node
from edgebox.workflows.registry import WorkflowEntry

log = logging.getLogger("edgebox.web")

# A workflow spec with every limit used is well under this; bigger bodies are refused before parsing.
MAX_BODY_BYTES = 256 * 1024


def error_response(exc: EdgeboxError) -> JSONResponse:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return JSONResponse({"code": int(exc.code), "name": exc.code.name, "message": exc.message},
                        status_code=exc.http_status, headers=headers)


async def edgebox_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EdgeboxError)
    return error_response(exc)


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.error("console request %s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(InternalError(f"the console failed to handle {request.method} {request.url.path}: "
                                        f"{type(exc).__name__}; the engine log has the details"))


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, refused unless it is JSON (which also keeps forms of other sites out)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise InvalidRequest(f"send the body as JSON with Content-Type: application/json (got {content_type!r})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise InvalidRequest(f"request body exceeds {MAX_BODY_BYTES} bytes (MAX_BODY_BYTES)")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    return data


def _string(data: dict[str, Any], key: str) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise InvalidRequest(f"{key} must be a string")
    return value.strip()


def _options(data: dict[str, Any]) -> dict[str, str]:
    value = data.get("config") or {}
    if not isinstance(value, dict):
        raise InvalidRequest("config must be an object of camera options, e.g. {\"fps\": \"5\"}")
    options = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise InvalidRequest(f"camera option {key!r} must be a string or a number")
        if str(item).strip():  # an empty form field means "use the default"
            options[str(key)] = str(item).strip()
    return options


class ConsoleApi:
    def __init__(self, node: Node) -> None:
        self.node = node

    def routes(self) -> list[Route]:
        return [
            Route("/api/cameras", self.list_cameras, methods=["GET"]),
            Route("/api/cameras", self.add_camera, methods=["POST"]),
            Route("/api/cameras/{camera_id}", self.get_camera, methods=["GET"]),
            Route("/api/cameras/{camera_id}", self.remove_camera, methods=["DELETE"]),
            Route("/api/workflows", self.list_workflows, methods=["GET"]),
            Route("/api/workflows", self.deploy_workflow, methods=["POST"]),
            Route("/api/workflows/{workflow_id}", self.get_workflow, methods=["GET"]),
            Route("/api/workflows/{workflow_id}", self.update_workflow, methods=["PUT"]),
            Route("/api/workflows/{workflow_id}", self.delete_workflow, methods=["DELETE"]),
            Route("/api/health", self.health, methods=["GET"]),
            Route("/api/metrics", self.metrics, methods=["GET"]),
        ]

    def _check_accepting(self) -> None:
        if self.node.lifecycle == Lifecycle.STOPPING:
            raise ShuttingDown("the engine is shutting down and takes no changes; retry after it restarts")

    # -- cameras --------------------------------------------------------------------------------------
    async def list_cameras(self, request: Request) -> Response:
        devices = self._devices()
        return JSONResponse({"cameras": [camera_json(c, devices) for c in self.node.list_cameras()]})

    async def get_camera(self, request: Request) -> Response:
        camera = self.node.fleet.get(request.path_params["camera_id"])
        return JSONResponse(camera_json(camera, self._devices()))

    async def add_camera(self, request: Request) -> Response:
        self._check_accepting()
        data = await read_json_object(request)
        camera = await self.node.add_camera(_string(data, "camera_id"), _string(data, "url"),
                                            _string(data, "workflow_id"), _options(data))
        return JSONResponse(camera_json(camera, self._devices()), status_code=201)

    async def remove_camera(self, request: Request) -> Response:
        self._check_accepting()
        camera_id = request.path_params["camera_id"]
        await self.node.remove_camera(camera_id)
        return JSONResponse({"camera_id": camera_id})

    def _devices(self) -> dict[str, str]:
        return {q.model.backend: q.model.device for q in self.node.pool.queues}

    # -- workflows ------------------------------------------------------------------------------------
    async def list_workflows(self, request: Request) -> Response:
        return JSONResponse({"workflows": [self._workflow(e) for e in self.node.list_workflows()]})

    async def get_workflow(self, request: Request) -> Response:
        return JSONResponse(self._workflow(self.node.workflows.get(request.path_params["workflow_id"])))

    async def deploy_workflow(self, request: Request) -> Response:
        self._check_accepting()
        spec = await read_json_object(request)
        return JSONResponse(self._workflow(await self.node.deploy_workflow(spec)), status_code=201)

    async def update_workflow(self, request: Request) -> Response:
        self._check_accepting()
        spec = await read_json_object(request)
        workflow_id = request.path_params["workflow_id"]
        if spec.setdefault("workflow_id", workflow_id) != workflow_id:
            raise InvalidRequest(f"the body's workflow_id {spec['workflow_id']!r} differs from the URL's "
                                 f"{workflow_id!r}")
        return JSONResponse(self._workflow(await self.node.update_workflow(spec)))

    async def delete_workflow(self, request: Request) -> Response:
        self._check_accepting()
        workflow_id = request.path_params["workflow_id"]
        await self.node.delete_workflow(workflow_id)
        return JSONResponse({"workflow_id": workflow_id})

    def _workflow(self, entry: WorkflowEntry) -> dict[str, Any]:
        return workflow_json(entry, self.node.fleet.using(entry.spec.workflow_id))

    # -- node -----------------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        data = dataclasses.asdict(self.node.health())
        data["queues"] = [{"model": q.model_name, "backend": q.model.backend, "device": q.model.device,
                           "queue_depth": q.depth, "batch_limit": q.batch_limit, "executions": q.parallel} for q in self.node.pool.queues]
        return JSONResponse(data)

    async def metrics(self, request: Request) -> Response:
        """The GetMetrics snapshot, for the console header (Prometheus scrapes /metrics)."""
        return JSONResponse(dataclasses.asdict(self.node.metrics_snapshot()))


def camera_json(camera: Camera, devices: dict[str, str]) -> dict[str, Any]:
    status = camera.status
    latest = camera.pipeline.latest
    backend = camera.pipeline.backend
    return {
        "camera_id": camera.camera_id,
        "url": mask_url(camera.url),
        "workflow_id": camera.workflow_id,
        "config": dict(camera.config),
        "state": status.state.value,
        "error": status.error.value,
        "last_error": camera.last_error,
        "state_for_s": round(max(0.0, trio.current_time() - status.since), 1),
        "fps_in": round(status.fps_in, 2),
        "fps_out": round(camera.pipeline.fps_out, 2),
        "frame_age_ms": round(camera.pipeline.frame_age_ms, 1),
        "frames_in": status.frames_in,
        "frames_dropped": camera.pipeline.frames_dropped,
        "results": camera.pipeline.results,
        "reconnects": status.reconnects,
        "resolution": status.resolution,
        "backend": backend,
        "device": ", ".join(devices[b] for b in backend.split(", ") if b in devices),
        "latest_frame_ms": latest.timestamp_ms if latest is not None else None,
        "latest_alarm": latest.alarm if latest is not None else False,
        "latest_detections": len(latest.detections) if latest is not None else 0,
    }


def workflow_json(entry: WorkflowEntry, cameras: list[str]) -> dict[str, Any]:
    return {
        "workflow_id": entry.spec.workflow_id,
        "version": entry.version,
        "updated_at_ms": entry.updated_at_ms,
        "spec": entry.spec.to_dict(),
        "cameras": sorted(cameras),
        "load_error": entry.load_error.client_message() if entry.load_error is not None else "",
        "backends": entry.runtime.backends if entry.runtime is not None else [],
    }
