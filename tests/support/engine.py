"""Run the engine for tests (in-process in a trio nursery, or as a real subprocess) and call it from trio tests.

`running_engine` runs `edgebox.app.run_engine` inside the test's trio run and yields its endpoints and node;
cancelling the nursery stops it. `EngineProcess` runs `python -m edgebox` and waits for its READY line. The
client (`edgebox.client`, grpclib) is asyncio-only: `AsyncioThread` hosts an asyncio loop in a thread and
`TrioClient` awaits the client's methods there from trio. Nothing here fakes any part of the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import cv2
import numpy as np
import pytest
import trio

from edgebox.app import Endpoints, run_engine
from edgebox.client import EdgeboxClient, EdgeboxClientError
from edgebox.config import Config, parse_config
from edgebox.node import Node

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
PERSON_MODEL = REPO / "plugins" / "person" / "ssdlite_person.onnx"

# Generous: the suite must pass on two busy cores. They are limits against hangs, never timing assertions.
STARTUP_TIMEOUT_S = 90.0
CALL_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 60.0


# -- photos ---------------------------------------------------------------------------------------------------
@functools.cache
def photo_png(name: str) -> bytes:
    """tests/data/<name>.png as bytes (astronaut, camera: a person; chelsea, coffee: none)."""
    return (DATA / f"{name}.png").read_bytes()


@functools.cache
def photo_bgr(name: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(photo_png(name), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, name
    image.setflags(write=False)  # shared by every test through the cache
    return image


@functools.cache
def photo_jpeg(name: str) -> bytes:
    ok, buf = cv2.imencode(".jpg", photo_bgr(name), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def unique_id(prefix: str) -> str:
    """An id no other test uses, so tests sharing one engine do not see each other's cameras and workflows."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- configs --------------------------------------------------------------------------------------------------
