"""What a loaded model looks like to the scheduler, whatever backend runs it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebox.config import EngineConfig

OOM_MARKERS = ("out of memory", "failed to allocate memory", "cudaerrormemoryallocation", "bad_alloc")


@dataclass(frozen=True)
class LoadOptions:
    """What a loader gets besides the model: from the engine config and the node's data dir."""

    threads: int = 0  # 0 = the backend decides
    # CPU backends: batches run at once, each on its share of the threads (`cpu_execution_threads`). 1 = one
    # batch at a time on every thread.
    cpu_executions: int = 1
    max_batch_size: int = 8  # the largest batch the scheduler will send (TensorRT profiles and warm-up)
    # A writable per-node folder for compiled engines (TensorRT); None = the backend keeps nothing on disk.
    cache_dir: Path | None = None
    # The engine config's defaults, so that a loader called without the config (benchmarks, tests) runs as the
    # engine does.
    tensorrt_fp16: bool = EngineConfig.tensorrt_fp16
    openvino_precision: str = EngineConfig.openvino_precision  # config.OPENVINO_PRECISIONS


@dataclass
class LoadedModel:
    """A compiled model: `run` takes a batch (axis 0) and returns every output with the same batch axis."""

    backend: str  # e.g. "openvino-cpu"
    device: str  # what is really in use, e.g. "CPU (Intel Xeon)" or "CUDA:0"
    run: Callable[[np.ndarray], Sequence[np.ndarray]]
    # False when the model only accepts batch 1; the scheduler then runs batch items one by one.
    supports_batch: bool = True
    # How many `run` calls may execute at once (from different threads); the scheduler keeps this many busy.
    parallel: int = 1
    # Set only by wrappers that run on trio directly (the fault-injecting test wrapper); real backends use threads.
    run_async: Callable[[np.ndarray], Awaitable[Sequence[np.ndarray]]] | None = None
    # The precision the backend computes in where it says ("bf16", "f32"; OpenVINO), "" where it does not.
    precision: str = ""

    @property
    def label(self) -> str:
        return f"{self.backend} ({self.device})"


def cpu_execution_threads(threads: int, executions: int, cores: int) -> int:
    """Threads for each of `executions` parallel CPU executions: `threads` (or every core, when 0) shared out,
    at least one each."""
    return max(1, (threads or cores) // max(1, executions))


def is_out_of_memory(exc: BaseException) -> bool:
    """Backends report OOM as generic runtime errors; recognise them by their text."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in OOM_MARKERS)
