"""Fair shares of the RSA workers: round robin between the clusters that are waiting.

A plain executor queue is first come, first served: a cluster whose users create a few
SealedSecrets of a thousand random items each would queue seconds of RSA ahead of every
other cluster's next change.  Here each owner (a cluster) has its own queue, and at most
as many jobs as there are workers (processes or threads) are started at once, each
taken from the waiting owner served least recently.  A job already started runs to the
end; one whose caller went away before its turn is dropped.

Written by hand because no executor in the standard library or a well-kept package
schedules by owner; it is a few dozen lines over whatever starts a job (a worker
process's exchange, ``run_in_executor``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

J = TypeVar("J")
T = TypeVar("T")


@dataclass
class _Job(Generic[J, T]):
    work: J
    result: asyncio.Future[T]


class FairShare(Generic[J, T]):
    """Runs ``start(job)``, at most *slots* at a time, owners served in turn."""

    def __init__(self, start: Callable[[J], Awaitable[T]], slots: int) -> None:
        self._start = start
        self._slots = max(1, slots)
        self._queues: dict[str, collections.deque[_Job[J, T]]] = {}  # owners with work waiting
        self._served: dict[str, int] = {}   # owner -> when it was last served (a counter)
        self._serial = 0
        self._running = 0

    @property
    def queued(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    async def run(self, owner: str, work: J) -> T:
        job: _Job[J, T] = _Job(work, asyncio.get_running_loop().create_future())
        self._queues.setdefault(owner, collections.deque()).append(job)
        self._dispatch()
        result: T = await job.result
        return result

    def _dispatch(self) -> None:
        while self._running < self._slots and self._queues:
            # Few owners wait at once (clusters with changes in flight): a scan is cheap.
            owner = min(self._queues, key=lambda name: self._served.get(name, -1))
            queue = self._queues[owner]
            job = queue.popleft()
            if not queue:
                del self._queues[owner]
            self._serial += 1
            self._served[owner] = self._serial
            if job.result.done():           # its caller was cancelled while it waited
                continue
            try:
                running = asyncio.ensure_future(self._start(job.work))
            except RuntimeError as error:   # an executor shut down: we are stopping
                job.result.set_exception(error)
                continue
            self._running += 1
            running.add_done_callback(functools.partial(self._finished, job))

    def _finished(self, job: _Job[J, T], done: asyncio.Future[T]) -> None:
        self._running -= 1
        if not job.result.done():
            if done.cancelled():
                job.result.cancel()
            elif (error := done.exception()) is not None:
                job.result.set_exception(error)
            else:
                job.result.set_result(done.result())
        self._dispatch()
