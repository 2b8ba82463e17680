"""A loaded workflow: its plugins bound to scheduler queues, applied to one frame at a time.

`WorkflowRuntime.evaluate` runs every plugin on a frame (model plugins through the batching scheduler), keeps
going when one plugin fails, filters by zones and decides NORMAL/ALARM with the source's state. It produces a
`FrameVerdict`; turning that into a published result is the caller's job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import outcome
import trio

from edgebox.config import EngineConfig
from edgebox.engine.models import ModelPool
from edgebox.engine.scheduler import FrameDropped, ModelQueue
from edgebox.errors import EdgeboxError, InferenceTimeout, InternalError, InvalidRequest
from edgebox.plugin_api import Detection, Plugin
from edgebox.plugins_loader import PluginRegistry
from edgebox.workflows.crash_log import CrashLog
from edgebox.workflows.rules import AlarmState, evaluate_alarm, filter_detections
from edgebox.workflows.spec import WorkflowSpec

log = logging.getLogger("edgebox.workflows")

# Worker threads one plugin of one runtime may hold. A plugin stuck in its own code keeps its abandoned threads
# (see `_run_plugin`) until they return; this bound keeps them out of trio's shared thread limiter.
PLUGIN_THREADS = 40


@dataclass
class SourceState:
    """What a workflow remembers about one source (camera or stream) between frames."""

    plugin_states: dict[str, Any] = field(default_factory=dict)
    alarm: AlarmState = field(default_factory=AlarmState)


@dataclass(frozen=True)
class FrameVerdict:
    detections: list[Detection]
    alarm: bool
    width: int
    height: int
    plugin_errors: Mapping[str, str]
    # The error of the first failed plugin, kept so that a single-plugin RPC can return its code.
    first_error: EdgeboxError | None = None

    def to_json(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"detections": [d.to_json() for d in self.detections],
                                "width": self.width, "height": self.height}
        if self.plugin_errors:
            data["errors"] = dict(self.plugin_errors)
        if extra:
            data.update(extra)
        return data


class WorkflowRuntime:
    def __init__(self, spec: WorkflowSpec, version: int, plugins: list[Plugin],
                 queues: Mapping[str, ModelQueue | None],
                 timeout_s: float = EngineConfig.inference_timeout_s) -> None:
        self.spec = spec
        self.version = version
        self.plugins = plugins
        self._queues = queues
        self._params = {p.name: spec.plugin_params(p.name) for p in plugins}
        self._timeout_s = timeout_s
        self._limiters = {p.name: trio.CapacityLimiter(PLUGIN_THREADS) for p in plugins}
        self._crashes = CrashLog(log)  # one traceback per distinct crash and minute, not one per frame

    @property
    def backends(self) -> list[str]:
        return sorted({q.model.backend for q in self._queues.values() if q is not None})

    @classmethod
    async def load(cls, spec: WorkflowSpec, version: int, registry: PluginRegistry,
                   pool: ModelPool) -> WorkflowRuntime:
        """Resolve plugins and load their models; raises PLUGIN_LOAD_FAILED / BACKEND_INIT_FAILED / INVALID."""
        plugins = [registry.get(name) for name in spec.plugins]
        for plugin in plugins:
            validate = getattr(plugin, "validate_params", None)
            if validate is not None:
                try:
                    validate(spec.plugin_params(plugin.name))
                except ValueError as exc:
                    raise InvalidRequest(f"workflow field params ({plugin.name}): {exc}") from None
        queues: dict[str, ModelQueue | None] = {}
        for plugin in plugins:
            queues[plugin.name] = await pool.queue_for(plugin, spec.backend) if plugin.model else None
        return cls(spec, version, plugins, queues, pool.settings.timeout_s)

    def new_source_state(self) -> SourceState:
        return SourceState({p.name: p.new_state() for p in self.plugins})

    async def evaluate(self, image: np.ndarray, state: SourceState, *, now_ms: int,
                       droppable: bool) -> FrameVerdict:
        """Run every plugin on `image`; FrameDropped propagates (the frame is skipped, not failed)."""
        return await self._evaluate(image, state, now_ms, droppable, None)

    async def evaluate_encoded(self, decode: Callable[[], np.ndarray], state: SourceState, *, now_ms: int,
                               droppable: bool) -> tuple[np.ndarray, FrameVerdict]:
        """Like `evaluate` for a frame still to decode: `decode` (blocking; its errors fail the frame) and the first
        plugin's preprocess share one worker-thread hop. Returns the decoded image with the verdict."""
        first = self.plugins[0]
        deadline = trio.current_time() + self._timeout_s
        if self._queues.get(first.name) is None:
            image = await trio.to_thread.run_sync(decode)
            return image, await self._evaluate(image, state, now_ms, droppable, None)
        params = self._params[first.name]
        done = None
        with trio.move_on_at(deadline):
            done = await trio.to_thread.run_sync(_decode_and_preprocess, decode, first, params,
                                                 abandon_on_cancel=True, limiter=self._limiters[first.name])
        if done is not None:
            image, prepared = done
            return image, await self._evaluate(image, state, now_ms, droppable, (first, prepared, deadline))
        raise InferenceTimeout(f"decoding the frame and preprocessing it for plugin {first.name!r} did not finish "
                               f"within {self._timeout_s:g} s (engine.inference_timeout_s)")

    async def _evaluate(self, image: np.ndarray, state: SourceState, now_ms: int, droppable: bool,
                        prepared: tuple[Plugin, outcome.Outcome, float] | None) -> FrameVerdict:
        height, width = image.shape[:2]
        detections: list[Detection] = []
        errors: dict[str, str] = {}
        first_error: EdgeboxError | None = None
        for plugin in self.plugins:
            ready, deadline = None, None
            if prepared is not None and prepared[0] is plugin:
                ready, deadline = prepared[1], prepared[2]
            try:
                detections.extend(await self._run_plugin(plugin, image, state, droppable, ready, deadline))
            except FrameDropped:
                raise
            except EdgeboxError as exc:
                errors[plugin.name] = exc.client_message()
                first_error = first_error or exc
            except Exception as exc:  # noqa: BLE001 - a plugin bug fails only its own part of the result
                incident = self._crashes.report(plugin.name, exc)
                errors[plugin.name] = f"{type(exc).__name__}: {exc} (incident {incident})"
                first_error = first_error or _plugin_crash(plugin, exc, incident)
        kept = filter_detections(self.spec, detections, width, height)
        alarm = evaluate_alarm(self.spec, kept, state.alarm, now_ms)
        return FrameVerdict(kept, alarm, width, height, errors, first_error)

    async def _run_plugin(self, plugin: Plugin, image: np.ndarray, state: SourceState, droppable: bool,
                          prepared: outcome.Outcome | None = None, deadline: float | None = None) -> list[Detection]:
        # The scheduler's deadline covers only queue + backend. The plugin's own code runs in worker threads
        # that may never return, so the whole plugin run gets the same deadline; a thread that overruns it is
        # abandoned (its result is discarded when it finally returns) and the frame fails with 3001.
        with trio.move_on_at(deadline if deadline is not None else trio.current_time() + self._timeout_s):
            return await self._run_plugin_steps(plugin, image, state, droppable, prepared)
        raise InferenceTimeout(f"plugin {plugin.name!r} did not finish within {self._timeout_s:g} s "
                               "(engine.inference_timeout_s); the plugin's own code is stuck or too slow")

    async def _run_plugin_steps(self, plugin: Plugin, image: np.ndarray, state: SourceState,
                                droppable: bool, prepared: outcome.Outcome | None) -> list[Detection]:
        params = self._params[plugin.name]
        queue = self._queues[plugin.name]
        limiter = self._limiters[plugin.name]

        async def in_thread(fn: Any, *args: Any) -> Any:
            return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True, limiter=limiter)

        if queue is None:
            return await in_thread(plugin.process, image, state.plugin_states.get(plugin.name), params)
        if prepared is not None:
            tensor, context = prepared.unwrap()
        else:
            tensor, context = await in_thread(plugin.preprocess, image, params)
        outputs = await queue.infer(tensor, droppable=droppable)
        if plugin.postprocess_inline:
            return plugin.postprocess(outputs, context, params)
        return await in_thread(plugin.postprocess, outputs, context, params)


def _decode_and_preprocess(decode: Callable[[], np.ndarray], plugin: Plugin,
                           params: Mapping[str, str]) -> tuple[np.ndarray, outcome.Outcome]:
    """Worker thread: decode the frame (errors propagate) and preprocess it (errors kept for the plugin alone)."""
    image = decode()
    return image, outcome.capture(plugin.preprocess, image, params)


def _plugin_crash(plugin: Plugin, exc: Exception, incident: str) -> EdgeboxError:
    return InternalError(f"plugin {plugin.name!r} failed on this frame: {type(exc).__name__}: {exc} (incident "
                         f"{incident}; the engine log has the traceback)")
