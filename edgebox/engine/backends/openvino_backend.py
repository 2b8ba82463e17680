"""OpenVINO compiled models on Intel CPU, iGPU or NPU."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence

import numpy as np

from edgebox.engine.backends.base import LoadedModel
from edgebox.engine.hardware import has_openvino_device, usable_cores
from edgebox.errors import BackendInitFailed
from edgebox.plugin_api import ModelSpec

log = logging.getLogger("edgebox.engine.openvino")
_core = None
_core_lock = threading.Lock()  # two models loading at once must not make two Cores


def openvino_core():
    """One shared Core per process: it owns the device plugins.

    Creating it also builds the Python binding's element type -> numpy dtype table, which otherwise the first
    `Type.to_dtype()` does (every infer() with a numpy input makes one) inside a C++ static initializer that lets
    go of the GIL. Two threads arriving there at once deadlock: one holds the initializer's guard and waits for
    the GIL, the other holds the GIL and waits on the guard (found in CI: a model's first two executions, run at
    once; a bare script hung in 8 of 20 fresh processes). One call builds the whole table.
    """
    global _core
    with _core_lock:
        if _core is None:
            import openvino as ov

            ov.Type.f32.to_dtype()
            _core = ov.Core()
    return _core


def load_openvino(spec: ModelSpec, threads: int, device: str, *, executions: int = 1,
                  precision: str = "auto") -> LoadedModel:
    """Read and compile the model for `device`; BACKEND_INIT_FAILED names the device and the reason.

    On CPU, `executions` batches may run at once: the model is compiled with that many streams (each on its
    share of the threads) and gets one infer request per stream. `precision` "auto" keeps the device's own
    inference precision (bf16 on CPUs with AMX or AVX-512 BF16), "f32" asks for full precision; the device
    string names the precision the compiled model really runs at.
    """
    executions = max(1, executions) if device == "CPU" else 1
    name = f"openvino-{device.lower()}"
    try:
        core = openvino_core()
    except ImportError as exc:
        raise BackendInitFailed(f"{name}: openvino is not installed: {exc}") from None
    if not has_openvino_device(core.available_devices, device):
        raise BackendInitFailed(f"{name}: device {device} is not available here "
                                f"(OpenVINO sees: {', '.join(core.available_devices) or 'none'})")
    # On CPU the scheduler runs `executions` batches at once: one stream each (one stream = the latency hint);
    # accelerators get one request at a time and the throughput hint, which sizes their internal streams.
    config: dict[str, object]
    if device != "CPU":
        config = {"PERFORMANCE_HINT": "THROUGHPUT"}
    elif executions > 1:
        config = {"NUM_STREAMS": executions, "INFERENCE_NUM_THREADS": threads or usable_cores()}
    else:
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
    if precision != "auto":
        config["INFERENCE_PRECISION_HINT"] = precision
    try:
        model = core.read_model(str(spec.path))
        compiled = core.compile_model(model, device, config)
    except Exception as exc:  # noqa: BLE001 - any failure to compile is this backend's BACKEND_INIT_FAILED
        raise BackendInitFailed(f"{name}: cannot compile {spec.path.name}: {exc}") from None
    idle_requests: queue.SimpleQueue = queue.SimpleQueue()  # one per execution that may run at once
    for _ in range(executions):
        idle_requests.put(compiled.create_infer_request())
    outputs = compiled.outputs
    batch_dim = compiled.inputs[0].get_partial_shape()[0]
    supports_batch = batch_dim.is_dynamic or batch_dim.get_length() != 1
    full_name = core.get_property(device, "FULL_DEVICE_NAME")
    running_at = _inference_precision(compiled)

    def run(batch: np.ndarray) -> Sequence[np.ndarray]:
        # share_inputs: the scheduler's stacked batch outlives the call, so OpenVINO may read it in place; the
        # outputs are copied out of the request (share_outputs=False) because the next call overwrites them.
        request = idle_requests.get()  # the scheduler runs at most `executions` at once: never waits there
        try:
            result = request.infer({0: batch}, share_inputs=True, share_outputs=False)
        finally:
            idle_requests.put(request)
        return [result[o] for o in outputs]

    described = f"{full_name}, {running_at}" if running_at else full_name
    return LoadedModel(backend=name, device=f"{device} ({described})", run=run, supports_batch=supports_batch,
                       parallel=executions, precision=running_at)


def _inference_precision(compiled) -> str:  # compiled: openvino.CompiledModel, imported lazily
    """The precision the compiled model computes in, e.g. "bf16"; "" where the device does not say."""
    try:
        return compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    except Exception:  # noqa: BLE001 - a device plugin without this property (some NPU drivers)
        return ""
