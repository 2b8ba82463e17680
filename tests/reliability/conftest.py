"""Reliability suite: the --run-slow switch, the asyncio client thread, and the figures the tests measure.

Long runs (the soak) are marked `slow` and skipped unless `--run-slow` is given (or EDGEBOX_RUN_SLOW=1 is set,
which also works when pytest was started from a folder where this conftest is not an initial one). Every test
records what it measured with `figures.add(...)`; the figures are printed in a section at the end of the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.reliability.helpers import Figures
from tests.support.engine import aio  # noqa: F401 - the session's asyncio thread for grpclib clients

HERE = Path(__file__).resolve().parent
FIGURES_KEY = pytest.StashKey[list[tuple[str, str]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption("--run-slow", action="store_true", default=False,
                         help="also run long reliability tests (the soak); off by default")
    except ValueError:  # registered by another conftest already
        pass


def run_slow(config: pytest.Config) -> bool:
    return bool(config.getoption("--run-slow", default=False)) or os.environ.get("EDGEBOX_RUN_SLOW") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if run_slow(config):
        return
    skip = pytest.mark.skip(reason="long run: pass --run-slow (or set EDGEBOX_RUN_SLOW=1)")
    for item in items:
        if "slow" in item.keywords and HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.config.stash.setdefault(FIGURES_KEY, []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(FIGURES_KEY, [])
    if not rows:
        return
    terminalreporter.section("reliability figures")
    width = max(len(what) for what, _ in rows)
    for what, value in rows:
        terminalreporter.write_line(f"{what.ljust(width)}  {value}")
