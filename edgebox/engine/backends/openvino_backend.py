"""OpenVINO compiled models on Intel CPU, iGPU or NPU."""

from __future__ import annotations

import logging

import numpy as np

from edgebox.engine.backends.base import LoadedModel
from edgebox.errors import BackendInitFailed
from edgebox.plugin_api import ModelSpec

log = logging.getLogger("edgebox.engine.openvino")
_core = None


def openvino_core():  # noqa: ANN201 - openvino.Core, imported lazily (it takes ~0.3 s)
    """One shared Core per process: it owns the device plugins."""
    global _core
    if _core is None:
        import openvino as ov

        _core = ov.Core()
    return _core


def load_openvino(spec: ModelSpec, threads: int, device: str) -> LoadedModel:
    """Read and compile the model for `device`; BACKEND_INIT_FAILED names the device and the reason."""
    name = f"openvino-{device.lower()}"
    try:
        core = openvino_core()
    except ImportError as exc:
        raise BackendInitFailed(f"{name}: openvino is not installed: {exc}") from None
    if device not in core.available_devices:
        raise BackendInitFailed(f"{name}: device {device} is not available here "
                                f"(OpenVINO sees: {', '.join(core.available_devices) or 'none'})")
    config = {"PERFORMANCE_HINT": "THROUGHPUT" if device != "CPU" else "LATENCY"}
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        model = core.read_model(str(spec.path))
        compiled = core.compile_model(model, device, config)
    except Exception as exc:
        raise BackendInitFailed(f"{name}: cannot compile {spec.path.name}: {exc}") from None
    request = compiled.create_infer_request()
    outputs = compiled.outputs
    batch_dim = compiled.inputs[0].get_partial_shape()[0]
    supports_batch = batch_dim.is_dynamic or batch_dim.get_length() != 1
    full_name = core.get_property(device, "FULL_DEVICE_NAME")

    def run(batch: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: batch})
        return [np.array(result[o]) for o in outputs]

    return LoadedModel(backend=name, device=f"{device} ({full_name})", run=run, supports_batch=supports_batch)
