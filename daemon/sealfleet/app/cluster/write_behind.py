"""Write-behind for one cluster: what the observers queue in the inventory goes to the
store in a few batched transactions, every fraction of a second or once enough is
pending, and the watch resourceVersions only after the data they cover (so a resumed
watch never skips an event)."""

from __future__ import annotations

import asyncio

from sealfleet.app.cluster.state import ClusterState, Deps

FLUSH_INTERVAL = 0.2      # seconds: watch events are written in batches this often
FLUSH_SIZE = 500          # ... or as soon as this many records are pending


class WriteBehind:
    def __init__(self, state: ClusterState, deps: Deps) -> None:
        self._state = state
        self._deps = deps
        self._lock = asyncio.Lock()
        self._pending_rv: dict[str, str] = {}

    def note_resource_version(self, resource: str, resource_version: str) -> None:
        """Store *resource_version* with the next flush (after the data it covers)."""
        self._pending_rv[resource] = resource_version

    def full(self) -> bool:
        return self._state.inventory.pending_count() >= FLUSH_SIZE

    async def run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self._deps.on_progress()
            await self.flush()

    async def flush(self) -> None:
        store, name = self._deps.store.inventory, self._state.name
        async with self._lock:
            inventory = self._state.inventory
            pending = inventory.take_pending()
            resource_versions, self._pending_rv = self._pending_rv, {}
            try:
                if pending.upserts:
                    await store.upsert_sealed_secrets(pending.upserts)
                if pending.deletes:
                    await store.delete_sealed_secrets(name, pending.deletes)
                if pending.states:
                    await store.update_states(name, pending.states)
                for resource, resource_version in resource_versions.items():
                    await store.set_watch_resource_version(name, resource, resource_version)
            except BaseException:
                # Nothing is lost: what did not reach the store waits for the next flush
                # (writes are idempotent upserts), newer changes queued since first.
                inventory.requeue(pending)
                self._pending_rv = {**resource_versions, **self._pending_rv}
                raise
            if pending.upserts or pending.deletes or pending.states:
                self._deps.on_change()
