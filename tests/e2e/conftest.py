"""Fixtures for the end-to-end camera tests: the engine in-process (tests/e2e/engine.py) beside a real RTSP
server (tests/support). Every test here is marked `rtsp` and skips, with the install command, without one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.engine import Engine, open_engine


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.rtsp)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """A running engine. Admission control is off here (tests/test_admission.py covers it) so that a machine
    busy with other work cannot refuse the few cameras these tests add."""
    async with open_engine(tmp_path, admission_max_load=0.0) as running:
        yield running
