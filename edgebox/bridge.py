"""The bridge between the trio program and the asyncio loop that hosts grpclib.

grpclib is asyncio-only, so it runs on its own uvloop in one thread that a trio task owns. Calls cross the
boundary as `call_in_trio` (an asyncio coroutine awaits a trio function), `call_sync_in_trio` (the same for a
quick synchronous function, run without a trio task) and `call_in_asyncio` (a trio task awaits an asyncio
coroutine). Cancellation crosses both ways. Nothing else here knows about gRPC.

Each crossing wakes the other thread, and on one core a wake-up is a context switch and a GIL hand-off: the
costliest part of a small call (docs/benchmarks.md, gRPC). So crossings are coalesced: calls and results that
queue up while a wake-up is pending ride on it (`_Mailbox`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from edgebox.errors import ShuttingDown
from edgebox.os_thread_name import set_os_thread_name

log = logging.getLogger("edgebox.bridge")

T = TypeVar("T")
LOOP_STOP_TIMEOUT_S = 5.0
GRPC_THREAD_NAME = "edgebox-grpc"  # the kernel's name for the loop thread (top -H, perf, bench/grpc_calls.py)


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # uvloop is a speed-up, not a requirement (it has no Windows build)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class _TrioCall:
    """One asyncio->trio call: lets the asyncio side cancel the trio task it started."""

    __slots__ = ("cancelled", "scope")

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None
        self.cancelled = False

    def cancel(self) -> None:  # runs in the trio thread
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()


class _Mailbox:
    """Callbacks for another thread, delivered in order; one wake-up carries every callback queued before it runs.

    `wake(drain)` schedules `drain` in the other thread (trio's `run_sync_soon`, asyncio's
    `call_soon_threadsafe`); it is called only when no drain is pending. Callbacks must not raise.
    """

    __slots__ = ("_items", "_lock", "_pending", "_wake")

    def __init__(self, wake: Callable[[Callable[[], None]], object]) -> None:
        self._items: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._pending = False
        self._wake = wake

    def post(self, callback: Callable[[], None]) -> None:
        """Queue callback; raises what `wake` raises (the other side is gone), dropping what was queued."""
        with self._lock:
            self._items.append(callback)
            if self._pending:
                return
            self._pending = True
        try:
            self._wake(self._drain)
        except BaseException:
            with self._lock:
                self._pending = False
                self._items.clear()
            raise

    def _drain(self) -> None:  # in the other thread
        with self._lock:
            items, self._items = self._items, collections.deque()
            self._pending = False
        for callback in items:
            try:
                callback()
            except Exception:  # a bug; raising here would kill the trio run or the loop's callback
                log.exception("bridge callback failed")


class Bridge:
    """Handle on a running asyncio loop thread and the trio nursery that runs calls coming from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, nursery: trio.Nursery) -> None:
        self.loop = loop
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()
        self._to_trio = _Mailbox(self._token.run_sync_soon)
        self._to_asyncio = _Mailbox(loop.call_soon_threadsafe)
        # Set (in trio) just before the loop is told to stop: later calls into asyncio would never run.
        self.loop_stopping = False

    # -- asyncio -> trio -------------------------------------------------------------------------------
    def _post_to_trio(self, callback: Callable[[], None]) -> None:
        try:
            self._to_trio.post(callback)
        except trio.RunFinishedError:
            raise ShuttingDown("the engine has stopped") from None

    def _reply(self, fut: asyncio.Future[outcome.Outcome], result: outcome.Outcome) -> None:
        """Hand result to the awaiting asyncio future (from the trio thread)."""

        def deliver() -> None:
            if not fut.done():
                fut.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: the caller is gone with it
            self._to_asyncio.post(deliver)

    async def call_in_trio(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Await `fn(*args)` run as a trio task; called from the asyncio thread."""
        fut: asyncio.Future[outcome.Outcome] = self.loop.create_future()
        call = _TrioCall()

        async def run() -> None:
            with trio.CancelScope() as scope:
                call.scope = scope
                if call.cancelled:
                    scope.cancel()
                result = await outcome.acapture(fn, *args)
            if isinstance(result, outcome.Error) and isinstance(result.error, trio.Cancelled):
                result = outcome.Error(ShuttingDown("the engine is stopping; retry after it restarts"))
            self._reply(fut, result)

        def start() -> None:  # runs in the trio thread
            try:
                self._nursery.start_soon(run)
            except RuntimeError:
                self._reply(fut, outcome.Error(ShuttingDown("the engine is stopping")))

        self._post_to_trio(start)
        try:
            result = await fut
        except asyncio.CancelledError:
            with contextlib.suppress(ShuttingDown):
                self._post_to_trio(call.cancel)
            raise
        return result.unwrap()

    async def call_sync_in_trio(self, fn: Callable[..., T], *args: Any) -> T:
        """Await the quick synchronous `fn(*args)` run in the trio thread; called from the asyncio thread.

        No trio task is started (fn cannot be cancelled halfway and must not block): for reads such as
        ListWorkflows and GetMetrics, which cross so that only the trio thread touches domain objects.
        """
        fut: asyncio.Future[outcome.Outcome] = self.loop.create_future()
        self._post_to_trio(lambda: self._reply(fut, outcome.capture(fn, *args)))
        return (await fut).unwrap()

    def run_in_trio_soon(self, fn: Callable[[], None]) -> None:
        """Run a quick synchronous callback in the trio thread (errors are logged, never raised there)."""
        with contextlib.suppress(trio.RunFinishedError):
            self._to_trio.post(fn)

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
        set_os_thread_name(GRPC_THREAD_NAME)
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
