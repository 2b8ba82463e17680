"""PyInstaller hook for OpenVINO (it has no contrib hook).

OpenVINO loads its device plugins and model frontends by file name at run time, so nothing imports them and
PyInstaller cannot see them: collect the shared libraries explicitly, versioned names (`*.so.2641`) included.
Left out: the frontends edgebox never reads (it reads ONNX only), and OpenVINO's Python model-conversion tools.
"""

from pathlib import Path

from PyInstaller.utils.hooks import collect_dynamic_libs, get_package_paths

# Frontends for formats edgebox never loads (~13 MB); the ONNX and IR frontends stay.
UNUSED_FRONTENDS = ("tensorflow", "tensorflow_lite", "pytorch", "paddle", "jax", "gguf")
# The C API library: the Python binding links libopenvino.so directly.
UNUSED_LIBS = ("libopenvino_c.so",)


def _wanted(src: str) -> bool:
    name = Path(src).name
    if any(name.startswith(f"libopenvino_{fe}_frontend.so") for fe in UNUSED_FRONTENDS):
        return False
    return not any(name.startswith(lib) for lib in UNUSED_LIBS)


binaries = [(src, dest) for src, dest in collect_dynamic_libs("openvino", search_patterns=["lib*.so", "lib*.so.*"])
            if _wanted(src)]

# The GPU plugin's kernel tuning cache; without it the Intel GPU path still works but picks kernels less well.
_pkg_dir = Path(get_package_paths("openvino")[1])
datas = [(str(p), "openvino/libs") for p in (_pkg_dir / "libs").glob("cache.json")]

# Model conversion (ovc, benchmark_app) and the Python side of the unused frontends: `import openvino` tries
# `openvino.tools.ovc` inside try/except ImportError, so leaving it out is safe and saves ~50 ms of start.
excludedimports = [
    "openvino.tools",
    "openvino.torch",
    "openvino.frontend.pytorch",
    "openvino.frontend.tensorflow",
    "openvino.frontend.paddle",
    "openvino.frontend.jax",
]
