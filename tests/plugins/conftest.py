from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgebox.engine.backends import BACKEND_LOADERS, LoadedModel, LoadOptions
from edgebox.plugin_api import Detection
from edgebox.plugins_loader import PluginRegistry
from tests.engine.conftest import hardware, open_pool, registry  # noqa: F401  (shared fixtures)

DATA = Path(__file__).resolve().parents[1] / "data"
PHOTOS = ("astronaut", "camera", "chelsea", "coffee")


def photo(name: str) -> np.ndarray:
    """A test photo from tests/data as a BGR frame, as a camera would give it."""
    image = cv2.imread(str(DATA / f"{name}.png"), cv2.IMREAD_COLOR)
    assert image is not None, f"cannot read tests/data/{name}.png"
    return image


@pytest.fixture(scope="session")
def loaded_model(registry: PluginRegistry) -> Callable[[str, str], LoadedModel]:  # noqa: F811
    """`loaded_model(plugin, backend, openvino_precision="auto")`: the plugin's real model on a real backend,
    loaded once per session."""
    cache: dict[tuple[str, str, str], LoadedModel] = {}

    def get(plugin: str, backend: str, openvino_precision: str = "auto") -> LoadedModel:
        key = (plugin, backend, openvino_precision)
        if key not in cache:
            options = LoadOptions(openvino_precision=openvino_precision)
            cache[key] = BACKEND_LOADERS[backend](registry.get(plugin).model, options)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def detect(registry: PluginRegistry, loaded_model) -> Callable[..., list[Detection]]:  # noqa: F811
    """`detect(plugin, image, backend="onnxruntime-cpu")`: preprocess, run the real model, postprocess."""

    def run(plugin_name: str, image: np.ndarray, backend: str = "onnxruntime-cpu",
            params: dict[str, str] | None = None, openvino_precision: str = "auto") -> list[Detection]:
        plugin = registry.get(plugin_name)
        tensor, context = plugin.preprocess(image, params or {})
        outputs = loaded_model(plugin_name, backend, openvino_precision).run(tensor[np.newaxis])
        return plugin.postprocess([out[0] for out in outputs], context, params or {})

    return run
