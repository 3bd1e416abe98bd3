"""Write-behind for one cluster: what the observers queue in the inventory (and the key
Secrets it holds) goes to the store in one transaction per flush, a fraction of a second
after the first change or once enough is pending, with the watch resourceVersions after
the data they cover in that same transaction (so a resumed watch never skips an event).
A scan's last flush carries its status row too (:func:`status.mark_scanned`).  A cluster
where nothing changes costs nothing: the writer sleeps until a change is queued (a timer
per cluster five times a second was a fleet of 1,000 clusters' largest idle cost).  A
watch position alone (a bookmark) waits up to a minute for company: it only saves
replaying a few events after a restart, and 1,000 clusters' bookmarks were hundreds of
transactions a second."""

from __future__ import annotations

import asyncio
import contextlib

from sealfleet.adapters.store.records import ClusterStatus, KeyHoldings
from sealfleet.app.cluster.state import ClusterState, Deps

FLUSH_INTERVAL = 0.2      # seconds: watch events are written in batches this often
FLUSH_SIZE = 500          # ... or as soon as this many records are pending
POSITION_INTERVAL = 60.0  # seconds a watch position alone may wait (well inside etcd's
                          # 5-minute compaction: a resume from it still finds its events)


class WriteBehind:
    def __init__(self, state: ClusterState, deps: Deps) -> None:
        self._state = state
        self._deps = deps
        self._lock = asyncio.Lock()
        self._pending_rv: dict[str, str] = {}
        self._pending_holdings: KeyHoldings | None = None   # the latest, whole
        self._dirty = asyncio.Event()      # anything to write
        self._data = asyncio.Event()       # ... and more than watch positions
        state.inventory.on_pending = self._data_queued

    def _data_queued(self) -> None:
        self._data.set()
        self._dirty.set()

    def note_resource_version(self, resource: str, resource_version: str) -> None:
        """Store *resource_version* with the next flush (after the data it covers)."""
        self._pending_rv[resource] = resource_version
        self._dirty.set()

    def note_holdings(self, holdings: KeyHoldings) -> None:
        """Replace the cluster's key holdings with *holdings* at the next flush."""
        self._pending_holdings = holdings
        self._data_queued()

    def full(self) -> bool:
        return self._state.inventory.pending_count() >= FLUSH_SIZE

    async def run(self) -> None:
        while True:
            await self._dirty.wait()
            if not self._data.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POSITION_INTERVAL):
                        await self._data.wait()
            await asyncio.sleep(FLUSH_INTERVAL)  # what else comes meanwhile joins the batch
            self._dirty.clear()
            self._data.clear()
            self._deps.on_progress()
            await self.flush()

    async def flush(self, status: ClusterStatus | None = None) -> None:
        """Write what is queued (and *status*, the cluster's row, last) in one write."""
        store, name = self._deps.store.inventory, self._state.name
        async with self._lock:
            inventory = self._state.inventory
            pending = inventory.take_pending()
            resource_versions, self._pending_rv = self._pending_rv, {}
            holdings, self._pending_holdings = self._pending_holdings, None
            try:
                await store.apply_cluster_changes(
                    name, upserts=pending.upserts, deletes=pending.deletes,
                    states=pending.states, resource_versions=resource_versions,
                    holdings=holdings, status=status)
            except BaseException:
                # Nothing is lost: what did not reach the store waits for the next flush
                # (writes are idempotent upserts), newer changes queued since first.
                inventory.requeue(pending)
                self._pending_rv = {**resource_versions, **self._pending_rv}
                if self._pending_holdings is None:
                    self._pending_holdings = holdings
                raise
            if pending.upserts or pending.deletes or pending.states or holdings:
                self._deps.on_change()
