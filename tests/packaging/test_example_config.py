"""packaging/engine.example.json lists every config key with its default, and the engine accepts it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgebox.config import Config, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "packaging" / "engine.example.json"
# Sections that cannot be spelled with their default in JSON: grpc.tls is absent by default (an object enables it).
ABSENT_BY_DEFAULT = {"grpc.tls"}


def _defaults(obj: object, prefix: str = "") -> dict[str, object]:
    """Flatten a config dataclass into {"grpc.port": 50051, ...} in its JSON spelling."""
    flat: dict[str, object] = {}
    for f in dataclasses.fields(obj):
        key = f"{prefix}{f.name}"
        value = getattr(obj, f.name)
        if key in ABSENT_BY_DEFAULT:
            continue
        if key == "provision":
            flat["provision.workflows"], flat["provision.cameras"] = [], []
        elif dataclasses.is_dataclass(value):
            flat.update(_defaults(value, f"{key}."))
        elif value is None or isinstance(value, Path):
            flat[key] = "" if value is None else str(value)
        else:
            flat[key] = value
    return flat


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_example_config_lists_every_key_with_its_default():
    example = _flatten(json.loads(EXAMPLE.read_text()))
    defaults = _defaults(Config())
    assert sorted(example) == sorted(defaults), "add new config keys to packaging/engine.example.json"
    wrong = {k: (example[k], defaults[k]) for k in defaults if example[k] != defaults[k]}
    assert not wrong, f"packaging/engine.example.json differs from the defaults (example, default): {wrong}"


def test_example_config_is_valid():
    cfg = load_config(EXAMPLE)
    assert cfg.grpc == Config().grpc
    assert cfg.engine == Config().engine
