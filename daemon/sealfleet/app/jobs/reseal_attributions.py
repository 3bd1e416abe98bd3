"""The attributions a reseal step records, written in group commits.

Each resealed object's new values go into the attribution cache (as sealed with the
target) *before* the object is written, so that the collect side, seeing the write in
its watch, spends no RSA on them.  One SQLite transaction per object would cost a hop
to the store's writer thread and a commit each; :class:`AttributionWriter` keeps the
"before" (every caller waits until its own rows are committed) but callers that come
while a commit is under way share the next one: with eight objects in flight per
cluster, about one transaction per eight objects or better.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from sealfleet.adapters.store import Store

Attribution = tuple[str, str | None]    # (item hash, fingerprint or None)


class AttributionWriter:
    """``store.inventory.put_attributions`` in group commits (see the module docstring)."""

    def __init__(self, store: Store, epoch: Callable[[], int]) -> None:
        self._store = store
        self._epoch = epoch
        self._batch: tuple[list[Attribution], asyncio.Future[None]] | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    async def put(self, rows: Sequence[Attribution]) -> None:
        """Once *rows* are committed (with whatever else came meanwhile)."""
        if not rows:
            return
        if self._batch is None:
            self._batch = ([], asyncio.get_running_loop().create_future())
        pending, done = self._batch
        pending.extend(rows)
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        # Shielded: a caller cancelled must not cancel the commit the others wait on.
        await asyncio.shield(done)

    async def _drain(self) -> None:
        try:
            while self._batch is not None:
                rows, done = self._batch
                self._batch = None
                try:
                    await self._store.inventory.put_attributions(
                        rows, known_keys_epoch=self._epoch())
                except asyncio.CancelledError:
                    done.cancel()
                    self._drop_pending()
                    raise
                except Exception as error:    # the store's: each waiter raises it
                    done.set_exception(error)
                    done.exception()          # retrieved here too: no "never retrieved"
                    continue
                self.commits += 1
                done.set_result(None)
        finally:
            self._task = None

    def _drop_pending(self) -> None:
        """Rows that came during a cancelled commit are not written either."""
        if self._batch is not None:
            self._batch[1].cancel()
            self._batch = None
