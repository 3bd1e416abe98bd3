"""``store.inventory``: what the clusters hold, as last observed; rebuildable by rescanning.

Clusters and their scan status, SealedSecrets with per-item attribution, the key
Secrets each cluster holds, the attribution cache, watch positions and state
counts.  Losing all of it costs one full scan, nothing more, which is why it lives
apart from the keystore, the audit log and the job journal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sealfleet.adapters.store import attribution_behind, codec, inventory_reads, inventory_writes
from sealfleet.adapters.store.records import (
    ClusterRecord,
    ClusterRegistration,
    ClusterStatus,
    KeyHolding,
    KeyHoldings,
    MalformedKeySecret,
    SealedSecretRecord,
)
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import InputError

if TYPE_CHECKING:
    from sealfleet.adapters.store.store import Store


class Inventory:
    """Writes and reads of the rebuildable inventory."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # fingerprint -> key reference, for encoding rows on the caller's thread; only
        # the event loop touches it, and references never change once given.
        self._key_refs: dict[str, str] = {}
        self._behind = attribution_behind.AttributionBehind(self._write_queued_attributions)
        self._all_queued = False   # see attributions_all_queued

    def note_opened(self, *, attributions_held: bool) -> None:
        """The store was opened for this process alone, holding attributions or not."""
        self._all_queued = not attributions_held

    @property
    def attributions_all_queued(self) -> bool:
        """Every attribution stored was queued here since the store opened: it held none
        then, it was open for this process alone, and none was put directly since.

        The attributor (a process has one: the only caller of :meth:`queue_attributions`)
        remembers what it queued until its memory evicts some; until then a store read
        could only tell it what it knows.  That read was a reader's 0.4 ms per cluster in a
        first pass (63 misses), plus its thread hop, about 1.5 % of the pass.
        """
        return self._all_queued

    # ------------------------------------------------------------ clusters

    async def upsert_cluster(self, name: str, *, server: str | None = None,
                             controller_namespace: str = "kube-system",
                             controller_name: str = "sealed-secrets-controller") -> None:
        """Add or update a configured cluster (and un-remove it)."""
        await self._store.write(inventory_writes.upsert_cluster, name, server,
                                controller_namespace, controller_name)

    async def mark_cluster_removed(self, name: str) -> None:
        await self._store.write(inventory_writes.mark_cluster_removed, name)

    async def record_cluster_status(self, name: str, *, reachable: bool,
                                    last_error: str | None = None,
                                    last_scan_at: dt.datetime | None = None,
                                    scan_duration_ms: int | None = None,
                                    sealing_key: str | None = None,
                                    sealing_key_source: str | None = None,
                                    controller_error: str | None = None,
                                    controller_state: str | None = None,
                                    key_renew_seconds: int | None = None,
                                    registration: ClusterRegistration | None = None,
                                    ) -> None:
        """The outcome of a scan; None keeps what was recorded (except the errors).

        With *registration*, the cluster is added or updated (and un-removed) first,
        as by :meth:`upsert_cluster`, in the same write."""
        await self.record_status(name, ClusterStatus(
            reachable=reachable, last_error=last_error, last_scan_at=last_scan_at,
            scan_duration_ms=scan_duration_ms, sealing_key=sealing_key,
            sealing_key_source=sealing_key_source, controller_error=controller_error,
            controller_state=controller_state, key_renew_seconds=key_renew_seconds,
            registration=registration))

    async def record_status(self, name: str, status: ClusterStatus) -> None:
        """:meth:`record_cluster_status` with the row as one value (the cluster
        workers', which also hand it to :meth:`apply_cluster_changes`)."""
        await self._store.write(inventory_writes.record_cluster_status, name,
                                **inventory_writes.status_fields(status))

    async def list_clusters(self) -> list[ClusterRecord]:
        """Every cluster ever recorded, removed ones included, by name."""
        return await self._store.read(inventory_reads.list_clusters)

    async def replace_cluster_keys(self, cluster: str, holdings: Sequence[KeyHolding],
                                   malformed: Sequence[MalformedKeySecret] = ()) -> None:
        """The key Secrets the cluster holds now, and those that are not keys (replaces
        the previous observation)."""
        await self._store.write(inventory_writes.replace_cluster_keys, cluster, list(holdings),
                                list(malformed))

    async def key_holdings_by_cluster(self) -> dict[str, list[KeyHolding]]:
        return await self._store.read(inventory_reads.key_holdings_by_cluster)

    async def malformed_key_secrets_by_cluster(self) -> dict[str, list[MalformedKeySecret]]:
        return await self._store.read(inventory_reads.malformed_key_secrets_by_cluster)

    async def cluster_key_holdings(self, cluster: str) -> list[KeyHolding]:
        return await self._store.read(inventory_reads.cluster_key_holdings, cluster)

    # ------------------------------------------------------------ sealed secrets

    async def upsert_sealed_secrets(self, records: Sequence[SealedSecretRecord]) -> None:
        """Insert or update by (cluster, namespace, name), in one transaction.

        The rows are encoded here, on the caller's thread (about 2.5 us per record),
        so that the writer thread spends its time inside SQLite, which releases the
        GIL: with several cluster workers writing, encoding the next batch overlaps
        with writing this one instead of queueing behind it.
        """
        if not records:
            return
        rows, unencoded = self._encoded(records)
        self._key_refs.update(await self._store.write(
            inventory_writes.upsert_encoded, {r.cluster for r in records}, rows, unencoded))

    def _encoded(self, records: Sequence[SealedSecretRecord],
                 ) -> tuple[list[tuple[Any, ...]], list[SealedSecretRecord]]:
        """(rows, []) encoded here, or ([], records) when one names a key no row has
        named before (a first pass: each cluster's own keys): those are encoded in the
        write, which gives the key its reference in the same transaction."""
        try:
            return codec.sealed_secret_rows(records, self._key_refs), []
        except KeyError:
            return [], list(records)

    async def apply_cluster_changes(self, cluster: str, *,
                                    upserts: Sequence[SealedSecretRecord] = (),
                                    deletes: Sequence[tuple[str, str]] = (),
                                    states: Sequence[tuple[str, str, SecretState]] = (),
                                    resource_versions: Mapping[str, str] | None = None,
                                    holdings: KeyHoldings | None = None,
                                    status: ClusterStatus | None = None) -> None:
        """One cluster's queued changes in one transaction (a write-behind flush): its
        SealedSecrets upserted, deleted by (namespace, name) and re-stated, then its
        watch positions, so that a stored position never runs ahead of the data it
        covers, and a flush is one write, not four or five.  With *status*, the
        cluster's status row last (the end of a scan: the row says "scanned" only once
        what the scan found is in).  With *holdings*, the cluster's key holdings are
        replaced too, as by :meth:`replace_cluster_keys`."""
        positions = dict(resource_versions or {})
        if not (upserts or deletes or states or positions or holdings or status):
            return
        if any(record.cluster != cluster for record in upserts):
            raise InputError(f"changes of cluster {cluster!r} upsert another's SealedSecret")
        rows, unencoded = self._encoded(upserts)
        self._key_refs.update(await self._store.write(
            inventory_writes.apply_cluster_changes, cluster, rows, list(deletes),
            list(states), positions, unencoded, holdings, status))

    async def delete_sealed_secrets(self, cluster: str,
                                    refs: Sequence[tuple[str, str]]) -> None:
        """Delete by (namespace, name); unknown refs are ignored."""
        if refs:
            await self._store.write(inventory_writes.delete_sealed_secrets, cluster, list(refs))

    async def delete_sealed_secrets_not_seen_since(self, cluster: str,
                                                   since: dt.datetime) -> int:
        """Delete the cluster's rows whose last_seen is before *since*; return how many."""
        return await self._store.write(inventory_writes.delete_sealed_secrets_not_seen_since,
                                       cluster, since)

    async def update_states(self, cluster: str,
                            states: Sequence[tuple[str, str, SecretState]]) -> None:
        """(namespace, name, state) per SealedSecret whose state alone changed."""
        if states:
            await self._store.write(inventory_writes.update_states, cluster, list(states))

    async def list_sealed_secrets(self, cluster: str | None = None,
                                  namespace: str | None = None,
                                  state: SecretState | str | None = None, limit: int = 100,
                                  cursor: str | None = None,
                                  ) -> tuple[list[SealedSecretRecord], str | None]:
        """One keyset page in (cluster, namespace, name) order and the next page's cursor
        (None on the last page).  A malformed cursor or state is an InputError."""
        if state is not None:
            try:
                state = SecretState(state)
            except ValueError:
                raise InputError(f"unknown state {state!r}") from None
        return await self._store.read(inventory_reads.list_sealed_secrets, cluster=cluster,
                                      namespace=namespace, state=state, limit=limit,
                                      cursor=cursor)

    async def sealed_secrets_of_cluster(self, cluster: str) -> list[SealedSecretRecord]:
        return await self._store.read(inventory_reads.sealed_secrets_of_cluster, cluster)

    async def sealed_secrets_using_key(self, fingerprint: str, *, cluster: str | None = None,
                                       ) -> list[tuple[str, str, str]]:
        """(cluster, namespace, name) of the SealedSecrets with an item sealed by the key."""
        return await self._store.read(inventory_reads.sealed_secrets_using_key, fingerprint,
                                      cluster=cluster)

    async def records_sealed_with(self, fingerprint: str) -> list[SealedSecretRecord]:
        """Every SealedSecret with an item sealed by the key, whole (items included)."""
        return await self._store.read(inventory_reads.records_sealed_with, fingerprint)

    async def state_counts(self) -> dict[str, dict[SecretState, int]]:
        """cluster -> state -> how many SealedSecrets (states with none left out)."""
        return await self._store.read(inventory_reads.state_counts)

    # ------------------------------------------------------------ caches

    async def put_attributions(self, attributions: Sequence[tuple[str, str | None]], *,
                               known_keys_epoch: int) -> None:
        """(item hash, fingerprint or None = no known key opens it) per item."""
        if attributions:
            self._all_queued = False
            await self._store.write(inventory_writes.put_attributions, list(attributions),
                                    known_keys_epoch)

    def queue_attributions(self, attributions: Sequence[tuple[str, str | None]], *,
                           known_keys_epoch: int) -> None:
        """As :meth:`put_attributions`, written a moment later with others' (see
        :mod:`.attribution_behind`); :meth:`get_attributions` sees them at once."""
        self._behind.queue(attributions, known_keys_epoch)

    async def flush_attributions(self) -> None:
        """Write the queued attributions now (the store does when it closes)."""
        await self._behind.flush()

    async def _write_queued_attributions(self, pending: attribution_behind.Pending) -> None:
        await self._store.write(inventory_writes.put_attribution_rows, [
            (item_hash, fingerprint, epoch)
            for item_hash, (fingerprint, epoch) in pending.items()])

    async def get_attributions(self, item_hashes: Sequence[str], *,
                               known_keys_epoch: int | None = None) -> dict[str, str | None]:
        """Cached attributions (queued ones included).  With *known_keys_epoch*, cached
        "unknown" (None) answers from another epoch are left out, so the caller retries
        them with the new keys."""
        if not item_hashes:
            return {}
        stored = await self._store.read(inventory_reads.get_attributions, list(item_hashes),
                                        known_keys_epoch)
        return self._behind.overlay(stored, item_hashes, known_keys_epoch)

    async def prune_attributions(self, *, older_than: dt.datetime) -> int:
        """Drop cache entries older than *older_than* that no stored item refers to.

        Holds the write lock for about a second per 100k SealedSecrets: run it rarely
        (e.g. daily), not on the scan path."""
        return await self._store.write(inventory_writes.prune_attributions, older_than)

    async def set_watch_resource_version(self, cluster: str, resource: str,
                                         rv: str | None) -> None:
        """Where the watch stands (None forgets it, forcing a relist next time)."""
        await self._store.write(inventory_writes.set_watch_resource_version, cluster,
                                resource, rv)

    async def get_watch_resource_version(self, cluster: str, resource: str) -> str | None:
        return await self._store.read(inventory_reads.get_watch_resource_version, cluster,
                                      resource)
