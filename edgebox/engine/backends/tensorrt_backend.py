"""onnxruntime-gpu with the TensorRT execution provider: opt-in only, engines cached per node, warmed at load.

TensorRT compiles an engine for the model's input shapes, which takes seconds to minutes, so this loader gives it
an optimization profile from the plugin's declared input (batch 1..max_batch_size), keeps the engines in a
cache folder keyed by everything that invalidates them, and runs every batch size once before the model takes
frames. Like onnxruntime-cuda, it fails loudly (BACKEND_INIT_FAILED) instead of running on the CPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebox.engine.backends.base import LoadedModel, LoadOptions
from edgebox.engine.hardware import GpuIdentity, cuda_driver, cuda_gpu_identity
from edgebox.errors import BackendInitFailed
from edgebox.plugin_api import ModelInput, ModelSpec

log = logging.getLogger("edgebox.engine.tensorrt")

NAME = "onnxruntime-tensorrt"
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")
PROVIDER_LIBRARY = "libonnxruntime_providers_tensorrt.so"
CACHE_FOLDER = "tensorrt"  # under LoadOptions.cache_dir
# onnxruntime reads "name:1x3x384x640" and splits at the first ':' and ',' (ParseProfileShapes), so an input
# name holding either cannot be given an explicit profile; such a model gets its range from the warm-up instead.
PROFILE_NAME_FORBIDDEN = (":", ",")


@dataclass(frozen=True)
class EngineIdentity:
    """Everything a cached TensorRT engine is only valid for; any change gives a new cache folder."""

    model_sha256: str
    onnxruntime_version: str
    tensorrt_version: str
    gpu: GpuIdentity
    input: ModelInput
    max_batch_size: int
    fp16: bool

    def key(self) -> str:
        parts = (self.model_sha256, self.onnxruntime_version, self.tensorrt_version, self.gpu.name,
                 self.gpu.compute_capability, self.gpu.driver_version, self.input.name,
                 "x".join(map(str, self.input.shape)), self.input.dtype, str(self.max_batch_size),
                 "fp16" if self.fp16 else "fp32")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def engine_cache_dir(cache_dir: Path, model_path: Path, identity: EngineIdentity) -> Path:
    """<cache_dir>/tensorrt/<model file stem>-<key>: one folder per model and identity, never shared."""
    return cache_dir / CACHE_FOLDER / f"{model_path.stem}-{identity.key()}"


def profile_shapes(model_input: ModelInput, max_batch_size: int) -> dict[str, str] | None:
    """trt_profile_min/opt/max_shapes covering batch 1..max_batch_size; None if the name cannot be written."""
    if any(c in model_input.name for c in PROFILE_NAME_FORBIDDEN):
        return None
    frame = "x".join(str(d) for d in model_input.shape)
    return {"trt_profile_min_shapes": f"{model_input.name}:1x{frame}",
            "trt_profile_opt_shapes": f"{model_input.name}:{max_batch_size}x{frame}",
            "trt_profile_max_shapes": f"{model_input.name}:{max_batch_size}x{frame}"}


def provider_options(model_input: ModelInput, engine_dir: Path, options: LoadOptions) -> dict[str, str]:
    """The TensorrtExecutionProvider options: engine and timing caches in `engine_dir`, the profile, precision."""
    settings = {
        "device_id": "0",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(engine_dir),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(engine_dir),
        "trt_fp16_enable": "True" if options.tensorrt_fp16 else "False",
    }
    settings.update(profile_shapes(model_input, options.max_batch_size) or {})
    return settings


def warmup_batches(max_batch_size: int, explicit_profile: bool) -> list[int]:
    """Batch sizes to run once at load. Without an explicit profile the largest goes first and then 1, so that the
    engine onnxruntime builds from the shapes it has seen already spans every size in between."""
    sizes = list(range(1, max_batch_size + 1))
    if explicit_profile:
        return sizes
    return [max_batch_size, *(b for b in sizes if b != max_batch_size)]


def tensorrt_version() -> str | None:
    """The TensorRT library version ("10.9.0"), or None when libnvinfer.so.10 cannot be loaded."""
    try:
        lib = ctypes.CDLL(TENSORRT_LIBRARIES[0])
    except OSError:
        return None
    number = int(lib.getInferLibVersion())
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def library_problem(name: str) -> str:
    """"" if the shared library `name` (and what it links) loads, else the loader's reason."""
    try:
        ctypes.CDLL(name)
    except OSError as exc:
        return str(exc)
    return ""


