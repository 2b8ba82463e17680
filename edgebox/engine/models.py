"""Loads each plugin's model on the backend chosen for it, once, and owns the scheduler queues.

Choice per model = explicit override (workflow) > config `engine.backend` > "auto" order from
`engine.hardware`. A failed preferred backend under "auto" is a logged, counted fallback; an explicit choice
that fails is BACKEND_INIT_FAILED. One model file on one backend has one queue, however the backend was asked
for, so that every source using it batches together. The queues' batching loops run in the nursery given to
`ModelPool`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from edgebox.config import EngineConfig
from edgebox.engine.backends import BACKEND_LOADERS, LoadedModel, LoadOptions
from edgebox.engine.hardware import Hardware, backend_candidates, usable_cores
from edgebox.engine.scheduler import ModelQueue, QueueSettings
from edgebox.errors import BackendInitFailed, EdgeboxError
from edgebox.metrics import Metrics
from edgebox.plugin_api import Plugin

log = logging.getLogger("edgebox.engine.models")


def cpu_executions(config: EngineConfig) -> int:
    """Batches a CPU backend runs at once: the config's `cpu_executions`, or by default 2 on 2 cores or more (two
    runs sharing the cores made up to 1.5x the raw frames/s of one run on all of them, and 1.1-1.3x end to end:
    docs/benchmarks.md#inference)."""
    return config.cpu_executions or (2 if usable_cores() >= 2 else 1)


@dataclass(frozen=True)
class Fallback:
    model: str
    wanted: str
    used: str
    reason: str


@dataclass(frozen=True)
class LoadedModelInfo:
    """What runs where, for health, the console and the log."""

    model: str  # the plugin whose model it is
    backend: str  # e.g. "openvino-cpu"
    device: str  # e.g. "CPU (Intel(R) Core(TM) i5-1145G7, f32)" or "CUDA:0"
    batch_limit: int
    queue_depth: int
    executions: int = 1  # batches it runs at once

    def __str__(self) -> str:
        return f"{self.model}: {self.backend} on {self.device}"


class ModelPool:
    """Model queues keyed by (model file, backend); loading is serialized per model file."""

    def __init__(self, config: EngineConfig, hardware: Hardware, metrics: Metrics, nursery: trio.Nursery, *,
                 cache_dir: Path | None = None) -> None:
        """`cache_dir`: the node's folder for compiled engines (`<data_dir>/engines`); None keeps none."""
        self._config = config
        self._load_options = LoadOptions(threads=config.threads, cpu_executions=cpu_executions(config),
                                         max_batch_size=config.max_batch_size,
                                         cache_dir=cache_dir, tensorrt_fp16=config.tensorrt_fp16,
                                         openvino_precision=config.openvino_precision)
        self._hardware = hardware
        self._metrics = metrics
        self._nursery = nursery
        self._queues: dict[tuple[str, str], ModelQueue] = {}  # (model path, backend actually used)
        self._requests: dict[tuple[str, str], ModelQueue] = {}  # (model path, backend as requested)
        self._locks: dict[str, trio.Lock] = {}
        self.fallbacks: list[Fallback] = []
        self.on_loaded: list[Callable[[], None]] = []  # each called on the trio thread after each model loads
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

    def loaded(self) -> list[LoadedModelInfo]:
        """Every loaded model with the backend and device it really runs on."""
        return [LoadedModelInfo(q.model_name, q.model.backend, q.model.device, q.batch_limit, q.depth, q.parallel)
                for q in self._queues.values()]

    async def queue_for(self, plugin: Plugin, backend: str = "") -> ModelQueue:
        """The queue serving `plugin`'s model on the requested backend ("" = the config's choice)."""
        if plugin.model is None:
            raise TypeError(f"plugin {plugin.name} has no model")
        request = backend or self._config.backend
        path = str(plugin.model.path)
        queue = self._requests.get((path, request))
        if queue is not None:
            return queue
        async with self._locks.setdefault(path, trio.Lock()):
            queue = self._requests.get((path, request))
            if queue is None:
                queue = await self._queue_on_first_working(plugin, request)
                self._requests[(path, request)] = queue
        return queue

    async def _queue_on_first_working(self, plugin: Plugin, request: str) -> ModelQueue:
        assert plugin.model is not None
        path = str(plugin.model.path)
        candidates = backend_candidates(request, self._hardware)
        if not candidates:
            raise BackendInitFailed(f"no inference backend is usable on this machine for {plugin.name} "
                                    "(neither OpenVINO nor onnxruntime could start); see the log")
        failures: list[str] = []
        for name in candidates:
            queue = self._queues.get((path, name))
            if queue is None:
                try:
                    model = await self._load(plugin, name)
                except EdgeboxError as exc:
                    failures.append(exc.message)
                    log.warning("backend %s failed for %s: %s", name, plugin.name, exc.message)
                    continue
                queue = ModelQueue(plugin.name, model, self.settings, self._metrics)
                await self._nursery.start(queue.run)
                self._queues[(path, name)] = queue
                log.info("model %s loaded on %s, %d execution(s) at once", plugin.name, model.label, model.parallel)
                for callback in self.on_loaded:
                    callback()
            if failures:
                self._record_fallback(plugin.name, candidates[0], queue.model, failures[0])
            return queue
        raise BackendInitFailed(f"{plugin.name}: " + "; ".join(failures))

    async def _load(self, plugin: Plugin, name: str) -> LoadedModel:
        loader = BACKEND_LOADERS.get(name)
        if loader is None:
            raise BackendInitFailed(f"{name}: unknown backend (known: {', '.join(sorted(BACKEND_LOADERS))})")
        try:
            return await trio.to_thread.run_sync(loader, plugin.model, self._load_options)
        except EdgeboxError:
            raise
        except Exception as exc:  # noqa: BLE001 - a backend library may fail in any way; it is that backend's failure
            raise BackendInitFailed(f"{name}: {type(exc).__name__}: {exc}") from None

    def _record_fallback(self, model_name: str, wanted: str, model: LoadedModel, reason: str) -> None:
        self.fallbacks.append(Fallback(model_name, wanted, model.backend, reason))
        self._metrics.backend_fallbacks.labels(model=model_name, wanted=wanted, used=model.backend).inc()
        log.warning("FALLBACK: %s runs on %s instead of %s because: %s", model_name, model.label, wanted, reason)
