"""onnxruntime sessions on CUDA (onnxruntime-gpu) or CPU, with a loud, checked fallback.

A CUDA request is checked twice: the driver must report a device before a session is made (listing the CUDA
provider proves nothing), and the session must really run on CUDA afterwards (onnxruntime silently falls back
to CPU when the CUDA 13 / cuDNN 9 libraries are missing).
"""

from __future__ import annotations

import logging

import numpy as np

from edgebox.engine.backends.base import LoadedModel, cpu_execution_threads
from edgebox.engine.hardware import cpu_name, cuda_driver, usable_cores
from edgebox.errors import BackendInitFailed
from edgebox.plugin_api import ModelSpec

log = logging.getLogger("edgebox.engine.onnxruntime")


def load_onnxruntime(spec: ModelSpec, threads: int, *, cuda: bool, executions: int = 1) -> LoadedModel:
    """Create a session; with cuda=True, fail (BACKEND_INIT_FAILED) unless CUDA is really the provider in use.

    On CPU, `executions` batches may run at once (onnxruntime's `run` is thread-safe), each on an intra-op pool
    of its share of `threads`: on 2 cores, two single-threaded runs made up to 1.5x the frames/s of one run on
    two threads (docs/benchmarks.md#inference), because these models' parallel sections leave threads idle.
    """
    executions = 1 if cuda else max(1, executions)
    name = "onnxruntime-cuda" if cuda else "onnxruntime-cpu"
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendInitFailed(f"{name}: onnxruntime is not installed: {exc}") from None
    if cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendInitFailed(f"{name}: this onnxruntime build has no CUDA provider (install onnxruntime-gpu)")
        driver = cuda_driver()
        if driver.devices == 0:
            raise BackendInitFailed(f"{name}: no usable NVIDIA GPU: {driver.reason}")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CUDA probe's missing-library errors are reported by us, once
    # Idle intra-op threads must sleep, not spin: on a small box the model shares the cores with decoding,
    # pre/postprocessing and gRPC, and spinning took 40-70 % more CPU per frame and lost throughput
    # (docs/benchmarks.md#inference).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if executions > 1:
        options.intra_op_num_threads = cpu_execution_threads(threads, executions, usable_cores())
        options.inter_op_num_threads = 1
    elif threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(str(spec.path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - any failure to load is this backend's BACKEND_INIT_FAILED
        raise BackendInitFailed(f"{name}: cannot load {spec.path.name}: {exc}") from None
    if cuda and session.get_providers()[0] != "CUDAExecutionProvider":
        raise BackendInitFailed(
            f"{name}: the NVIDIA driver sees a GPU but onnxruntime's CUDA provider did not start (the CUDA 13 and "
            "cuDNN 9 libraries are missing: install onnxruntime-gpu[cuda,cudnn] or the CUDA toolkit); "
            "onnxruntime would silently run on CPU")
    input_meta = session.get_inputs()[0]
    input_name = input_meta.name
    output_names = [o.name for o in session.get_outputs()]
    batch_dim = input_meta.shape[0] if input_meta.shape else 1
    supports_batch = not isinstance(batch_dim, int) or batch_dim != 1

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(output_names, {input_name: batch})

    device = "CUDA:0" if cuda else f"CPU ({cpu_name()})"
    return LoadedModel(backend=name, device=device, run=run, supports_batch=supports_batch, parallel=executions)