def provider_library_problem() -> str:
    """Why onnxruntime's TensorRT provider library cannot load here ("" if it can): names the missing library."""
    import onnxruntime as ort

    capi = Path(ort.__file__).parent / "capi"
    if not (capi / PROVIDER_LIBRARY).is_file():
        return f"this onnxruntime build has no {PROVIDER_LIBRARY} (a CPU build, or the one-file binary, which leaves it out)"
    shared = library_problem(str(capi / "libonnxruntime_providers_shared.so"))
    return shared or library_problem(str(capi / PROVIDER_LIBRARY))


def startup_problems() -> list[str]:
    """Every reason TensorRT cannot start here, checked before a session is made (listing is not usability)."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return ["this onnxruntime build has no TensorRT provider (install onnxruntime-gpu)"]
    problems = []
    driver = cuda_driver()
    if driver.devices == 0:
        problems.append(f"no usable NVIDIA GPU: {driver.reason}")
    for library in TENSORRT_LIBRARIES:
        if reason := library_problem(library):
            problems.append(f"TensorRT 10 is not installed ({reason})")
            break
    if reason := provider_library_problem():
        problems.append(f"onnxruntime's TensorRT provider cannot load ({reason})")
    return problems


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_tensorrt(spec: ModelSpec, options: LoadOptions) -> LoadedModel:
    """Build (or load from the cache) the TensorRT engine, check it really runs on TensorRT, warm every batch size."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendInitFailed(f"{NAME}: onnxruntime is not installed: {exc}") from None
    if problems := startup_problems():
        raise BackendInitFailed(f"{NAME}: cannot start: " + "; ".join(problems))
    if spec.input is None:
        raise BackendInitFailed(f"{NAME}: {spec.path.name} has no declared input (plugin.json \"input\": name, shape, "
                                "dtype), which TensorRT needs for its optimization profile and warm-up")
    if options.cache_dir is None:
        raise BackendInitFailed(f"{NAME}: no engine cache folder was given (the node's data dir)")
    gpu, trt_version = cuda_gpu_identity(), tensorrt_version()
    if gpu is None or trt_version is None:
        raise BackendInitFailed(f"{NAME}: the GPU or TensorRT version could not be read from the driver/library")
    identity = EngineIdentity(file_sha256(spec.path), ort.__version__, trt_version, gpu, spec.input,
                              options.max_batch_size, options.tensorrt_fp16)
    engine_dir = engine_cache_dir(options.cache_dir, spec.path, identity)
    engine_dir.mkdir(parents=True, exist_ok=True)
    cached = any(engine_dir.glob("*.engine"))
    session = _session(ort, spec, provider_options(spec.input, engine_dir, options), options.threads)
    in_use = session.get_providers()
    if not in_use or in_use[0] != "TensorrtExecutionProvider":
        reason = provider_library_problem() or "see the onnxruntime error above in the log"
        raise BackendInitFailed(f"{NAME}: onnxruntime did not start TensorRT and would silently run on "
                                f"{', '.join(in_use) or 'nothing'}: {reason}")
    input_name = session.get_inputs()[0].name
    if input_name != spec.input.name:
        raise BackendInitFailed(f"{NAME}: {spec.path.name}'s input is {input_name!r}, the plugin declares "
                                f"{spec.input.name!r}")
    output_names = [o.name for o in session.get_outputs()]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(output_names, {input_name: batch})

    started = time.monotonic()
    explicit = profile_shapes(spec.input, options.max_batch_size) is not None
    for size in warmup_batches(options.max_batch_size, explicit):
        try:
            run(np.zeros((size, *spec.input.shape), dtype=spec.input.dtype))
        except Exception as exc:  # noqa: BLE001 - a failed warm-up means the engine cannot serve that batch size
            raise BackendInitFailed(f"{NAME}: warm-up at batch {size} failed: {exc}") from None
    log.info("%s: TensorRT %s engine for %s %s and warmed at batch 1..%d in %.1f s (cache %s)", NAME, trt_version,
             spec.path.name, "loaded from the cache" if cached else "built", options.max_batch_size,
             time.monotonic() - started, engine_dir)
    return LoadedModel(backend=NAME, device=f"CUDA:0 ({gpu.name}, TensorRT {trt_version})", run=run)


def _session(ort: Any, spec: ModelSpec, trt_options: dict[str, str], threads: int) -> Any:
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 3
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        session_options.intra_op_num_threads = threads
    # Nodes TensorRT does not take (e.g. the person model's Loop and NonMaxSuppression) run on CUDA, then CPU.
    providers = [("TensorrtExecutionProvider", trt_options), ("CUDAExecutionProvider", {"device_id": "0"}),
                 "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(os.fspath(spec.path), sess_options=session_options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - any failure to build is this backend's BACKEND_INIT_FAILED
        raise BackendInitFailed(f"{NAME}: cannot load {spec.path.name}: {exc}") from None
