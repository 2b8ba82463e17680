"""Run the real engine for console tests: in this trio run (`open_engine`) or as a CLI subprocess (`EngineProcess`).

Both use the built-in demo config (workflow "people"; cameras demo-lobby showing a person and demo-corridor
showing nobody) with ephemeral ports and a data folder under the test's tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx
import trio

from edgebox.app import Endpoints, run_engine
from edgebox.cli import demo_config_path
from edgebox.config import ConsoleConfig, load_config, with_overrides
from edgebox.node import Node

START_TIMEOUT_S = 120.0  # model loading on a busy 2-core machine
HTTP_TIMEOUT_S = 30.0
ALARM_TIMEOUT_S = 90.0  # demo://person raises its first alarm within seconds; generous for loaded machines


@dataclass
class RunningEngine:
    endpoints: Endpoints
    node: Node
    base_url: str  # http://127.0.0.1:PORT even when the console listens on 0.0.0.0

    def client(self, **kwargs: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=HTTP_TIMEOUT_S, **kwargs)  # type: ignore[arg-type]


def loopback_url(address: str) -> str:
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


@asynccontextmanager
async def open_engine(data_dir: Path, console: ConsoleConfig | None = None,
                      without_cameras: bool = False) -> AsyncIterator[RunningEngine]:
    """The engine in this trio run, stopped by cancellation when the block ends."""
    config = with_overrides(load_config(demo_config_path()), grpc_port=0, console_port=0, data_dir=data_dir)
    if console is not None:
        config = dataclasses.replace(config, console=console)
    if without_cameras:
        config = dataclasses.replace(config, provision=dataclasses.replace(config.provision, cameras=()))
    ready = trio.Event()
    endpoints: list[Endpoints] = []

    def on_ready(e: Endpoints) -> None:
        endpoints.append(e)
        ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_engine, config, on_ready)
        with trio.fail_after(START_TIMEOUT_S):
            await ready.wait()
        e = endpoints[0]
        assert e.console is not None and e.node is not None
        yield RunningEngine(e, e.node, loopback_url(e.console))
        nursery.cancel_scope.cancel()


class EngineProcess:
    """`edgebox --config FILE --grpc_port 0 --console_port 0` as a child process (for tests that block, like
    Playwright's sync API, and so cannot share the engine's trio run)."""

    def __init__(self, tmp_path: Path, *, with_demo_cameras: bool = True) -> None:
        spec = json.loads(demo_config_path().read_text())
        if not with_demo_cameras:
            spec["provision"]["cameras"] = []
        self.config_path = tmp_path / "engine.json"
        self.config_path.write_text(json.dumps(spec))
        self.data_dir = tmp_path / "data"
        self.log_path = tmp_path / "engine.log"
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> Self:
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgebox", "--config", str(self.config_path), "--grpc_port", "0",
             "--console_port", "0", "--data_dir", str(self.data_dir)],
            stdout=subprocess.PIPE, stderr=self._log, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT_S)
        match = re.search(r"console=(\S+)", line[0]) if line else None
        if match is None:
            self.__exit__()
            raise AssertionError(f"engine did not print READY in {START_TIMEOUT_S:.0f} s; log:\n"
                                 + self.log_path.read_text()[-4000:])
        self.base_url = loopback_url(match.group(1))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
