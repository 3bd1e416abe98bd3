"""``store.keys``: sealing keys, their encrypted private keys, the fleet master set, usage.

The keystore is a system of record, not a cache: a retired key whose Secret is gone
from every cluster survives only here, so it is kept apart from the rebuildable
inventory.  Private keys cross this class only as :class:`SealingKey` values in
memory: they are sealed under the KEK before the write transaction and opened after
the read transaction (key_material.py), both off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog

from sealfleet.adapters.store import key_material, keys_sql
from sealfleet.adapters.store.kek import KeyEncryptionKey
from sealfleet.adapters.store.records import (
    KeyMaterial,
    KeyRecord,
    KeyUsage,
    LoadedKeys,
    QuarantinedKey,
    RejectedKey,
)
from sealfleet.errors import StoreError

if TYPE_CHECKING:
    from sealfleet.adapters.store.store import Store

log = structlog.get_logger(__name__)


class KeyRecords:
    """The keys the fleet knows, and the private halves the store holds under the KEK."""

    def __init__(self, store: Store, kek: KeyEncryptionKey | None) -> None:
        self._store = store
        self._kek = kek

    async def upsert_keys(self, records: Sequence[KeyRecord]) -> None:
        """Public facts; a key's state never silently relaxes (see keys_sql._UPSERT_KEY)."""
        if records:
            await self._store.write(keys_sql.upsert_keys, list(records))

    async def record_keys(self, records: Sequence[KeyRecord],
                          materials: Sequence[KeyMaterial]) -> tuple[RejectedKey, ...]:
        """Public facts and private keys (under the KEK) in one write: what
        :meth:`upsert_keys` then :meth:`store_key_material` do, in one transaction.

        Without a KEK the facts are still recorded before the private keys are refused.
        """
        if not materials or self._kek is None:
            await self.upsert_keys(records)
            return await self.store_key_material(materials)
        sealed, refused = await self.seal(materials)
        await self._store.write(keys_sql.upsert_keys_and_material, list(records), sealed)
        return refused

    async def store_key_material(self, materials: Sequence[KeyMaterial],
                                 ) -> tuple[RejectedKey, ...]:
        """Store private keys under the KEK; returns (and logs) those refused.

        A key whose certificate is another key's is refused, never stored under
        either fingerprint; the others in the batch are stored.
        """
        if not materials:
            return ()
        if self._kek is None:
            raise StoreError(f"{self._store.path}: cannot store private keys: "
                             "no key-encryption key configured")
        sealed, refused = await self.seal(materials)
        if sealed:
            await self._store.write(keys_sql.store_encrypted_keys, sealed)
        return refused

    async def seal(self, materials: Sequence[KeyMaterial],
                   ) -> tuple[list[key_material.EncryptedKey], tuple[RejectedKey, ...]]:
        """Encrypt private keys under the KEK (off the loop) for a write that stores them
        together with something else (a job's journal entry); refusals are logged."""
        if self._kek is None:
            raise StoreError(f"{self._store.path}: cannot store private keys: "
                             "no key-encryption key configured")
        sealed, refused = await asyncio.to_thread(key_material.seal_all, list(materials),
                                                  self._kek)
        for refusal in refused:
            log.warning("store_key_material_refused", fingerprint=refusal.fingerprint,
                        reason=refusal.reason)
        return sealed, tuple(refusal.rejected() for refusal in refused)

    async def set_key_state(self, fingerprint: str, state: str, *, actor: str,
                            reason: str | None = None) -> None:
        """Change a key's state (the only way to relax one); audited in the same transaction."""
        await self._store.write(keys_sql.set_key_state, fingerprint, state, actor=actor,
                                reason=reason)

    async def set_fleet_master(self, fingerprints: Sequence[str]) -> None:
        await self._store.write(keys_sql.set_fleet_master, list(fingerprints))

    async def purge_private_key(self, fingerprint: str, *, actor: str) -> None:
        """Delete a retired key's private half from the keystore (``keys retire --purge``)."""
        await self._store.write(keys_sql.purge_private_key, fingerprint, actor)

    async def fleet_master(self) -> list[str]:
        """The fleet master key set as last configured (it may name keys not seen yet)."""
        return await self._store.read(keys_sql.fleet_master)

    async def list_keys(self) -> list[KeyRecord]:
        return await self._store.read(keys_sql.list_keys)

    async def key_usage(self) -> dict[str, KeyUsage]:
        """fingerprint -> holding clusters, items and SealedSecrets sealed by the key."""
        return await self._store.read(keys_sql.key_usage)

    async def load_private_keys(self, only: Sequence[str] | None = None) -> LoadedKeys:
        """Every stored private key (or those of *only*) that opens and matches its row;
        the others, with reasons.  Opening one costs tens of CPU-ms (the RSA check): ask
        only for the keys not loaded yet.

        One bad row never keeps the others from loading.  No KEK while the store holds
        private keys is a StoreError: that is the configuration's fault, not a row's.
        """
        rows = await self._store.read(keys_sql.encrypted_keys,
                                      None if only is None else list(only))
        if not rows:
            return LoadedKeys()
        if self._kek is None:
            raise StoreError(f"{self._store.path}: the store holds private keys but no "
                             "key-encryption key is configured")
        return await asyncio.to_thread(key_material.open_all, rows, self._kek)

    async def record_adoption(self, cluster: str, fingerprints: Sequence[str], *,
                              job_id: str | None = None) -> None:
        """Which cluster adopted keys came from: a sync writes them back there if the
        cluster loses them (and elsewhere only once shared into the master set)."""
        if fingerprints:
            await self._store.write(keys_sql.record_adoption, cluster, list(fingerprints),
                                    job_id)

    async def adopted_keys(self) -> dict[str, list[str]]:
        """cluster -> keys adopted from it, still active in the keystore."""
        return await self._store.read(keys_sql.adopted_keys)

    async def quarantined_keys(self) -> list[QuarantinedKey]:
        """Material moved out of the keystore at open (migration 0004), oldest first."""
        return await self._store.read(keys_sql.quarantined_keys)
