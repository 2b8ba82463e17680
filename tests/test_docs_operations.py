"""docs/operations.md documents every config key and every command-line flag the engine accepts."""

from __future__ import annotations

import re
from pathlib import Path

from edgebox.cli import _engine_parser
from edgebox.config import Config
from tests.packaging.test_example_config import _defaults

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def _documented_keys() -> set[str]:
    section = DOC.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    keys: set[str] = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", section, re.MULTILINE):
        keys.update(re.findall(r"`([a-z0-9_.]+)`", row))
    return keys


def test_every_config_key_is_documented():
    expected = set(_defaults(Config())) | {"grpc.tls"}
    missing = sorted(expected - _documented_keys())
    assert not missing, f"docs/operations.md#configuration lacks: {missing}"


def test_every_flag_is_documented():
    text = DOC.read_text()
    flags = [a.option_strings[0] for a in _engine_parser("edgebox")._actions if a.option_strings]
    missing = [f for f in flags if f != "-h" and f not in text]
    assert not missing, f"docs/operations.md lacks the flags {missing}"
