"""The keystore: the one owner of every key's state in the daemon.

Which private keys the fleet holds (loaded, or stored and loaded on first need), which
keys are compromised, and which form the fleet master set.  Every change goes the same
way: **the store first, then memory, then the subscribers**.  General subscribers
(backups, repos) hear of every change.  Cluster workers hear only of what concerns them
(:meth:`Keystore.want_new_keys`, :meth:`Keystore.watch_keys`): a new key reaches the
workers holding items no known key opens, a compromised mark those holding items
sealed with that key, so an idle cluster costs nothing when a fleet learns its keys.
Reads of the store that refresh memory (:meth:`Keystore.refresh`, every 30 s, for keys
imported or marked by another process) hold the same lock as the writes, so a refresh that read
the store before a write can never land after it and undo that write.

The epoch is a digest of the set of known private keys' fingerprints (kept up to date
key by key): attribution answers
("no known key opens this item") are cached with the epoch they were computed at, and a
new key changes the epoch so those answers stop counting.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence

import structlog

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import KeyMaterial, KeyRecord
from sealfleet.domain.key_secrets import KeySecret
from sealfleet.domain.keys import Certificate, KeySource, KeyState, SealingKey
from sealfleet.errors import InputError

log = structlog.get_logger(__name__)


_EPOCH_MODULUS = 1 << 56   # fits SQLite's signed 64-bit integers


def _key_digest(fingerprint: str) -> int:
    return int.from_bytes(hashlib.sha256(fingerprint.encode()).digest()[:7], "big")


def keys_epoch(fingerprints: Iterable[str]) -> int:
    """A stable number naming a set of keys: the sum of the keys' digests.

    A sum, so that one key more or less changes it in constant time
    (:meth:`Keystore._keys_changed`): a digest of the sorted set, made again for each of
    a first pass's 2,000 new keys, grew with the fleet."""
    return sum(_key_digest(f) for f in set(fingerprints)) % _EPOCH_MODULUS


