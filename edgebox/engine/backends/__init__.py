"""Inference backends, registered by name; adding one is one module plus one line in BACKEND_LOADERS."""

from __future__ import annotations

from collections.abc import Callable

from edgebox.engine.backends.base import LoadedModel
from edgebox.engine.backends.onnxruntime_backend import load_onnxruntime
from edgebox.engine.backends.openvino_backend import load_openvino
from edgebox.plugin_api import ModelSpec

# backend name -> loader(model, threads) -> LoadedModel; names as in config `engine.backend`.
BACKEND_LOADERS: dict[str, Callable[[ModelSpec, int], LoadedModel]] = {
    "onnxruntime-cuda": lambda spec, threads: load_onnxruntime(spec, threads, cuda=True),
    "onnxruntime-cpu": lambda spec, threads: load_onnxruntime(spec, threads, cuda=False),
    "openvino-cpu": lambda spec, threads: load_openvino(spec, threads, "CPU"),
    "openvino-gpu": lambda spec, threads: load_openvino(spec, threads, "GPU"),
    "openvino-npu": lambda spec, threads: load_openvino(spec, threads, "NPU"),
}

__all__ = ["BACKEND_LOADERS", "LoadedModel"]
