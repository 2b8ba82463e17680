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


def load_openvino(spec: ModelSpec, threads: int, device: str, *, executions: int = 1) -> LoadedModel:
    """Read and compile the model for `device`; BACKEND_INIT_FAILED names the device and the reason.

    On CPU, `executions` batches may run at once: the model is compiled with that many streams (each on its
    share of the threads) and gets one infer request per stream.
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

    def run(batch: np.ndarray) -> Sequence[np.ndarray]:
        # share_inputs: the scheduler's stacked batch outlives the call, so OpenVINO may read it in place; the
        # outputs are copied out of the request (share_outputs=False) because the next call overwrites them.
        request = idle_requests.get()  # the scheduler runs at most `executions` at once: never waits there
        try:
            result = request.infer({0: batch}, share_inputs=True, share_outputs=False)
        finally:
            idle_requests.put(request)
        return [result[o] for o in outputs]

    return LoadedModel(backend=name, device=f"{device} ({full_name})", run=run, supports_batch=supports_batch,
                       parallel=executions)
