"""HttpThread: one named thread with its own loop, started and stopped from the caller's."""

from __future__ import annotations

import asyncio
import threading

import pytest

from sealfleet.adapters.http_api.http_thread import THREAD_NAME, HttpThread, on_loop


def new_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME and t not in before]


async def test_run_executes_on_the_thread_and_exit_leaves_no_thread_or_loop() -> None:
    before = set(threading.enumerate())

    async def where() -> tuple[str, asyncio.AbstractEventLoop]:
        return threading.current_thread().name, asyncio.get_running_loop()

    async with HttpThread() as worker:
        (thread,) = new_threads(before)
        name, loop = await worker.run(where())
        assert name == THREAD_NAME
        assert loop is worker.loop
        assert loop is not asyncio.get_running_loop()
    assert not thread.is_alive()
    assert loop.is_closed()
    with pytest.raises(RuntimeError, match="not running"):
        worker.loop  # noqa: B018 - the property raises once the thread is gone


async def test_an_exception_on_the_thread_reaches_the_caller() -> None:
    async def fails() -> None:
        raise LookupError("raised on the thread")

    async with HttpThread() as worker:
        with pytest.raises(LookupError, match="raised on the thread"):
            await worker.run(fails())


async def test_cancelling_the_caller_cancels_the_remote_task() -> None:
    started = threading.Event()
    cancelled = threading.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.Event().wait()   # never set: only cancellation ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with HttpThread() as worker:
        caller = asyncio.create_task(worker.run(waits()))
        assert await asyncio.to_thread(started.wait, 10)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert await asyncio.to_thread(cancelled.wait, 10)


async def test_a_task_left_on_the_thread_is_cancelled_when_it_stops() -> None:
    """A caller still awaiting the thread when it stops gets a cancellation, not a hang."""
    started = threading.Event()

    async def waits() -> None:
        started.set()
        await asyncio.Event().wait()

    worker = HttpThread()
    await worker.start()
    caller = asyncio.create_task(worker.run(waits()))
    assert await asyncio.to_thread(started.wait, 10)
    await worker.stop()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_on_loop_awaits_directly_on_the_running_loop_or_none() -> None:
    async def here() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    running = asyncio.get_running_loop()
    assert await on_loop(None, here()) is running
    assert await on_loop(running, here()) is running