class Keystore:
    """Key state for the whole daemon; see the module docstring for the write order."""

    def __init__(self, store: Store) -> None:
        self._keys = store.keys           # the keystore's part of the database
        self._loaded: dict[str, SealingKey] = {}   # never unloaded
        # The same keys in load order: a reader asking for those after its first n
        # gets a slice, not a walk past the n (a dict's values cannot be indexed, and
        # the attributor asks for every page of every cluster).
        self._load_order: list[SealingKey] = []
        self._stored: set[str] = set()       # private key in the store, not loaded yet
        # (the two are disjoint: a key loaded is no longer "stored, not loaded")
        self.epoch = keys_epoch(())
        self.compromised: frozenset[str] = frozenset()
        self.master: frozenset[str] = frozenset()
        self._subscribers: list[asyncio.Event] = []
        self._want_new_keys: set[asyncio.Event] = set()   # workers with unattributed items
        self._key_users: dict[str, set[asyncio.Event]] = {}  # fingerprint -> workers using it
        # Cluster workers woken for a key change since start (a new key, a compromised
        # mark): what a fleet pays per key, and what the fleet tests count.
        self.worker_wakeups = 0
        self._state_lock = asyncio.Lock()    # store read/write + memory update, as one
        self._load_lock = asyncio.Lock()

    # ------------------------------------------------------------ subscribers

    def subscribe(self) -> asyncio.Event:
        """An event set whenever the key set or the compromised set changes."""
        event = asyncio.Event()
        self._subscribers.append(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        if event in self._subscribers:
            self._subscribers.remove(event)

    def want_new_keys(self, event: asyncio.Event, wanted: bool) -> None:
        """Set *event* on every change of the key set while *wanted* (a worker with
        items no known key opens)."""
        if wanted:
            self._want_new_keys.add(event)
        else:
            self._want_new_keys.discard(event)

    def watch_keys(self, event: asyncio.Event, added: Iterable[str] = (),
                   removed: Iterable[str] = ()) -> None:
        """Set *event* when any key of *added* is marked compromised (or unmarked);
        stop doing so for *removed*."""
        for fingerprint in added:
            self._key_users.setdefault(fingerprint, set()).add(event)
        for fingerprint in removed:
            users = self._key_users.get(fingerprint)
            if users is not None:
                users.discard(event)
                if not users:
                    del self._key_users[fingerprint]

    def _notify(self) -> None:
        for event in self._subscribers:
            event.set()

    def _keys_changed(self, joined: Iterable[str] = (), left: Iterable[str] = ()) -> None:
        """Keys *joined* or *left* the set: the epoch follows (:func:`keys_epoch`)."""
        change = sum(map(_key_digest, joined)) - sum(map(_key_digest, left))
        self.epoch = (self.epoch + change) % _EPOCH_MODULUS
        self._notify()
        for event in self._want_new_keys:
            event.set()
        self.worker_wakeups += len(self._want_new_keys)

    # ------------------------------------------------------------ reads (memory)

    def fingerprints(self) -> set[str]:
        """Every key whose private half the fleet holds (loaded or not)."""
        return set(self._loaded) | self._stored

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._loaded or fingerprint in self._stored

    def __len__(self) -> int:
        return len(self._loaded) + len(self._stored)

    def get(self, fingerprint: str) -> SealingKey | None:
        """A loaded key (None when unknown or not loaded yet)."""
        return self._loaded.get(fingerprint)

    def loaded_keys(self) -> list[SealingKey]:
        """The loaded keys."""
        return list(self._load_order)

    def loaded_since(self, count: int) -> list[SealingKey]:
        """The keys loaded after the first *count* (in load order): what a reader that
        has seen *count* of them is missing, without a copy of them all."""
        return self._load_order[count:]

    # ------------------------------------------------------------ writes

    async def refresh(self) -> bool:
        """Re-read the store (keys imported or marked elsewhere); True when the
        compromised set changed."""
        async with self._state_lock:
            records = await self._keys.list_keys()
            self.master = frozenset(await self._keys.fleet_master())
            new = {r.fingerprint for r in records
                   if r.has_private_key and r.fingerprint not in self}
            if new:
                self._stored |= new
                self._keys_changed(new)
            return self._set_compromised(
                r.fingerprint for r in records if r.state == KeyState.COMPROMISED)

    async def set_master(self, fingerprints: Sequence[str]) -> None:
        """The configured fleet master set: store, then memory."""
        async with self._state_lock:
            await self._keys.set_fleet_master(list(fingerprints))
            self.master = frozenset(fingerprints)

    async def add_master(self, fingerprint: str) -> None:
        """Master mode: one more key in the fleet master set (idempotent)."""
        async with self._state_lock:
            if fingerprint in self.master:
                return
            master = sorted(self.master | {fingerprint})
            await self._keys.set_fleet_master(master)
            self.master = frozenset(master)
            self._notify()

    async def remove_master(self, fingerprint: str) -> None:
        """Out of the fleet master set (a compromised or retired key; idempotent)."""
        async with self._state_lock:
            if fingerprint not in self.master:
                return
            master = sorted(self.master - {fingerprint})
            await self._keys.set_fleet_master(master)
            self.master = frozenset(master)
            self._notify()

    async def mark_compromised(self, fingerprints: Iterable[str]) -> bool:
        """Mark keys compromised (never undone here); True when the set grew."""
        marked = frozenset(fingerprints)
        if marked <= self.compromised:
            return False
        async with self._state_lock:
            for fingerprint in sorted(marked - self.compromised):
                await self._keys.set_key_state(fingerprint, KeyState.COMPROMISED,
                                                actor="sealfleet",
                                                reason="labelled compromised in a cluster")
            return self._set_compromised(self.compromised | marked)

    def _set_compromised(self, fingerprints: Iterable[str]) -> bool:
        compromised = frozenset(fingerprints)
        if compromised == self.compromised:
            return False
        changed = compromised ^ self.compromised
        self.compromised = compromised
        self._notify()
        woken = {event for fingerprint in changed
                 for event in self._key_users.get(fingerprint, ())}
        for event in woken:
            event.set()
        self.worker_wakeups += len(woken)
        return True

    async def observe_key_secrets(self, secrets: Sequence[KeySecret]) -> list[SealingKey]:
        """Key Secrets seen in a cluster: their public facts recorded (a ``compromised``
        label counts fleet-wide at once), private keys new to the fleet loaded off the
        loop and stored encrypted, in the same write as the facts.  Returns the keys new
        to the fleet.

        One thread hop loads them all and one write stores everything: a fleet's first
        pass does this once per cluster, and a write and a hop per key added up."""
        if not secrets:
            return []
        records = [KeyRecord(
            fingerprint=s.fingerprint, not_before=s.not_before, not_after=s.not_after,
            source=KeySource.CLUSTER,
            state=KeyState.COMPROMISED if s.compromised else KeyState.ACTIVE,
            has_private_key=True,
            certificate_pem=s.certificate.pem.decode() if s.certificate else None)
            for s in secrets]
        fresh = [s for s in secrets if s.fingerprint not in self._loaded]
        loaded: list[SealingKey] = []
        if fresh:
            for secret, outcome in zip(fresh, await asyncio.to_thread(_load_all, fresh),
                                       strict=True):
                if isinstance(outcome, InputError):
                    log.warning("key_secret_unreadable", secret=secret.name,
                                error=str(outcome))
                else:
                    loaded.append(outcome)
        async with self._state_lock, self._load_lock:
            new_to_store = [k for k in loaded if k.fingerprint not in self]
            await self._keys.record_keys(records, [
                KeyMaterial(key=k, source=KeySource.CLUSTER) for k in new_to_store])
            self._set_compromised(self.compromised
                                  | {s.fingerprint for s in secrets if s.compromised})
            return self._add_loaded(loaded)

    async def adopt(self, keys: Sequence[SealingKey], *, source: KeySource) -> list[SealingKey]:
        """Take private keys into fleet custody: stored encrypted (those new to the
        store), then known in memory.  Returns the keys new to the fleet."""
        async with self._load_lock:
            new_to_store = [k for k in keys if k.fingerprint not in self]
            if new_to_store:
                await self._keys.store_key_material(
                    [KeyMaterial(key=k, source=source) for k in new_to_store])
            return self._add_loaded(keys)

    def _load(self, key: SealingKey) -> None:
        self._loaded[key.fingerprint] = key
        self._load_order.append(key)

    def _add_loaded(self, keys: Iterable[SealingKey]) -> list[SealingKey]:
        new = []
        for key in keys:
            if key.fingerprint not in self._loaded:
                if key.fingerprint in self._stored:
                    self._stored.discard(key.fingerprint)
                else:
                    new.append(key)
                self._load(key)
        if new:
            self._keys_changed(k.fingerprint for k in new)
            log.info("keys_learned", fingerprints=[k.fingerprint for k in new])
        return new

    async def record_certificate(self, certificate: Certificate) -> None:
        """A sealing certificate whose private key the fleet does not hold (least
        privilege): its public facts still date the cluster's sealing key."""
        if certificate.fingerprint in self:
            return
        await self._keys.upsert_keys([KeyRecord(
            fingerprint=certificate.fingerprint, not_before=certificate.not_before,
            not_after=certificate.not_after, source=KeySource.CERT_ONLY,
            certificate_pem=certificate.pem.decode())])

    async def materialize(self) -> None:
        """Load the stored private keys not loaded yet (called before any RSA)."""
        async with self._load_lock:
            if not self._stored:
                return
            wanted = set(self._stored)
            loaded = await self._keys.load_private_keys(only=sorted(wanted))
            for key in loaded.keys:
                if key.fingerprint not in self._loaded:
                    self._load(key)
            for rejected in loaded.rejected:   # one bad row never stops the others
                log.warning("stored_key_rejected", fingerprint=rejected.fingerprint,
                            reason=rejected.reason)
            missing = wanted - set(self._loaded)
            self._stored.clear()
            if missing:
                log.warning("stored_keys_missing", fingerprints=sorted(missing))
                self._keys_changed(left=missing)


def _load_all(secrets: Sequence[KeySecret]) -> list[SealingKey | InputError]:
    """Each Secret's private key (milliseconds each), or why it cannot be read."""
    outcomes: list[SealingKey | InputError] = []
    for secret in secrets:
        try:
            outcomes.append(secret.load())
        except InputError as error:
            outcomes.append(error)
    return outcomes
