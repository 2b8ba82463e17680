"""Finds and loads algorithm plugins: the built-in ones and those in --plugin_dir.

A plugin is a folder with `plugin.json` (name, module, class, optional model, labels) and a Python module. A
broken plugin is recorded with its reason (PLUGIN_LOAD_FAILED) and the others still load; nothing here runs
inference.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgebox.errors import PluginLoadFailed
from edgebox.plugin_api import ModelInput, ModelSpec, Plugin

log = logging.getLogger("edgebox.plugins")

MANIFEST = "plugin.json"
PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def builtin_plugin_dir() -> Path:
    """The folder holding the built-in plugins (the repo's plugins/, packaged as `edgebox_plugins`)."""
    spec = importlib.util.find_spec("edgebox_plugins")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the built-in plugins package edgebox_plugins is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class PluginRegistry:
    """Loaded plugins by name, and the reasons the others failed."""

    plugins: dict[str, Plugin] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Plugin:
        plugin = self.plugins.get(name)
        if plugin is not None:
            return plugin
        if name in self.errors:
            raise PluginLoadFailed(f"plugin {name!r} failed to load: {self.errors[name]}")
        known = ", ".join(sorted(self.plugins)) or "none"
        raise PluginLoadFailed(f"no plugin named {name!r} is installed (loaded plugins: {known}); "
                               "put it in --plugin_dir and restart")


def load_plugins(directories: Iterable[Path]) -> PluginRegistry:
    """Load every plugin folder in the given directories; later directories cannot shadow earlier names."""
    registry = PluginRegistry()
    for directory in directories:
        if not directory.is_dir():
            registry.errors[f"<{directory}>"] = f"plugin directory {directory} does not exist"
            log.error("plugin directory %s does not exist", directory)
            continue
        for folder in sorted(p for p in directory.iterdir() if (p / MANIFEST).is_file()):
            try:
                plugin = load_plugin(folder)
            except PluginLoadFailed as exc:
                registry.errors[folder.name] = exc.message
                log.error("%s", exc.message)
                continue
            if plugin.name in registry.plugins:
                registry.errors[f"{folder}"] = f"{folder}: a plugin named {plugin.name!r} is already loaded"
                log.error("skipping %s: duplicate plugin name %r", folder, plugin.name)
                continue
            registry.plugins[plugin.name] = plugin
            log.info("loaded plugin %s from %s", plugin.name, folder)
    return registry


def load_plugin(folder: Path) -> Plugin:
    """Load one plugin folder or raise PluginLoadFailed naming the file and the cause."""
    manifest_path = folder / MANIFEST
    manifest = _read_manifest(manifest_path)
    name = manifest["name"]
    module_path = folder / manifest["module"]
    if not module_path.is_file():
        raise PluginLoadFailed(f"{manifest_path}: module file {module_path.name!r} does not exist")
    model = None
    if manifest.get("model"):
        model_path = folder / manifest["model"]
        if not model_path.is_file():
            raise PluginLoadFailed(f"{manifest_path}: model file {model_path} does not exist")
        model = ModelSpec(model_path, batchable=bool(manifest.get("batchable", True)),
                          input=_model_input(manifest_path, manifest.get("input")))
    module_name = f"edgebox_plugin_{name}"
    try:
        spec = importlib.util.spec_from_file_location(module_name, module_path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        cls = getattr(module, manifest["class"])
    except Exception as exc:  # noqa: BLE001 - a plugin's import may fail in any way; report, never crash
        sys.modules.pop(module_name, None)
        raise PluginLoadFailed(f"{module_path}: import failed: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginLoadFailed(f"{module_path}: {manifest['class']} is not a subclass of edgebox.plugin_api.Plugin")
    try:
        plugin = cls(name, folder, manifest)
    except Exception as exc:  # noqa: BLE001 - as above, for the plugin's constructor
        raise PluginLoadFailed(f"{module_path}: {manifest['class']}() raised {type(exc).__name__}: {exc}") from None
    plugin.model = model
    plugin.labels = tuple(manifest.get("labels", plugin.labels))
    return plugin


INPUT_DTYPES = ("uint8", "float32", "float16")


def _model_input(path: Path, data: Any) -> ModelInput | None:
    """The manifest's optional "input": {"name": str, "shape": [int, ...] (one frame), "dtype": str}."""
    if data is None:
        return None
    if not isinstance(data, dict) or set(data) != {"name", "shape", "dtype"}:
        raise PluginLoadFailed(f"{path}: manifest key 'input' must be an object with exactly name, shape and dtype")
    name, shape, dtype = data["name"], data["shape"], data["dtype"]
    if not isinstance(name, str) or not name:
        raise PluginLoadFailed(f"{path}: input.name must be the model's input name")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 65536 for d in shape)):
        raise PluginLoadFailed(f"{path}: input.shape must list 1 to 8 positive sizes of one frame (no batch axis)")
    if dtype not in INPUT_DTYPES:
        raise PluginLoadFailed(f"{path}: input.dtype must be one of {', '.join(INPUT_DTYPES)}, got {dtype!r}")
    return ModelInput(name, tuple(shape), dtype)


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PluginLoadFailed(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(data, dict):
        raise PluginLoadFailed(f"{path}: the manifest must be a JSON object")
    for key in ("name", "module", "class"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise PluginLoadFailed(f"{path}: manifest key {key!r} is required and must be a string")
    if not PLUGIN_NAME.match(data["name"]):
        raise PluginLoadFailed(f"{path}: plugin name {data['name']!r} must match {PLUGIN_NAME.pattern}")
    labels = data.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise PluginLoadFailed(f"{path}: manifest key 'labels' must be a list of strings")
    if "model" in data and not isinstance(data["model"], str):
        raise PluginLoadFailed(f"{path}: manifest key 'model' must be a file name")
    return data
