"""The trio <-> asyncio bridge: results, exceptions and cancellation cross in both directions, and a call that
cannot run any more (the engine is stopping or stopped) fails with ShuttingDown instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from edgebox.bridge import GRPC_THREAD_NAME, Bridge, open_bridge
from edgebox.errors import ShuttingDown

WAIT_S = 30.0  # a bound against hangs on a busy machine, not a timing assertion


async def wait_thread_event(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, WAIT_S), "the asyncio side never got there"


# -- trio -> asyncio ----------------------------------------------------------------------------------------------
async def test_call_in_asyncio_returns_the_coroutine_result_from_the_loop_thread():
    async def where(x: int) -> tuple[int, str]:
        await asyncio.sleep(0)
        return x * 2, threading.current_thread().name

    async with open_bridge() as bridge:
        value, thread = await bridge.call_in_asyncio(where, 21)
    assert value == 42
    assert thread == "grpclib-asyncio"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
async def test_loop_thread_is_named_for_the_kernel():
    async def native_id() -> int:
        return threading.get_native_id()

    async with open_bridge() as bridge:
        tid = await bridge.call_in_asyncio(native_id)
        comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
    assert comm == GRPC_THREAD_NAME == "edgebox-grpc"


async def test_call_in_asyncio_raises_the_coroutine_exception_in_trio():
    async def fail() -> None:
        raise KeyError("from asyncio")

    async with open_bridge() as bridge:
        with pytest.raises(KeyError, match="from asyncio"):
            await bridge.call_in_asyncio(fail)


async def test_cancelling_call_in_asyncio_cancels_the_coroutine():
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with open_bridge() as bridge:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.call_in_asyncio, forever)
            await wait_thread_event(started)
            nursery.cancel_scope.cancel()
        await wait_thread_event(cancelled)


async def test_call_in_asyncio_after_the_bridge_closed_raises_shutting_down():
    async def never_runs() -> None:
        raise AssertionError("the loop is gone")

    async with open_bridge() as bridge:
        pass
    with trio.fail_after(WAIT_S), pytest.raises(ShuttingDown):
        await bridge.call_in_asyncio(never_runs)


# -- asyncio -> trio ----------------------------------------------------------------------------------------------
async def test_call_in_trio_returns_the_trio_result_to_asyncio():
    async def in_trio(x: int) -> tuple[int, bool]:
        await trio.lowlevel.checkpoint()
        return x + 1, trio.lowlevel.current_task() is not None

    async with open_bridge() as bridge:
        assert await bridge.call_in_asyncio(bridge.call_in_trio, in_trio, 41) == (42, True)


async def test_call_sync_in_trio_runs_the_function_in_the_trio_thread():
    trio_thread = threading.current_thread()

    def in_trio(x: int) -> tuple[int, bool]:
        return x + 1, threading.current_thread() is trio_thread

    async with open_bridge() as bridge:
        assert await bridge.call_in_asyncio(bridge.call_sync_in_trio, in_trio, 41) == (42, True)


async def test_many_calls_in_flight_each_get_their_own_result():
    """Calls that cross together share wake-ups; none may be lost or answered with another's result."""

    async def slow(x: int) -> int:
        await trio.sleep(0.001 * (x % 3))
        return -x

    async def in_asyncio() -> list[int]:
        calls = [bridge.call_sync_in_trio(lambda x=x: x * 10) if x % 2 else bridge.call_in_trio(slow, x)
                 for x in range(300)]
        return list(await asyncio.gather(*calls))

    async with open_bridge() as bridge:
        with trio.fail_after(WAIT_S):
            assert await bridge.call_in_asyncio(in_asyncio) == [x * 10 if x % 2 else -x for x in range(300)]


def _raise_from_trio() -> None:
    raise ValueError("from trio")


async def _raise_from_trio_task() -> None:
    _raise_from_trio()


@pytest.mark.parametrize("crossing", ["call_in_trio", "call_sync_in_trio"])
async def test_the_trio_side_exception_is_raised_in_asyncio(crossing: str):
    in_trio = _raise_from_trio_task if crossing == "call_in_trio" else _raise_from_trio

    async def in_asyncio() -> str:
        try:
            await getattr(bridge, crossing)(in_trio)
        except ValueError as exc:
            return f"caught {exc}"
        return "not raised"

    async with open_bridge() as bridge:
        assert await bridge.call_in_asyncio(in_asyncio) == "caught from trio"


async def test_cancelling_call_in_trio_from_asyncio_cancels_the_trio_task():
    trio_started = trio.Event()
    trio_cancelled = trio.Event()

    async def in_trio() -> None:
        trio_started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            trio_cancelled.set()
            raise

    async def in_asyncio() -> str:
        task = asyncio.ensure_future(bridge.call_in_trio(in_trio))
        while not trio_started.is_set():  # read across threads; only ever goes False -> True
            await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    async with open_bridge() as bridge:
        with trio.fail_after(WAIT_S):
            assert await bridge.call_in_asyncio(in_asyncio) == "cancelled"
            await trio_cancelled.wait()


async def test_call_in_trio_interrupted_by_shutdown_raises_shutting_down_in_asyncio():
    running = trio.Event()

    async def in_trio() -> None:
        running.set()
        await trio.sleep_forever()

    async with open_bridge() as bridge:
        async with trio.open_nursery() as outer, trio.open_nursery() as calls:
            stopping = Bridge(bridge.loop, calls)
            outcome: list[BaseException] = []

            async def caller() -> None:
                try:
                    await bridge.call_in_asyncio(stopping.call_in_trio, in_trio)
                except ShuttingDown as exc:
                    outcome.append(exc)

            outer.start_soon(caller)
            with trio.fail_after(WAIT_S):
                await running.wait()
            calls.cancel_scope.cancel()  # what the engine does to its bridge nursery when it stops
        assert len(outcome) == 1


async def test_call_in_trio_after_the_nursery_closed_raises_shutting_down():
    async def in_trio() -> None:
        raise AssertionError("must not start")

    async with open_bridge() as bridge:
        async with trio.open_nursery() as closed:
            pass
        stopped = Bridge(bridge.loop, closed)
        with trio.fail_after(WAIT_S), pytest.raises(ShuttingDown):
            await bridge.call_in_asyncio(stopped.call_in_trio, in_trio)


async def test_run_in_trio_soon_runs_the_callback_and_survives_its_error():
    calls: list[str] = []
    done = trio.Event()

    def bad() -> None:
        raise RuntimeError("callback bug")

    def good() -> None:
        calls.append("good")
        done.set()

    async def schedule() -> None:
        bridge.run_in_trio_soon(bad)
        bridge.run_in_trio_soon(good)

    async with open_bridge() as bridge:
        await bridge.call_in_asyncio(schedule)
        with trio.fail_after(WAIT_S):
            await done.wait()
    assert calls == ["good"]


async def test_closing_the_bridge_cancels_asyncio_tasks_left_running():
    cancelled = threading.Event()

    async def leftover() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def start_leftover() -> None:
        asyncio.get_running_loop().create_task(leftover())
        await asyncio.sleep(0)

    async with open_bridge() as bridge:
        await bridge.call_in_asyncio(start_leftover)
    await wait_thread_event(cancelled)
