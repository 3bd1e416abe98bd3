"""The attribution cache's write-behind: answers computed by RSA reach SQLite a moment
later, many clusters' in one transaction, while reads see them at once.

Why: the cache is keyed by the items' ciphertext hashes, random keys, so each item
written lands on its own B-tree page, and one cluster's 60 items made a commit that
appended some 60 pages to the WAL.  A first pass wrote one such transaction per
cluster: measured for 1,000 clusters' 60 items each, 1.7 CPU-s one cluster per
transaction against 0.8 CPU-s ten clusters per transaction, about a third of the
writer thread's work in the pass.  The clusters' own records never wait for these rows
(the records carry each item's key themselves), so nobody needs them before the next
transaction.

What readers see is unchanged: :meth:`AttributionBehind.overlay` puts the rows not
written yet over what the store answered.  What is lost on a crash (a fraction of a
second of answers) is a cache's loss: an item changed later is attributed again.
Closing the store writes what is pending (:meth:`flush`), and a failed write keeps its
rows for the next attempt (unless newer answers for the same items came meanwhile).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog

log = structlog.get_logger(__name__)

DELAY = 0.5          # seconds an answer may wait for company before it is written
MAX_PENDING = 5000   # ... or written at once when this many are waiting

Pending = dict[str, tuple[str | None, int]]   # item hash -> (fingerprint, keys epoch)


class AttributionBehind:
    """Pending cache rows, and the task that writes them with *write* (one transaction)."""

    def __init__(self, write: Callable[[Pending], Awaitable[None]]) -> None:
        self._write = write
        self._pending: Pending = {}
        self._timer: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    def queue(self, attributions: Iterable[tuple[str, str | None]], epoch: int) -> None:
        """Write these answers soon (newer answers for an item replace older ones)."""
        for item_hash, fingerprint in attributions:
            self._pending[item_hash] = (fingerprint, epoch)
        if not self._pending:
            return
        if len(self._pending) >= MAX_PENDING:
            self._start()
        elif self._timer is None and self._flushing is None:
            self._timer = asyncio.get_running_loop().call_later(DELAY, self._start)

    def overlay(self, answers: dict[str, str | None], item_hashes: Iterable[str],
                epoch: int | None) -> dict[str, str | None]:
        """*answers* (the store's) with the pending rows over them, by the store's rule:
        an "unknown" answer counts only for the keys epoch it was computed at."""
        pending = self._pending
        if not pending:
            return answers
        for item_hash in item_hashes:
            row = pending.get(item_hash)
            if row is None:
                continue
            fingerprint, at = row
            if fingerprint is None and epoch is not None and at != epoch:
                answers.pop(item_hash, None)   # the pending row replaces the stored one
            else:
                answers[item_hash] = fingerprint
        return answers

    def _start(self) -> None:
        self._timer = None
        if self._flushing is None and self._pending:
            self._flushing = asyncio.get_running_loop().create_task(
                self._flush_in_background(), name="attribution-cache-flush")

    async def _flush_in_background(self) -> None:
        try:
            await self._flush_once()
        except Exception as error:   # the store's (StoreError), or a bug: never lost
            log.warning("attribution_cache_write_failed", error=str(error),
                        error_kind=type(error).__name__)
        finally:
            self._flushing = None
        if self._pending and self._timer is None:   # came meanwhile, or put back
            self._timer = asyncio.get_running_loop().call_later(DELAY, self._start)

    async def _flush_once(self) -> None:
        batch, self._pending = self._pending, {}
        try:
            await self._write(batch)
        except BaseException:
            # Kept for the next attempt; answers that came meanwhile are newer and win.
            self._pending = {**batch, **self._pending}
            raise

    async def flush(self) -> None:
        """Write everything pending now (the store is closing, or a caller needs it)."""
        self._cancel_timer()
        if self._flushing is not None:
            await asyncio.shield(self._flushing)   # it logs its own failure
            self._cancel_timer()   # it may have rescheduled itself
        if self._pending:
            await self._flush_once()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
