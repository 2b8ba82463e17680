"""Plugin loading: each broken plugin is reported with its file and cause, and the good ones still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgebox.errors import ErrorCode, PluginLoadFailed
from edgebox.plugins_loader import builtin_plugin_dir, load_plugins

GOOD_MODULE = """
from edgebox.plugin_api import Plugin

class Good(Plugin):
    def process(self, image, state, params):
        return []
"""


def _plugin(root: Path, folder: str, manifest: dict | str, module: str = GOOD_MODULE) -> Path:
    path = root / folder
    path.mkdir()
    (path / "plugin.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    (path / "plugin.py").write_text(module)
    return path


def _manifest(name: str, **extra: object) -> dict:
    return {"name": name, "module": "plugin.py", "class": "Good", "labels": ["thing"], **extra}


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    _plugin(tmp_path, "a_good", _manifest("good"))
    _plugin(tmp_path, "bad_import", _manifest("bad_import"), "import no_such_module_anywhere\n")
    _plugin(tmp_path, "missing_model", _manifest("missing_model", model="weights.onnx"))
    _plugin(tmp_path, "bad_json", '{"name": "bad_json", "module": ')
    _plugin(tmp_path, "missing_class", _manifest("missing_class", **{"class": "NotThere"}))
    _plugin(tmp_path, "not_plugin", _manifest("not_plugin", **{"class": "Plain"}), "class Plain:\n    pass\n")
    _plugin(tmp_path, "raises_in_init", _manifest("raises_in_init"),
            GOOD_MODULE + "    def __init__(self, *a):\n        raise OSError('licence file missing')\n")
    _plugin(tmp_path, "z_duplicate", _manifest("good"))
    return tmp_path


# folder -> (file named in the message, words of the cause)
BROKEN = {
    "bad_import": ("bad_import/plugin.py", "ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
    "missing_model": ("missing_model/plugin.json", "model file"),
    "bad_json": ("bad_json/plugin.json", "unreadable manifest"),
    "missing_class": ("missing_class/plugin.py", "NotThere"),
    "not_plugin": ("not_plugin/plugin.py", "is not a subclass of edgebox.plugin_api.Plugin"),
    "raises_in_init": ("raises_in_init/plugin.py", "OSError: licence file missing"),
}


def test_good_plugins_load_beside_broken_ones(plugin_dir):
    registry = load_plugins([builtin_plugin_dir(), plugin_dir])
    assert sorted(registry.plugins) == ["face", "good", "motion", "person"]
    assert registry.plugins["good"].directory == plugin_dir / "a_good"
    assert registry.plugins["good"].labels == ("thing",)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_plugin_answers_plugin_load_failed_2001_naming_the_file_and_cause(plugin_dir, name):
    registry = load_plugins([builtin_plugin_dir(), plugin_dir])
    with pytest.raises(PluginLoadFailed) as info:
        registry.get(name)
    assert info.value.code == ErrorCode.PLUGIN_LOAD_FAILED == 2001
    file, cause = BROKEN[name]
    assert str(plugin_dir / file) in info.value.message
    assert cause in info.value.message
    assert any(name in key for key in registry.errors)


def test_missing_model_file_names_the_model_path(plugin_dir):
    registry = load_plugins([plugin_dir])
    assert str(plugin_dir / "missing_model" / "weights.onnx") in registry.errors["missing_model"]


def test_duplicate_plugin_name_is_refused_and_the_first_one_kept(plugin_dir):
    registry = load_plugins([builtin_plugin_dir(), plugin_dir])
    [reason] = [v for k, v in registry.errors.items() if k.endswith("z_duplicate")]
    assert str(plugin_dir / "z_duplicate") in reason and "'good' is already loaded" in reason
    assert registry.get("good").directory == plugin_dir / "a_good"


def test_plugin_dir_cannot_shadow_a_builtin_plugin(tmp_path):
    _plugin(tmp_path, "person", _manifest("person"))
    registry = load_plugins([builtin_plugin_dir(), tmp_path])
    assert registry.get("person").model is not None  # still the built-in one
    assert any("already loaded" in v for v in registry.errors.values())


def test_unknown_plugin_lists_the_loaded_ones(plugin_dir):
    registry = load_plugins([builtin_plugin_dir(), plugin_dir])
    with pytest.raises(PluginLoadFailed, match="no plugin named 'nope'.*face, good, motion, person"):
        registry.get("nope")


def test_missing_plugin_directory_is_reported_not_fatal(tmp_path):
    registry = load_plugins([builtin_plugin_dir(), tmp_path / "absent"])
    assert "person" in registry.plugins
    assert any("does not exist" in v for v in registry.errors.values())


@pytest.mark.parametrize(("declared", "cause"), [
    ({"name": "x", "shape": [3, 32, 32]}, "exactly name, shape and dtype"),
    ({"name": "", "shape": [3], "dtype": "uint8"}, "input.name"),
    ({"name": "x", "shape": [0, 32], "dtype": "uint8"}, "input.shape"),
    ({"name": "x", "shape": [True], "dtype": "uint8"}, "input.shape"),
    ({"name": "x", "shape": [3, 32], "dtype": "int64"}, "input.dtype must be one of uint8, float32, float16"),
])
def test_bad_model_input_declaration_is_plugin_load_failed_naming_the_manifest(tmp_path, declared, cause):
    folder = _plugin(tmp_path, "declares", _manifest("declares", model="m.onnx", input=declared))
    (folder / "m.onnx").write_bytes(b"not read at load")
    registry = load_plugins([tmp_path])
    with pytest.raises(PluginLoadFailed) as info:
        registry.get("declares")
    assert str(folder / "plugin.json") in info.value.message and cause in info.value.message


def test_declared_model_input_reaches_the_model_spec(tmp_path):
    folder = _plugin(tmp_path, "declares", _manifest("declares", model="m.onnx",
                                                     input={"name": "in", "shape": [3, 64, 64], "dtype": "float32"}))
    (folder / "m.onnx").write_bytes(b"not read at load")
    model = load_plugins([tmp_path]).get("declares").model
    assert (model.input.name, model.input.shape, model.input.dtype) == ("in", (3, 64, 64), "float32")
