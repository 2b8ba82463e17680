"""Which backends can really run here, and which one a model gets.

Detection asks the driver, not the package list: onnxruntime-gpu lists CUDA even on a box with no GPU. Choosing
is a pure function of the config, the detected hardware and an optional per-workflow override.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

log = logging.getLogger("edgebox.engine.hardware")

# Preference order for "auto": the GPU paths first, then OpenVINO on CPU (measured faster than onnxruntime-cpu
# on the person model, see docs/benchmarks.md), onnxruntime-cpu last.
AUTO_ORDER = ("onnxruntime-cuda", "openvino-gpu", "openvino-npu", "openvino-cpu", "onnxruntime-cpu")


@dataclass(frozen=True)
class Hardware:
    cuda_devices: int
    openvino_devices: tuple[str, ...]
    onnxruntime_providers: tuple[str, ...]

    @property
    def gpu_available(self) -> bool:
        return self.cuda_devices > 0 or "GPU" in self.openvino_devices

    def usable_backends(self) -> list[str]:
        usable = []
        if self.cuda_devices > 0 and "CUDAExecutionProvider" in self.onnxruntime_providers:
            usable.append("onnxruntime-cuda")
        for device in ("GPU", "NPU", "CPU"):
            if device in self.openvino_devices:
                usable.append(f"openvino-{device.lower()}")
        if "CPUExecutionProvider" in self.onnxruntime_providers:
            usable.append("onnxruntime-cpu")
        return usable


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when there is no driver (it never raises)."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def detect_hardware() -> Hardware:
    providers: tuple[str, ...] = ()
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        log.warning("onnxruntime is not installed; its backends are unavailable")
    devices: tuple[str, ...] = ()
    try:
        from edgebox.engine.backends.openvino_backend import openvino_core

        devices = tuple(openvino_core().available_devices)
    except Exception as exc:  # a broken OpenVINO install must not stop the engine
        log.warning("OpenVINO is unavailable: %s", exc)
    hw = Hardware(cuda_device_count(), devices, providers)
    log.info("hardware: %d CUDA device(s), OpenVINO devices %s; usable backends: %s",
             hw.cuda_devices, list(devices) or "none", ", ".join(hw.usable_backends()) or "none")
    return hw


def backend_candidates(requested: str, hardware: Hardware) -> list[str]:
    """Backends to try in order: an explicit request gets only itself; "auto" gets every usable one."""
    if requested and requested != "auto":
        return [requested]
    usable = set(hardware.usable_backends())
    return [name for name in AUTO_ORDER if name in usable]
