from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from edgebox.config import EngineConfig
from edgebox.engine.hardware import Hardware, detect_hardware
from edgebox.engine.models import ModelPool
from edgebox.metrics import Metrics
from edgebox.plugins_loader import PluginRegistry, builtin_plugin_dir, load_plugins
from tests.support.engine import aio  # noqa: F401 - the session's asyncio thread for grpclib clients


@pytest.fixture(scope="session")
def registry() -> PluginRegistry:
    """The built-in plugins (person, face, motion) with their real models."""
    return load_plugins([builtin_plugin_dir()])


@pytest.fixture(scope="session")
def hardware() -> Hardware:
    return detect_hardware()


@pytest.fixture
def open_pool(hardware: Hardware) -> Callable[..., AsyncIterator[tuple[ModelPool, Metrics]]]:
    """`async with open_pool(backend="auto") as (pool, metrics)`: a real ModelPool whose queues run inside."""

    @asynccontextmanager
    async def open_(**engine: object) -> AsyncIterator[tuple[ModelPool, Metrics]]:
        metrics = Metrics()
        async with trio.open_nursery() as nursery:
            yield ModelPool(EngineConfig(**engine), hardware, metrics, nursery), metrics
            nursery.cancel_scope.cancel()

    return open_
