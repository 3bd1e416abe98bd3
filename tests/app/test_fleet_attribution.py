"""The attribution service: right key per item, RSA paid once (memory, then the store)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sealfleet.adapters.rsa_pool import RsaProcessPool
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app.attributing import Attributor, ItemRequest
from sealfleet.app.keystore import Keystore
from sealfleet.domain.attribution import item_hash
from sealfleet.domain.keys import KeySource, SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import SealedIdentity, seal_value


@pytest.fixture(params=["threads", "processes"])
async def rsa_pool(request: pytest.FixtureRequest) -> AsyncIterator[RsaProcessPool | None]:
    """Where the RSA runs: the executor's threads, or the service's worker processes."""
    if request.param == "threads":
        yield None
        return
    async with RsaProcessPool(2) as pool:
        yield pool


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as opened:
        yield opened


def sealed_group(key: SealingKey, name: str, count: int,
                 sealed_at: tuple[dt.datetime, ...] = ()) -> list[ItemRequest]:
    identity = SealedIdentity(namespace="apps", name=name, scope=Scope.STRICT)
    requests = []
    for index in range(count):
        ciphertext = seal_value(key.public_key, f"value-{index}".encode(), identity)
        requests.append(ItemRequest(item_hash(ciphertext, identity.label), ciphertext,
                                    identity.label, sealed_at))
    return requests


async def test_each_item_is_attributed_to_the_key_that_sealed_it(
        store: Store, executor: ThreadPoolExecutor, rsa_pool: RsaProcessPool | None,
        rsa2048_keys: list[SealingKey]) -> None:
    old, new, foreign = rsa2048_keys
    keystore = Keystore(store)
    await keystore.adopt([old, new], source=KeySource.IMPORTED)
    attributor = Attributor(store, executor, keystore, processes=rsa_pool)
    groups = [sealed_group(old, "a", 2), sealed_group(new, "b", 3), sealed_group(foreign, "c", 1)]
    answers = await attributor.attribute(groups, preferred=[new.fingerprint])
    assert [answers[r.item_hash] for r in groups[0]] == [old.fingerprint] * 2
    assert [answers[r.item_hash] for r in groups[1]] == [new.fingerprint] * 3
    assert [answers[r.item_hash] for r in groups[2]] == [None]
    # Likeliest first: the sealing key costs one RSA per item; the old SealedSecret pays
    # at most one miss, on its first item only; the foreign item tries at most both keys
    # (a key whose modulus is below the RSA ciphertext is ruled out without a decrypt).
    assert 3 + 2 <= attributor.rsa_operations <= 3 + (1 + 2) + 2
    assert attributor.backlog == 0


async def test_older_sealed_secrets_cost_one_rsa_per_item_when_their_age_is_known(
        store: Store, executor: ThreadPoolExecutor, rsa_pool: RsaProcessPool | None,
        rsa2048_keys: list[SealingKey]) -> None:
    now = dt.datetime.now(dt.UTC)
    old, mid, new = (dataclasses.replace(key, certificate=dataclasses.replace(
        key.certificate, not_before=now - dt.timedelta(days=age)))
        for key, age in zip(rsa2048_keys, (65, 35, 5), strict=True))
    keystore = Keystore(store)
    await keystore.adopt([old, mid, new], source=KeySource.IMPORTED)
    attributor = Attributor(store, executor, keystore, processes=rsa_pool)
    groups = [sealed_group(key, f"{name}-{i}", 2, (key.not_before + dt.timedelta(days=2),))
              for name, key in (("old", old), ("mid", mid), ("new", new)) for i in range(2)]
    answers = await attributor.attribute(groups, preferred=[new.fingerprint],
                                         likely={old.fingerprint, mid.fingerprint})
    for group, key in zip(groups, (old, old, mid, mid, new, new), strict=True):
        assert [answers[r.item_hash] for r in group] == [key.fingerprint] * 2
    # The sealing key is the base order's first guess, but each object's creation time
    # names the key that was newest then: no decrypt is wasted.
    assert attributor.rsa_operations == 12


async def test_unchanged_items_cost_no_rsa_again_even_after_a_restart(
        store: Store, executor: ThreadPoolExecutor, rsa_pool: RsaProcessPool | None,
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    keystore = Keystore(store)
    await keystore.adopt([key], source=KeySource.IMPORTED)
    groups = [sealed_group(key, f"s{i}", 2) for i in range(3)]
    first = Attributor(store, executor, keystore, processes=rsa_pool)
    expected = await first.attribute(groups)
    spent = first.rsa_operations
    assert spent == 6
    assert await first.attribute(groups) == expected
    assert first.rsa_operations == spent  # memory cache
    restarted = Attributor(store, executor, keystore, processes=rsa_pool)
    assert await restarted.attribute(groups) == expected
    assert restarted.rsa_operations == 0  # store cache


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[Store]:
    """The store as the daemon opens it: for this process alone."""
    async with Store.open(tmp_path / "own.db", kek=KeyEncryptionKey(b"k" * 32),
                          exclusive=True) as opened:
        yield opened


async def test_a_store_that_held_no_attributions_is_asked_only_once_one_is_put_there(
        own_store: Store, executor: ThreadPoolExecutor,
        rsa2048_keys: list[SealingKey]) -> None:
    """A first pass asks the store nothing: it holds only what memory does.  Once a
    reseal puts answers there directly, the store is asked again (and answers)."""
    key = rsa2048_keys[0]
    keystore = Keystore(own_store)
    await keystore.adopt([key], source=KeySource.IMPORTED)
    attributor = Attributor(own_store, executor, keystore)
    groups = [sealed_group(key, f"s{i}", 2) for i in range(3)]
    reads = own_store.reads
    answers = await attributor.attribute(groups)
    assert set(answers.values()) == {key.fingerprint}
    assert own_store.reads == reads
    resealed = sealed_group(key, "resealed", 1)[0]
    await own_store.inventory.put_attributions([(resealed.item_hash, key.fingerprint)],
                                               known_keys_epoch=keystore.epoch)
    spent = attributor.rsa_operations
    assert (await attributor.attribute([[resealed]])) == {resealed.item_hash: key.fingerprint}
    assert own_store.reads == reads + 1
    assert attributor.rsa_operations == spent


async def test_answers_memory_forgot_come_from_the_store(
        own_store: Store, executor: ThreadPoolExecutor,
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    keystore = Keystore(own_store)
    await keystore.adopt([key], source=KeySource.IMPORTED)
    attributor = Attributor(own_store, executor, keystore, memory_items=2)
    groups = [sealed_group(key, "s", 3)]
    expected = await attributor.attribute(groups)       # the first answer is forgotten
    spent, reads = attributor.rsa_operations, own_store.reads
    assert await attributor.attribute(groups) == expected
    assert attributor.rsa_operations == spent
    assert own_store.reads == reads + 1


async def test_a_store_holding_attributions_at_open_is_asked(
        tmp_path: Path, executor: ThreadPoolExecutor,
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    groups = [sealed_group(key, f"s{i}", 2) for i in range(2)]
    path, kek = tmp_path / "own.db", KeyEncryptionKey(b"k" * 32)
    for _ in range(2):
        async with Store.open(path, kek=kek, exclusive=True) as store:
            keystore = Keystore(store)
            await keystore.adopt([key], source=KeySource.IMPORTED)
            attributor = Attributor(store, executor, keystore)
            assert set((await attributor.attribute(groups)).values()) == {key.fingerprint}
    assert attributor.rsa_operations == 0   # the restart's answers: the store's


async def test_unknown_items_are_retried_when_a_new_key_arrives(
        store: Store, executor: ThreadPoolExecutor, rsa_pool: RsaProcessPool | None,
        rsa2048_keys: list[SealingKey]) -> None:
    known, late = rsa2048_keys[:2]
    keystore = Keystore(store)
    await keystore.adopt([known], source=KeySource.IMPORTED)
    changed = keystore.subscribe()
    attributor = Attributor(store, executor, keystore, processes=rsa_pool)
    group = sealed_group(late, "late", 1)
    assert (await attributor.attribute([group]))[group[0].item_hash] is None
    before = attributor.rsa_operations
    assert (await attributor.attribute([group]))[group[0].item_hash] is None
    assert attributor.rsa_operations == before  # "unknown" is cached for this key set
    await keystore.adopt([late], source=KeySource.IMPORTED)
    assert changed.is_set()
    assert (await attributor.attribute([group]))[group[0].item_hash] == late.fingerprint
    # And across a restart, the stored "unknown" of the old key set is not trusted.
    fresh_keystore = Keystore(store)
    await fresh_keystore.adopt([known, late], source=KeySource.IMPORTED)
    restarted = Attributor(store, executor, fresh_keystore, processes=rsa_pool)
    assert (await restarted.attribute([group]))[group[0].item_hash] == late.fingerprint
    assert restarted.rsa_operations == 0


async def test_compromised_marks_notify_subscribers_once(store: Store,
                                                           rsa2048_keys: list[SealingKey]) -> None:
    keystore = Keystore(store)
    await keystore.adopt(rsa2048_keys[:1], source=KeySource.IMPORTED)
    event = keystore.subscribe()
    assert await keystore.mark_compromised([rsa2048_keys[0].fingerprint])
    assert event.is_set()
    event.clear()
    assert not await keystore.mark_compromised([rsa2048_keys[0].fingerprint])
    assert not event.is_set()


async def test_a_cluster_flooding_the_rsa_threads_does_not_hold_up_another(
        store: Store, executor: ThreadPoolExecutor, rsa_pool: RsaProcessPool | None,
        rsa2048_keys: list[SealingKey]) -> None:
    """Two objects' worth of items no key opens (each tried with every key) from one
    cluster; another cluster's change is attributed long before the flood is done."""
    keystore = Keystore(store)
    await keystore.adopt(rsa2048_keys[:2], source=KeySource.IMPORTED)
    attributor = Attributor(store, executor, keystore, threads=2, processes=rsa_pool)
    flood = [sealed_group(rsa2048_keys[2], f"flood-{i}", 64) for i in range(12)]
    flooding = asyncio.create_task(attributor.attribute(flood, owner="noisy"))
    await asyncio.sleep(0.05)       # the flood's chunks are queued and running
    assert attributor.backlog == 12 * 64
    quiet = [sealed_group(rsa2048_keys[0], "db", 2)]
    answers = await attributor.attribute(quiet, owner="quiet")
    assert set(answers.values()) == {rsa2048_keys[0].fingerprint}
    assert not flooding.done()
    assert set((await flooding).values()) == {None}
