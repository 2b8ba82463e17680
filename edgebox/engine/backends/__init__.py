"""Inference backends, registered by name; adding one is one module plus one line in BACKEND_LOADERS."""

from __future__ import annotations

from collections.abc import Callable

from edgebox.engine.backends.base import LoadedModel, LoadOptions
from edgebox.engine.backends.onnxruntime_backend import load_onnxruntime
from edgebox.engine.backends.openvino_backend import load_openvino
from edgebox.engine.backends.tensorrt_backend import load_tensorrt
from edgebox.plugin_api import ModelSpec

# backend name -> loader(model, options) -> LoadedModel; names as in config `engine.backend`.
BACKEND_LOADERS: dict[str, Callable[[ModelSpec, LoadOptions], LoadedModel]] = {
    "onnxruntime-cuda": lambda spec, options: load_onnxruntime(spec, options.threads, cuda=True),
    "onnxruntime-tensorrt": load_tensorrt,
    "onnxruntime-cpu": lambda spec, options: load_onnxruntime(spec, options.threads, cuda=False,
                                                                  executions=options.cpu_executions),
    "openvino-cpu": lambda spec, options: load_openvino(spec, options.threads, "CPU",
                                                            executions=options.cpu_executions,
                                                            precision=options.openvino_precision),
    "openvino-gpu": lambda spec, options: load_openvino(spec, options.threads, "GPU",
                                                            precision=options.openvino_precision),
    "openvino-npu": lambda spec, options: load_openvino(spec, options.threads, "NPU",
                                                            precision=options.openvino_precision),
}

__all__ = ["BACKEND_LOADERS", "LoadOptions", "LoadedModel"]
