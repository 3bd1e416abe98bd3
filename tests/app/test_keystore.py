"""The keystore owns key state: the store first, then memory, then the subscribers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import KeyRecord
from sealfleet.app.keystore import Keystore, keys_epoch
from sealfleet.domain import key_secrets
from sealfleet.domain.keys import KEY_LABEL, KeySource, SealingKey, key_secret_manifest


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as opened:
        yield opened


async def test_a_compromised_mark_is_never_undone_by_a_concurrent_refresh(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    keystore = Keystore(store)
    await keystore.adopt(rsa2048_keys, source=KeySource.IMPORTED)
    # Enough other keys that a refresh's read of the store takes a while: a mark written
    # (and known in memory) while that read is under way is not in the read's snapshot.
    now = dt.datetime.now(dt.UTC)
    await store.keys.upsert_keys([KeyRecord(
        fingerprint=f"SHA256:filler{i:038d}", not_before=now, not_after=now,
        source=KeySource.CERT_ONLY) for i in range(20_000)])
    for key in rsa2048_keys:
        # The refresh starts first, so its read of the store predates the mark.
        refreshing = asyncio.create_task(keystore.refresh())
        await asyncio.sleep(0.005)
        await keystore.mark_compromised([key.fingerprint])
        await refreshing
        assert key.fingerprint in keystore.compromised
    # The store holds what memory holds: a new daemon starts with the same marks.
    restarted = Keystore(store)
    await restarted.refresh()
    assert restarted.compromised == keystore.compromised == {k.fingerprint for k in rsa2048_keys}


async def test_a_compromised_label_in_a_cluster_counts_fleet_wide_and_survives_refresh(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    keystore = Keystore(store)
    changed = keystore.subscribe()
    key = rsa2048_keys[0]
    manifest = key_secret_manifest(key, name="old-key")
    manifest["metadata"]["labels"][KEY_LABEL] = "compromised"
    seen = key_secrets.read_key_secret(manifest)
    refreshing = asyncio.create_task(keystore.refresh())
    new = await keystore.observe_key_secrets([seen])
    await refreshing
    assert [k.fingerprint for k in new] == [key.fingerprint]
    assert keystore.compromised == {key.fingerprint}
    assert changed.is_set()
    await keystore.refresh()
    assert keystore.compromised == {key.fingerprint}
    assert key.fingerprint in keystore.fingerprints()


async def test_a_clusters_key_secrets_are_recorded_and_stored_in_one_write(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    """Facts and encrypted private keys of a cluster's new keys: one write; the keys
    load again from the store after it."""
    keystore = Keystore(store)
    seen = [key_secrets.read_key_secret(key_secret_manifest(key, name=f"k{i}"))
            for i, key in enumerate(rsa2048_keys[:2])]
    writes, _ = store.write_groups
    new = await keystore.observe_key_secrets(seen)
    assert store.write_groups[0] == writes + 1
    assert {k.fingerprint for k in new} == {k.fingerprint for k in rsa2048_keys[:2]}
    stored = {r.fingerprint: r for r in await store.keys.list_keys()}
    assert all(stored[k.fingerprint].has_private_key for k in rsa2048_keys[:2])
    loaded = await store.keys.load_private_keys()
    assert {k.fingerprint for k in loaded.keys} == {k.fingerprint for k in rsa2048_keys[:2]}
    # Seen again (every relist): nothing new to load or store, the facts again.
    assert await keystore.observe_key_secrets(seen) == []
    assert store.write_groups[0] == writes + 2


async def test_stored_keys_are_known_at_once_and_loaded_only_when_needed(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    await Keystore(store).adopt(rsa2048_keys[:2], source=KeySource.IMPORTED)
    keystore = Keystore(store)
    before = keystore.epoch
    await keystore.refresh()
    assert keystore.fingerprints() == {k.fingerprint for k in rsa2048_keys[:2]}
    assert keystore.epoch != before
    assert keystore.loaded_keys() == []          # known, not parsed yet
    await keystore.materialize()
    assert {k.fingerprint for k in keystore.loaded_keys()} == keystore.fingerprints()
    assert keystore.epoch == keys_epoch(keystore.fingerprints())   # loading changed no key


async def test_the_epoch_kept_key_by_key_names_the_key_set(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    """The epoch moves with each key learned (in constant time) and always equals the
    digest of the whole set, however the keys arrived: stored, adopted, observed."""
    await Keystore(store).adopt(rsa2048_keys[:1], source=KeySource.IMPORTED)
    keystore = Keystore(store)
    assert keystore.epoch == keys_epoch(())
    await keystore.refresh()                     # one key stored, not loaded
    assert keystore.epoch == keys_epoch([rsa2048_keys[0].fingerprint])
    seen: list[int] = [keystore.epoch]
    await keystore.adopt(rsa2048_keys[:2], source=KeySource.IMPORTED)   # one old, one new
    seen.append(keystore.epoch)
    secret = key_secrets.read_key_secret(key_secret_manifest(rsa2048_keys[2], name="k"))
    await keystore.observe_key_secrets([secret])
    seen.append(keystore.epoch)
    assert keystore.epoch == keys_epoch(k.fingerprint for k in rsa2048_keys[:3])
    assert len(set(seen)) == 3                   # each new key changed it
    assert len(keystore) == 3
    assert [k.fingerprint for k in keystore.loaded_since(1)] == [
        k.fingerprint for k in keystore.loaded_keys()[1:]]
    assert keys_epoch(reversed([k.fingerprint for k in rsa2048_keys])) == keys_epoch(
        k.fingerprint for k in rsa2048_keys)     # a set: order does not count


async def test_the_master_set_is_written_to_the_store_first(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    keystore = Keystore(store)
    await keystore.adopt(rsa2048_keys[:1], source=KeySource.IMPORTED)
    await keystore.set_master([rsa2048_keys[0].fingerprint])
    assert keystore.master == {rsa2048_keys[0].fingerprint}
    records = {r.fingerprint: r for r in await store.keys.list_keys()}
    assert records[rsa2048_keys[0].fingerprint].fleet_master
