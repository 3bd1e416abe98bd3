"""The plumbing of a Git reseal step: RSA work on threads with results in order, the
changed files written and staged while it goes on, and the seconds each phase took."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sealfleet.adapters.git import writing
from sealfleet.domain import resealing

T = TypeVar("T")
R = TypeVar("R")
_FILES_PER_TASK = 8
# Changed files are written and staged in batches of this many while the RSA work goes
# on: git's hashing and the file I/O overlap the crypto instead of following it.
_WRITE_BATCH = 200


class Clock:
    """Wall-clock seconds per phase of a step, added up (phases that overlap the RSA
    work, such as ``write`` and ``stage``, are counted on their own as well)."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds = seconds if seconds is not None else {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


class Writes:
    """Changed files written into the worktree and staged in batches while the RSA
    threads go on (one ``update-index`` at a time, in the background)."""

    def __init__(self, writer: writing.RepoWriter, workspace: writing.Workspace,
                 clock: Clock) -> None:
        self._writer, self._workspace, self._clock = writer, workspace, clock
        self._batch: list[writing.FileChange] = []
        self._staging: asyncio.Task[None] | None = None

    async def add(self, change: writing.FileChange) -> None:
        self._batch.append(change)
        if len(self._batch) >= _WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            with self._clock("write"):
                await self._writer.write_files(self._workspace, batch)
        if self._staging is not None and not self._staging.done():
            return            # staging the previous batch: this one goes with the next
        if self._staging is not None:
            await self._staging               # its error, if any
        self._staging = asyncio.create_task(self._stage(), name="reseal-git:stage")

    async def _stage(self) -> None:
        with self._clock("stage"):
            await self._writer.stage(self._workspace)

    async def finish(self) -> None:
        """Write what is left and wait for the staging under way (the commit stages
        whatever was written after it started)."""
        await self._flush()
        if self._staging is not None:
            await self._staging

    async def close(self) -> None:
        if self._staging is not None and not self._staging.done():
            self._staging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._staging


async def iter_on_threads(values: Sequence[T], work: Callable[[list[T]], list[R]],
                           ) -> AsyncGenerator[R, None]:
    """*work* over *values* in chunks on a thread pool sized to the CPUs, results in
    order as they come: every chunk is queued at once, so the threads stay busy while
    the caller handles what came back."""
    if not values:
        return
    loop = asyncio.get_running_loop()
    chunks = [list(values[i:i + _FILES_PER_TASK])
              for i in range(0, len(values), _FILES_PER_TASK)]
    pool = ThreadPoolExecutor(max_workers=min(resealing.rsa_threads(), len(chunks)),
                              thread_name_prefix="reseal-git")
    futures = [loop.run_in_executor(pool, work, chunk) for chunk in chunks]
    try:
        for future in futures:
            for result in await future:
                yield result
    finally:   # never block the loop on a cancelled step's chunks
        pool.shutdown(wait=False, cancel_futures=True)
        for future in futures:
            future.cancel()


async def on_threads(values: Sequence[T], work: Callable[[list[T]], list[R]]) -> list[R]:
    """*work* over *values* on the threads (:func:`iter_on_threads`), all results."""
    async with contextlib.aclosing(iter_on_threads(values, work)) as results:
        return [result async for result in results]
