"""Loads each plugin's model on the backend chosen for it, once, and owns the scheduler queues.

Choice per model = explicit override (workflow) > config `engine.backend` > "auto" order from
`engine.hardware`. A failed preferred backend under "auto" is a logged, counted fallback; an explicit choice
that fails is BACKEND_INIT_FAILED. The queues' batching loops run in the nursery given to `ModelPool`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from edgebox.config import EngineConfig
from edgebox.engine.backends import BACKEND_LOADERS, LoadedModel
from edgebox.engine.hardware import Hardware, backend_candidates
from edgebox.engine.scheduler import ModelQueue, QueueSettings
from edgebox.errors import BackendInitFailed, EdgeboxError
from edgebox.metrics import Metrics
from edgebox.plugin_api import Plugin

log = logging.getLogger("edgebox.engine.models")


@dataclass(frozen=True)
class Fallback:
    model: str
    wanted: str
    used: str
    reason: str


class ModelPool:
    """Model queues keyed by (model file, backend request); loading is serialized per key."""

    def __init__(self, config: EngineConfig, hardware: Hardware, metrics: Metrics, nursery: trio.Nursery) -> None:
        self._config = config
        self._hardware = hardware
        self._metrics = metrics
        self._nursery = nursery
        self._queues: dict[tuple[str, str], ModelQueue] = {}
        self._locks: dict[tuple[str, str], trio.Lock] = {}
        self.fallbacks: list[Fallback] = []
        self.settings = QueueSettings(
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.max_queue_delay_ms / 1000,
            capacity=config.queue_capacity,
            timeout_s=config.inference_timeout_s,
        )

    @property
    def queues(self) -> list[ModelQueue]:
        return list(self._queues.values())

    def queue_depth(self) -> int:
        return sum(q.depth for q in self._queues.values())

    async def queue_for(self, plugin: Plugin, backend: str = "") -> ModelQueue:
        """The queue serving `plugin`'s model on the requested backend ("" = the config's choice)."""
        if plugin.model is None:
            raise TypeError(f"plugin {plugin.name} has no model")
        request = backend or self._config.backend
        key = (str(plugin.model.path), request)
        queue = self._queues.get(key)
        if queue is not None:
            return queue
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            if key not in self._queues:
                model = await self._load(plugin, request)
                queue = ModelQueue(plugin.name, model, self.settings, self._metrics)
                await self._nursery.start(queue.run)
                self._queues[key] = queue
        return self._queues[key]

    async def _load(self, plugin: Plugin, request: str) -> LoadedModel:
        assert plugin.model is not None
        candidates = backend_candidates(request, self._hardware)
        if not candidates:
            raise BackendInitFailed(f"no inference backend is usable on this machine for {plugin.name} "
                                    "(neither OpenVINO nor onnxruntime could start); see the log")
        failures: list[str] = []
        for name in candidates:
            loader = BACKEND_LOADERS[name]
            try:
                model = await trio.to_thread.run_sync(loader, plugin.model, self._config.threads)
            except EdgeboxError as exc:
                failures.append(exc.message)
                log.warning("backend %s failed for %s: %s", name, plugin.name, exc.message)
                continue
            if failures:
                fallback = Fallback(plugin.name, candidates[0], name, failures[0])
                self.fallbacks.append(fallback)
                self._metrics.backend_fallbacks.labels(model=plugin.name, wanted=candidates[0], used=name).inc()
                log.warning("FALLBACK: %s runs on %s instead of %s because: %s", plugin.name, model.label,
                            candidates[0], failures[0])
            log.info("model %s loaded on %s", plugin.name, model.label)
            return model
        raise BackendInitFailed(f"{plugin.name}: " + "; ".join(failures))
