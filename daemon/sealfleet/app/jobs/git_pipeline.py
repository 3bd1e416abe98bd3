"""The plumbing of a Git reseal step: RSA work on threads with results in order, the
changed files written, staged and checkpointed while it goes on, and the seconds each
phase took."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from sealfleet.adapters.git import writing
from sealfleet.domain import resealing
from sealfleet.domain.planning.resealing import PlannedReseal
from sealfleet.errors import FleetError

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")
_FILES_PER_TASK = 8
# Changed files are staged in batches of this many while the RSA work goes on: git's
# object writes overlap the crypto instead of following it.
_WRITE_BATCH = 200
# A checkpoint (write-tree, commit-tree, update-ref and a journal transaction) after a
# staged batch at most this often, and one at the end: a crash loses at most this many
# seconds of RSA work, and thousands of files make a handful of checkpoints.
CHECKPOINT_SECONDS = 5.0


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


Durable = Callable[[Sequence[writing.FileChange]], Awaitable[None]]
DurableEntries = Callable[[Sequence[PlannedReseal]], Awaitable[None]]


def write_batch(files: int) -> int:
    """Files per write batch for a step of *files* files: :data:`_WRITE_BATCH` for a
    large step, fewer for a small one (at least a few checkpoints per step)."""
    return max(1, min(_WRITE_BATCH, files // 8))


class Writes:
    """Changed files staged in batches while the RSA threads go on, straight from
    memory (:meth:`writing.RepoWriter.store_files`: no file written into the worktree),
    one batch at a time in the background; staged batches are then recorded as a
    checkpoint (:meth:`writing.RepoWriter.checkpoint`, at most every
    :data:`CHECKPOINT_SECONDS` and once at the end) and handed to *durable* (the step
    marks their documents done in the job's journal): a replay after a crash redoes
    only what no checkpoint holds."""

    def __init__(self, writer: writing.RepoWriter, workspace: writing.Workspace,
                 clock: Clock, *, job_id: str, batch: int, durable: Durable) -> None:
        self._writer, self._workspace, self._clock = writer, workspace, clock
        self._job_id, self._size, self._durable = job_id, batch, durable
        self._batch: list[writing.FileChange] = []
        self._staged: list[writing.FileChange] = []          # staged, not checkpointed
        self._parent = workspace.checkpoint or workspace.start
        self._last: float | None = None        # when the last checkpoint was recorded
        self._staging: asyncio.Task[None] | None = None
        self.checkpoints = 0

    async def add(self, change: writing.FileChange) -> None:
        self._batch.append(change)
        if len(self._batch) >= self._size:
            await self._flush()

    async def _flush(self) -> None:
        if self._staging is not None and not self._staging.done():
            return            # staging the previous batch: this one goes with the next
        if self._staging is not None:
            await self._staging               # its error, if any
        batch, self._batch = self._batch, []
        if batch:
            self._staging = asyncio.create_task(self._stage(batch), name="reseal-git:stage")

    async def _stage(self, batch: Sequence[writing.FileChange], *, last: bool = False,
                     ) -> None:
        if batch:
            with self._clock("stage"):
                await self._writer.store_files(self._workspace, batch)
            self._staged += batch
        if not self._staged or not (last or self._last is None
                                    or time.monotonic() - self._last >= CHECKPOINT_SECONDS):
            return
        changes, self._staged = self._staged, []
        with self._clock("checkpoint"):
            try:
                self._parent = await self._writer.checkpoint(self._workspace, self._job_id,
                                                             self._parent, changes)
            except FleetError as error:
                # Say a lock left by a killed git: the step goes on without this one
                # (the commit does not need it); the next checkpoint takes these too.
                log.warning("git_checkpoint_failed", branch=self._workspace.branch,
                            files=len(changes), error=str(error))
                self._staged = [*changes, *self._staged]
                self._last = time.monotonic()
                return
            self._last = time.monotonic()
            self.checkpoints += 1
            await self._durable(changes)

    async def finish(self) -> None:
        """Wait for the staging under way, then stage and checkpoint what is left (the
        commit holds the same; a checkpoint of everything makes a crash before the
        commit redo no RSA work)."""
        if self._staging is not None:
            await self._staging
            self._staging = None
        batch, self._batch = self._batch, []
        await self._stage(batch, last=True)

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
