"""Which backends can really run here, and which one a model gets.

Detection asks the driver, not the package list: onnxruntime-gpu lists CUDA even on a box with no GPU. Choosing
is a pure function of the config, the detected hardware and an optional per-workflow override.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import logging
import os
import platform
from dataclasses import dataclass

log = logging.getLogger("edgebox.engine.hardware")

# Preference order for "auto": the GPU paths first, then OpenVINO on CPU, onnxruntime-cpu last. On the 2-core
# AMD test box the two CPU backends give the same frames/s within noise, onnxruntime with a little less CPU per
# frame (docs/benchmarks.md#inference); OpenVINO stays first for the Intel CPUs and iGPUs that edge boxes mostly
# have (not measured here).
# onnxruntime-tensorrt is never chosen by "auto": its first start compiles engines for minutes, and whether it beats
# plain CUDA depends on the model (it is an explicit opt-in, docs/operations.md#nvidia-hosts).
AUTO_ORDER = ("onnxruntime-cuda", "openvino-gpu", "openvino-npu", "openvino-cpu", "onnxruntime-cpu")
GPU_BACKENDS = ("onnxruntime-cuda", "onnxruntime-tensorrt", "openvino-gpu")


@dataclass(frozen=True)
class CudaDriver:
    devices: int
    reason: str  # why there are none ("" when devices > 0)


@dataclass(frozen=True)
class Hardware:
    cuda_devices: int
    openvino_devices: tuple[str, ...]
    onnxruntime_providers: tuple[str, ...]
    tensorrt_installed: bool = False  # libnvinfer.so.10 loads

    @property
    def gpu_available(self) -> bool:
        """A GPU that a backend can use, not merely one that is installed."""
        return any(name in GPU_BACKENDS for name in self.usable_backends())

    def usable_backends(self) -> list[str]:
        usable = []
        if self.cuda_devices > 0 and "CUDAExecutionProvider" in self.onnxruntime_providers:
            usable.append("onnxruntime-cuda")
            if self.tensorrt_installed and "TensorrtExecutionProvider" in self.onnxruntime_providers:
                usable.append("onnxruntime-tensorrt")
        for device in ("GPU", "NPU", "CPU"):
            if has_openvino_device(self.openvino_devices, device):
                usable.append(f"openvino-{device.lower()}")
        if "CPUExecutionProvider" in self.onnxruntime_providers:
            usable.append("onnxruntime-cpu")
        return usable


def has_openvino_device(available: tuple[str, ...] | list[str], device: str) -> bool:
    """OpenVINO names the second GPU "GPU.1" (and then the first "GPU.0"); "GPU" means the first of them."""
    return any(name == device or name.startswith(device + ".") for name in available)


def cuda_driver() -> CudaDriver:
    """CUDA devices the driver reports, and why there are none; it never raises."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        status = lib.cuInit(0)
        if status != 0:
            return CudaDriver(0, f"the NVIDIA driver is installed but cuInit failed (CUresult {status}): no GPU, "
                                 "or the driver does not match the kernel module")
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return CudaDriver(0, "the NVIDIA driver reports no CUDA device")
        return CudaDriver(count.value, "")
    return CudaDriver(0, "no NVIDIA driver (libcuda.so.1 not found)")


@dataclass(frozen=True)
class GpuIdentity:
    """What a compiled GPU engine depends on besides the software versions: the device and the driver."""

    name: str  # e.g. "NVIDIA L4"
    compute_capability: str  # e.g. "8.9"
    driver_version: str  # CUDA driver API version, e.g. "13.0"


def cuda_gpu_identity(ordinal: int = 0) -> GpuIdentity | None:
    """Name, compute capability and driver version of CUDA device `ordinal`; None without a usable device."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    device, version, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    name = ctypes.create_string_buffer(256)
    if (lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(device), ordinal) != 0
            or lib.cuDeviceGetName(name, len(name), device) != 0 or lib.cuDriverGetVersion(ctypes.byref(version)) != 0
            or lib.cuDeviceGetAttribute(ctypes.byref(major), 75, device) != 0  # COMPUTE_CAPABILITY_MAJOR
            or lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, device) != 0):  # COMPUTE_CAPABILITY_MINOR
        return None
    return GpuIdentity(name.value.decode(errors="replace"), f"{major.value}.{minor.value}",
                       f"{version.value // 1000}.{version.value % 1000 // 10}")


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports; 0 when there is no driver (it never raises)."""
    return cuda_driver().devices


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@functools.cache
def cpu_name() -> str:
    """The CPU model, e.g. "AMD EPYC 7B13", for the device shown next to a CPU backend."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class LibraryProbe:
    """What the inference libraries say they can use on this box (see probe_libraries)."""

    onnxruntime_providers: tuple[str, ...]
    openvino_devices: tuple[str, ...]
    tensorrt_installed: bool
    problems: tuple[str, ...] = ()  # a library that is missing or broken, one line each


def probe_libraries() -> LibraryProbe:
    """Ask onnxruntime and OpenVINO what they can use here. This maps both libraries and every OpenVINO device
    plugin into the process (about 70 MB): the engine runs it in a child process (probe_libraries_isolated)."""
    providers: tuple[str, ...] = ()
    problems: list[str] = []
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except ImportError:
        problems.append("onnxruntime is not installed; its backends are unavailable")
    devices: tuple[str, ...] = ()
    try:
        from edgebox.engine.backends.openvino_backend import openvino_core

        devices = tuple(openvino_core().available_devices)
    except Exception as exc:  # noqa: BLE001 - a broken OpenVINO install must not stop the engine
        problems.append(f"OpenVINO is unavailable: {exc}")
    return LibraryProbe(providers, devices, _loads("libnvinfer.so.10"), tuple(problems))


PROBE_CHILD_COMMAND = "_probe-libraries"  # `edgebox _probe-libraries` runs probe_child_main (edgebox.cli)


def probe_child_main() -> int:
    """The probing child's whole work (edgebox/engine/library_probe.py): probe, print one JSON line. This module
    imports nothing heavy, so the child's time is the libraries' own."""
    print(json.dumps(dataclasses.asdict(probe_libraries())), flush=True)
    return 0


def detect_hardware(libraries: LibraryProbe | None = None) -> Hardware:
    """The hardware and the backends usable on it; `libraries` from a probe made elsewhere, else probed here."""
    if libraries is None:
        libraries = probe_libraries()
    for problem in libraries.problems:
        log.warning("%s", problem)
    driver = cuda_driver()
    hw = Hardware(driver.devices, libraries.openvino_devices, libraries.onnxruntime_providers,
                  tensorrt_installed=libraries.tensorrt_installed)
    log.info("hardware: %d CUDA device(s)%s, OpenVINO devices %s; usable backends: %s",
             hw.cuda_devices, f" ({driver.reason})" if driver.reason else "", list(hw.openvino_devices) or "none",
             ", ".join(hw.usable_backends()) or "none")
    return hw


def _loads(library: str) -> bool:
    try:
        ctypes.CDLL(library)
    except OSError:
        return False
    return True


def backend_candidates(requested: str, hardware: Hardware) -> list[str]:
    """Backends to try in order: an explicit request gets only itself; "auto" gets every usable one."""
    if requested and requested != "auto":
        return [requested]
    usable = set(hardware.usable_backends())
    return [name for name in AUTO_ORDER if name in usable]
