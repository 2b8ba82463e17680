"""The bridge between the trio program and the asyncio loop that hosts grpclib.

grpclib is asyncio-only, so it runs on its own uvloop in one thread that a trio task owns. Two calls cross the
boundary: `call_in_trio` (an asyncio coroutine awaits a trio function) and `call_in_asyncio` (a trio task awaits
an asyncio coroutine). Cancellation crosses both ways. Nothing else here knows about gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from edgebox.errors import ShuttingDown

log = logging.getLogger("edgebox.bridge")

T = TypeVar("T")
LOOP_STOP_TIMEOUT_S = 5.0


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is a speed-up, not a requirement (it has no Windows build)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _TrioCall:
    """One asyncio->trio call: lets the asyncio side cancel the trio task it started."""

    __slots__ = ("scope", "cancelled")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:  # runs in the trio thread
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class Bridge:
    """Handle on a running asyncio loop thread and the trio nursery that runs calls coming from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, nursery: trio.Nursery) -> None:
        self.loop = loop
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        # Set (in trio) just before the loop is told to stop: later calls into asyncio would never run.
        self.loop_stopping = False

    # -- asyncio -> trio -------------------------------------------------------------------------------
    async def call_in_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `fn(*args)` run as a trio task; called from the asyncio thread."""
        fut: asyncio.Future[outcome.Outcome] = self.loop.create_future()
        call = _TrioCall()

        def deliver(result: outcome.Outcome) -> None:
            if not fut.done():
                fut.set_result(result)

        async def run() -> None:
            with trio.CancelScope() as scope:
                call.scope = scope
                if call.cancelled:
                    scope.cancel()
                result = await outcome.acapture(fn, *args)
            if isinstance(result, outcome.Error) and isinstance(result.error, trio.Cancelled):
                result = outcome.Error(ShuttingDown("the engine is stopping; retry after it restarts"))
            try:
                self.loop.call_soon_threadsafe(deliver, result)
            except RuntimeError:  # the loop is closed: the caller is gone with it
                pass

        def start() -> None:  # runs in the trio thread; must never raise (it would kill the trio run)
            try:
                self._nursery.start_soon(run)
            except RuntimeError:
                with contextlib.suppress(RuntimeError):
                    self.loop.call_soon_threadsafe(deliver, outcome.Error(ShuttingDown("the engine is stopping")))

        try:
            self._token.run_sync_soon(start)
        except trio.RunFinishedError:
            raise ShuttingDown("the engine has stopped") from None
        try:
            result = await fut
        except asyncio.CancelledError:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(call.cancel)
            raise
        return result.unwrap()

    def run_in_trio_soon(self, fn: Callable[[], None]) -> None:
        """Run a quick synchronous callback in the trio thread (errors are logged, never raised there)."""

        def guarded() -> None:
            try:
                fn()
            except Exception:
                log.exception("bridge callback failed")

        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(guarded)

    # -- trio -> asyncio -------------------------------------------------------------------------------
    async def call_in_asyncio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await the coroutine `fn(*args)` run on the asyncio loop; called from trio."""
        if self.loop_stopping or self.loop.is_closed():
            raise ShuttingDown("the engine is stopping; its gRPC loop no longer runs calls")
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()
        cf = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)

        def wake(_: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        cf.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            cf.cancel()
            raise
        if cf.cancelled():  # not by us: the loop stopped and cancelled what was left
            raise ShuttingDown("the engine stopped before the call finished")
        return cf.result()


@contextlib.asynccontextmanager
async def open_bridge() -> AsyncIterator[Bridge]:
    """Start the asyncio loop thread; on exit stop it (time-limited) and cancel calls still running."""
    loop = _new_event_loop()
    ready = threading.Event()

    def thread_main() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            _cancel_leftover_tasks(loop)
            loop.close()

    thread = threading.Thread(target=thread_main, name="grpclib-asyncio", daemon=True)
    thread.start()
    await trio.to_thread.run_sync(ready.wait)
    bridge: Bridge | None = None
    try:
        async with trio.open_nursery() as nursery:
            bridge = Bridge(loop, nursery)
            yield bridge
            nursery.cancel_scope.cancel()
    finally:
        if bridge is not None:
            bridge.loop_stopping = True
        loop.call_soon_threadsafe(loop.stop)
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.join, LOOP_STOP_TIMEOUT_S)
        if thread.is_alive():
            log.error("the asyncio loop did not stop within %.0f s; leaving its thread behind", LOOP_STOP_TIMEOUT_S)


def _cancel_leftover_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks, timeout=LOOP_STOP_TIMEOUT_S))