def engine_config_data(data_dir: Path, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A config document for tests: ephemeral gRPC port, console off, state in data_dir, then `overrides`.

    Camera admission is off: it measures this machine's speed, and on a busy CI core it would refuse the cameras
    these tests add (tests/test_admission.py covers it).
    """
    data: dict[str, Any] = {"data_dir": str(data_dir), "grpc": {"port": 0}, "console": {"enabled": False},
                            "engine": {"admission_max_load": 0}}
    return _merge(data, overrides or {})


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def engine_config(data_dir: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    return parse_config(engine_config_data(data_dir, overrides), data_dir.parent)


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


# -- plugins in --plugin_dir ----------------------------------------------------------------------------------
def write_plugin(plugin_dir: Path, name: str, source: str, *, model: Path | None = None) -> Path:
    """A plugin folder `plugin_dir/name` whose module is `source` and whose class is `TestPlugin`."""
    folder = plugin_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"name": name, "module": "plugin.py", "class": "TestPlugin", "labels": ["person"]}
    if model is not None:
        manifest["model"] = str(model)  # an absolute path: the folder shares the built-in model file
    (folder / "plugin.json").write_text(json.dumps(manifest), encoding="utf-8")
    (folder / "plugin.py").write_text(source, encoding="utf-8")
    return folder


BROKEN_PLUGIN_SOURCE = 'raise RuntimeError("this plugin is broken on purpose")\n'

# Runs the person model like the built-in plugin, then fails in postprocess: a plugin bug at inference time.
CRASHING_PLUGIN_SOURCE = '''
import cv2
from edgebox.plugin_api import Plugin, letterbox


class TestPlugin(Plugin):
    def preprocess(self, image, params):
        canvas, *_ = letterbox(image, (300, 300))
        return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB), None

    def postprocess(self, outputs, context, params):
        raise ZeroDivisionError("postprocess bug on purpose")
'''


def write_test_plugins(plugin_dir: Path) -> Path:
    """--plugin_dir with `broken` (fails at import) and `crashing` (raises in postprocess)."""
    write_plugin(plugin_dir, "broken", BROKEN_PLUGIN_SOURCE)
    write_plugin(plugin_dir, "crashing", CRASHING_PLUGIN_SOURCE, model=PERSON_MODEL)
    return plugin_dir


# -- in-process engine ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InProcessEngine:
    config: Config
    endpoints: Endpoints

    @property
    def host(self) -> str:
        return self.endpoints.grpc.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.endpoints.grpc.rsplit(":", 1)[1])

    @property
    def node(self) -> Node:
        assert self.endpoints.node is not None
        return self.endpoints.node


@contextlib.asynccontextmanager
async def running_engine(config: Config) -> AsyncIterator[InProcessEngine]:
    """Run the engine in this trio run until the block ends (then its nursery is cancelled)."""
    ready: list[Endpoints] = []
    started = trio.Event()

    def on_ready(endpoints: Endpoints) -> None:
        ready.append(endpoints)
        started.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_engine, config, on_ready)
        with trio.fail_after(STARTUP_TIMEOUT_S):
            await started.wait()
        yield InProcessEngine(config, ready[0])
        nursery.cancel_scope.cancel()


# -- engine subprocess ----------------------------------------------------------------------------------------
class EngineProcess:
    """`python -m edgebox --config FILE --grpc_port 0 ...` as a child process; `start()` waits for READY."""

    def __init__(self, config_path: Path, *args: str, log_path: Path | None = None) -> None:
        self.config_path = config_path
        self.args = list(args)
        self.log_path = log_path or config_path.with_suffix(".log")
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""
        self.startup_s = 0.0
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "edgebox", "--config", str(self.config_path), "--grpc_port", "0", *self.args]

    def start(self) -> Self:
        started = time.monotonic()
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, text=True,
                                         cwd=self.config_path.parent, env=_child_env())
        threading.Thread(target=self._read_stdout, name="engine-stdout", daemon=True).start()
        deadline = started + STARTUP_TIMEOUT_S
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                raise AssertionError(f"no READY line within {STARTUP_TIMEOUT_S:g} s\n{self.log()}") from None
            if line is None:
                code = self.proc.wait(EXIT_TIMEOUT_S)
                raise AssertionError(f"the engine exited with {code} before READY\n{self.log()}")
            if line.startswith("EDGEBOX READY "):
                self.ready_line = line.strip()
                self.startup_s = time.monotonic() - started
                return self

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    @property
    def grpc_address(self) -> str:
        fields = dict(part.split("=", 1) for part in self.ready_line.split()[2:])
        return fields["grpc"]

    @property
    def host(self) -> str:
        return self.grpc_address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.grpc_address.rsplit(":", 1)[1])

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    async def wait_async(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        return await trio.to_thread.run_sync(self.wait, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT_S)

    def stop(self) -> int:
        """SIGTERM and wait for the exit code (SIGKILL if it does not stop in time)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.send_signal(signal.SIGTERM)
        try:
            return self.wait()
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the engine did not stop within {EXIT_TIMEOUT_S:g} s of SIGTERM\n{self.log()}")

    def log(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no engine log)"
        return "---- engine log (tail) ----\n" + text[-6000:]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_engine_process(folder: Path, overrides: Mapping[str, Any] | None = None, *args: str) -> EngineProcess:
    """Write a test config in `folder` (state in folder/data) and start the engine on it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder / "engine.json", engine_config_data(folder / "data", overrides))
    return EngineProcess(config, *args).start()


# -- the asyncio client, awaited from trio --------------------------------------------------------------------
class AsyncioThread:
    """An asyncio loop running in a daemon thread, for the grpclib client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="test-asyncio", daemon=True)
        self._thread.start()
        ready.wait()

    def _main(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(ready.set)
        self.loop.run_forever()

    def submit(self, coro_fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        async def run() -> Any:
            return await coro_fn(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop)

    def run_blocking(self, coro_fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        return self.submit(coro_fn, *args).result(timeout)

    async def run(self, coro_fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Await `coro_fn(*args, **kwargs)` on the loop from trio; cancelling the trio side cancels it there."""
        future = self.submit(coro_fn, *args, **kwargs)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        return future.result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


class TrioStream:
    """A server stream of the client (an asyncio async generator), read from trio."""

    def __init__(self, aio: AsyncioThread, agen: Any) -> None:
        self._aio = aio
        self._agen = agen

    def __aiter__(self) -> TrioStream:
        return self

    async def __anext__(self) -> Any:
        async def step() -> Any:
            return await self._agen.__anext__()

        return await self._aio.run(step)

    async def next(self, timeout: float = CALL_TIMEOUT_S) -> Any:
        with trio.fail_after(timeout):
            return await self.__anext__()

    async def aclose(self) -> None:
        await self._aio.run(self._agen.aclose)


class TrioClient:
    """`EdgeboxClient`'s coroutine methods, awaitable from trio: `await client.health()`."""

    def __init__(self, aio: AsyncioThread, host: str, port: int, *, timeout: float = CALL_TIMEOUT_S) -> None:
        self.aio = aio
        self.host = host
        self.port = port

        async def make() -> EdgeboxClient:  # grpclib binds the channel to the loop that creates it
            return EdgeboxClient(host, port, timeout=timeout)

        self.client: EdgeboxClient = aio.run_blocking(make)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.aio.run(method, *args, **kwargs)

        return call

    def subscribe(self, **filters: Any) -> TrioStream:
        return TrioStream(self.aio, self.client.subscribe(**filters))

    def stream_infer(self, frames: Iterable[Any]) -> TrioStream:
        return TrioStream(self.aio, self.client.stream_infer(list(frames)))

    def close(self) -> None:
        async def close() -> None:
            self.client.close()

        self.aio.run_blocking(close)


@contextlib.contextmanager
def connect(aio: AsyncioThread, host: str, port: int) -> Iterator[TrioClient]:
    client = TrioClient(aio, host, port)
    try:
        yield client
    finally:
        client.close()


async def expect_error(call: Awaitable[Any]) -> EdgeboxClientError:
    """Await a client call that must fail; returns its EdgeboxClientError."""
    try:
        value = await call
    except EdgeboxClientError as exc:
        return exc
    raise AssertionError(f"the call succeeded but an error was expected: {value!r}")


def assert_readable(exc: EdgeboxClientError) -> None:
    """The message a person reads: "[code NAME] what happened ...", one line of prose, no traceback."""
    assert exc.message.startswith(f"[{exc.code} {exc.reason}] "), exc.message
    assert "Traceback" not in exc.message and 'File "' not in exc.message, exc.message
    assert len(exc.message) > len(f"[{exc.code} {exc.reason}] ") + 10, exc.message


async def wait_until(predicate: Callable[[], Any], *, timeout: float = CALL_TIMEOUT_S, interval: float = 0.05,
                     what: str = "the condition") -> Any:
    """Poll a synchronous predicate from trio until it is truthy."""
    with trio.move_on_after(timeout):
        while not (value := predicate()):
            await trio.sleep(interval)
        return value
    raise AssertionError(f"{what} did not hold within {timeout:g} s")


# -- pytest fixtures (import them into a conftest.py or test module) ------------------------------------------
@pytest.fixture(scope="session")
def aio() -> Iterator[AsyncioThread]:
    """One asyncio loop thread for every client of the session."""
    thread = AsyncioThread()
    yield thread
    thread.close()
