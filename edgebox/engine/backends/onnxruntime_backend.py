"""onnxruntime sessions on CUDA (onnxruntime-gpu) or CPU, with a loud, checked fallback."""

from __future__ import annotations

import logging

import numpy as np

from edgebox.engine.backends.base import LoadedModel
from edgebox.errors import BackendInitFailed
from edgebox.plugin_api import ModelSpec

log = logging.getLogger("edgebox.engine.onnxruntime")


def load_onnxruntime(spec: ModelSpec, threads: int, *, cuda: bool) -> LoadedModel:
    """Create a session; with cuda=True, fail (BACKEND_INIT_FAILED) unless CUDA is really the provider in use."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendInitFailed(f"onnxruntime is not installed: {exc}") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CUDA probe's missing-library errors are reported by us, once
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    name = "onnxruntime-cuda" if cuda else "onnxruntime-cpu"
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendInitFailed("onnxruntime-cuda: this onnxruntime build has no CUDA provider "
                                "(install onnxruntime-gpu)")
    try:
        session = ort.InferenceSession(str(spec.path), sess_options=options, providers=providers)
    except Exception as exc:
        raise BackendInitFailed(f"{name}: cannot load {spec.path.name}: {exc}") from None
    in_use = session.get_providers()
    if cuda and in_use[0] != "CUDAExecutionProvider":
        raise BackendInitFailed(
            "onnxruntime-cuda: the CUDA provider is installed but not usable here (no NVIDIA driver, or CUDA 12/"
            "cuDNN 9 libraries missing: see docs/operations.md#nvidia-hosts); onnxruntime would run on CPU")
    input_meta = session.get_inputs()[0]
    input_name = input_meta.name
    output_names = [o.name for o in session.get_outputs()]
    batch_dim = input_meta.shape[0] if input_meta.shape else 1
    supports_batch = not isinstance(batch_dim, int) or batch_dim != 1

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(output_names, {input_name: batch})

    device = "CUDA:0" if cuda else "CPU"
    return LoadedModel(backend=name, device=device, run=run, supports_batch=supports_batch)
