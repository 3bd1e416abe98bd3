"""The API's own thread: one thread, ``api-http``, running a small event loop of its own.

The daemon's main loop also runs every cluster worker: at 1,000 clusters single callbacks
of theirs (a TLS handshake, a list page parsed, an attribution) take 10-25 ms, and a
request queued behind them waited as long.  OpenSSL and socket I/O release the GIL, so
a second loop on a second thread gets to answer in the middle of such a burst.  aiohttp
runs entirely on this loop (:mod:`.server`); the handlers that read only immutable data
answer here, every other one is bridged to the main loop (:mod:`.app`'s ``guard``).

:class:`HttpThread` owns the thread and its loop: ``async with`` starts them from the
main loop and, on exit, stops the loop, joins the thread and closes the loop.
:func:`on_loop` runs a coroutine on another thread's loop and awaits it from the calling
one; cancelling the caller cancels the remote task.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

T = TypeVar("T")

THREAD_NAME = "api-http"
# The loop that started the server, where every handler not known to be thread-safe
# runs (set before runner.setup: the application freezes there).
MAIN_LOOP = web.AppKey("main_loop", asyncio.AbstractEventLoop)


async def on_loop(loop: asyncio.AbstractEventLoop | None,
                  coro: Coroutine[Any, Any, T]) -> T:
    """*coro*'s result, run on *loop*: directly when *loop* is the running loop (or None),
    else as a task of *loop*, awaited here without blocking this loop."""
    if loop is None or loop is asyncio.get_running_loop():
        return await coro
    try:
        future = asyncio.run_coroutine_threadsafe(coro, loop)
    except RuntimeError:   # that loop is closed: the coroutine will never run
        coro.close()
        raise
    # wrap_future chains both ways: a cancelled caller cancels the concurrent future,
    # whose callback cancels the task on *loop*.
    return await asyncio.wrap_future(future)


class HttpThread:
    """One named thread running its own event loop until the context exits."""

    def __init__(self, name: str = THREAD_NAME) -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(f"thread {self.name} is not running")
        return self._loop

    async def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"thread {self.name} is already running")
        loop = asyncio.new_event_loop()
        # A daemon thread: a wedged loop must not keep the process from exiting (the
        # service's hard-exit timer is the last resort of a shutdown).
        thread = threading.Thread(target=self._serve, args=(loop,), name=self.name,
                                  daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """*coro*'s result, run on this thread's loop and awaited from the calling loop."""
        return await on_loop(self.loop, coro)

    async def stop(self) -> None:
        """Stop the loop (tasks still on it are cancelled), join the thread, close the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Whatever is left (the server's cleanup ends every request first) is
            # cancelled, so a caller awaiting it through run() is not left waiting.
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except Exception:
            log.exception("api_thread_failed")
        finally:
            asyncio.set_event_loop(None)

    async def __aenter__(self) -> HttpThread:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()
