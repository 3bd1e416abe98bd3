"""Group commit: the writes submitted in one turn of the event loop, and those queued
while the writer thread is busy, reach SQLite as one transaction, each write in a
savepoint of its own.

Why: a fleet's first pass made about nine small writes per cluster (its row, its key
holdings and key records, its SealedSecrets, their attributions, two watch positions,
its status; two now, see inventory.py), from many clusters at once.  As one
transaction each, every commit appended its own copy of the pages it touched to the
WAL (16 KiB pages, the same few hot ones again and again), and every write paid an
executor round trip, a thread wake-up each way; at 1,000 clusters the writer thread
spent about 5 CPU-ms per cluster.  Grouped, a hot page goes to the WAL once per group,
and one wake-up carries the whole group there and its answers back.  How much is
grouped depends on how busy the writer is: 32 clusters writing flat out share ~31
writes a transaction (``bench/store.py`` measures that against one at a time), a
daemon's first pass, whose writer idles between writes, far fewer (1.15 to 1.5).

What each caller sees is unchanged:

* its write is atomic and isolated from the others' refusals: it runs in a SAVEPOINT,
  and one that raises is rolled back to it alone, its caller getting the error;
* a failure of the transaction itself (BEGIN refused because another process held the
  lock past the busy timeout, a COMMIT that fails on a full disk) fails every write of
  the group, as it failed each of them alone before;
* a caller learns its result only after the COMMIT, so what it wrote is durable (as
  ``synchronous=NORMAL`` makes it) and visible to the readers when its await returns;
* writes run in the order they were submitted, one group after the other;
* a write whose caller was cancelled before its group began is skipped, as an executor
  job cancelled before it ran was.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

# Writes per transaction at most: enough to absorb a burst of a few dozen clusters, few
# enough that the first writer of a group does not wait long for the last.
MAX_GROUP = 64


@dataclass(frozen=True)
class _Write:
    call: Callable[[sqlite3.Connection], object]
    future: asyncio.Future[object]
    loop: asyncio.AbstractEventLoop


class WriterClosed(RuntimeError):
    """The store is closed (or closing): the write was not run."""


_Outcome = tuple[_Write, object, BaseException | None]    # the write, its result, its error


class GroupCommitter:
    """Runs writes on *executor* (the writer's single thread) over the connection that
    *connection* returns there, in groups."""

    def __init__(self, executor: Executor,
                 connection: Callable[[], sqlite3.Connection]) -> None:
        self._executor = executor
        self._connection = connection
        self._lock = threading.Lock()       # the queue is shared by the loop and the thread
        self._queue: list[_Write] = []
        self._draining = False              # a drain job is on the executor (or due)
        self._closed = False
        self._due_on: asyncio.AbstractEventLoop | None = None  # the loop a start is due on
        self.writes = 0                     # writes run, and transactions they took
        self.transactions = 0               # (bench/store.py prints the ratio)

    def submit(self, call: Callable[[sqlite3.Connection], object]) -> asyncio.Future[object]:
        """Queue *call(conn)*; its future settles after the COMMIT of its group.

        The writer thread is started at the end of the loop's current turn, not at
        once, so that the writes this turn's callbacks submit (a fleet's clusters
        finishing their steps together) share a transaction.  A write submitted once
        the store is closing fails with :class:`WriterClosed`: at once, or from its
        future when the close came within the turn.
        """
        loop = asyncio.get_running_loop()
        if self._closed:
            raise WriterClosed("the writer is shut down")
        write = _Write(call, loop.create_future(), loop)
        with self._lock:
            self._queue.append(write)
            start = not self._draining
            self._draining = True
            # A start due on another loop may never run there (that loop may be
            # stopping): this loop starts a drain of its own (drains run one after the
            # other on the single writer thread, and one finding nothing does nothing).
            elsewhere = not start and self._due_on not in (None, loop)
            if start:
                self._due_on = loop
        if start:
            loop.call_soon(self._start)
        elif elsewhere:
            self._start()
        return write.future

    def close(self) -> None:
        """No write is taken from now on (the writer thread is about to shut down)."""
        self._closed = True

    def _start(self) -> None:
        with self._lock:
            self._due_on = None
        try:
            self._executor.submit(self._drain)
        except RuntimeError:
            with self._lock:   # no drain runs: nothing else takes these writes
                failed, self._queue = self._queue, []
                self._draining = False
            for write in failed:
                if not write.future.done():
                    write.future.set_exception(WriterClosed("the writer is shut down"))

    # ------------------------------------------------------------ on the writer thread

    def _drain(self) -> None:
        while True:
            with self._lock:
                group = self._queue[:MAX_GROUP]
                del self._queue[:MAX_GROUP]
                if not group:
                    self._draining = False
                    return
            live = [write for write in group if not write.future.cancelled()]
            if live:
                _deliver(self._commit(live))

    def _commit(self, group: list[_Write]) -> list[_Outcome]:
        self.writes += len(group)
        self.transactions += 1
        outcomes: list[_Outcome] = []
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            if len(group) == 1:
                # Alone, a write needs no savepoint (its failure is the transaction's):
                # two statements fewer, and no journal of the pages it changes.  The
                # first-pass writes of 1,000 clusters one at a time took 1.39 CPU-s so,
                # 1.97 with a savepoint each (bench/store.py).
                outcomes.append((group[0], group[0].call(conn), None))
                conn.execute("COMMIT")
                return outcomes
            for write in group:
                conn.execute("SAVEPOINT write")
                try:
                    value = write.call(conn)
                except BaseException as error:  # its caller gets it, as from an executor
                    if not conn.in_transaction:
                        raise   # SQLite rolled the whole transaction back (a full disk)
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                    outcomes.append((write, None, error))
                else:
                    conn.execute("RELEASE write")
                    outcomes.append((write, value, None))
            conn.execute("COMMIT")
        except BaseException as error:
            # Also after a failed COMMIT: never leave the single writer connection
            # inside a transaction, or every later write would fail.  Nothing escapes
            # the drain, which would leave every later write waiting for good.
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return [(write, None, error) for write in group]
        return outcomes


def _deliver(outcomes: list[_Outcome]) -> None:
    """Hand the outcomes to their loops: one wake-up per loop and group."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        # A loop that is closed has nobody waiting for these any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled)


def _settle(outcomes: list[_Outcome]) -> None:
    for write, value, error in outcomes:
        if write.future.cancelled():
            continue
        if error is None:
            write.future.set_result(value)
        else:
            write.future.set_exception(error)
