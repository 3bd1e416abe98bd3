"""Attribution as a service: which known private key sealed each item, paid for once.

RSA is the only expensive thing the inventory does, so every answer is remembered
twice: in memory (by item hash) and in the store, which makes an unchanged item free
forever, across restarts too.  Items that no known key opens are cached as "unknown"
together with the keystore's epoch (a digest of the set of private keys known when the
answer was computed); when a new key arrives the epoch changes and those answers stop
counting, so the items are tried again with the new key.

The RSA work itself runs in the daemon's RSA worker processes
(:mod:`sealfleet.adapters.rsa_pool`, one per core: a decrypt there waits for no GIL the
event loop holds), or without them on the threads of an executor (the tests of this
layer, and tools that attribute a handful of items), in chunks of whole SealedSecrets,
so the loop never stalls, with the clusters taking turns (:mod:`fair_share`): one
cluster's flood never delays the others' next change.
The order keys are tried
in is the domain's (:func:`attribution.attribute_sealed_secret`): the cluster's keys by
when the SealedSecret was sealed, the key that opened its first item first for the
rest; this module supplies the base order (the cluster's sealing key, its other keys,
then keys by how many items they have sealed so far) and each key's modulus, read once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import structlog

from sealfleet.adapters.rsa_pool import RsaProcessPool
from sealfleet.adapters.rsa_worker import run_job
from sealfleet.adapters.store import Store
from sealfleet.app.fair_share import FairShare
from sealfleet.app.keystore import Keystore
from sealfleet.domain.attribution import (
    Candidate,
    JobAnswer,
    ObjectItems,
    RsaWork,
    candidate,
)
from sealfleet.domain.keys import SealingKey

log = structlog.get_logger(__name__)

# Items remembered in memory (the store remembers all of them): enough for every item
# that changes in a busy minute, a few megabytes however large the fleet.
MEMORY_CACHE_ITEMS = 32768
# One executor job: whole SealedSecrets, up to this many of them or of their items
# (whichever comes first; a bigger object is a job of its own).  Big enough that
# scheduling is noise next to RSA (an item costs at least a millisecond), small enough
# that the clusters take turns often (:mod:`fair_share`).
_CHUNK_GROUPS = 16
_CHUNK_ITEMS = 64
_RERANK_INTERVAL = 1.0  # seconds: how stale the keys' usage order may be


@dataclass(frozen=True)
class ItemRequest:
    """One item to attribute: its cache key, base64 ciphertext and OAEP label, and when
    its SealedSecret was likely sealed (:func:`likely_keys.sealing_times`; the same
    tuple for every item of one object)."""

    item_hash: str
    ciphertext: str
    label: bytes
    sealed_at: tuple[dt.datetime, ...] = ()


@dataclass(frozen=True)
class _Job:
    """One RSA job: whole SealedSecrets, the keys to try (the cluster's first, then the
    fleet's ranking, one list shared by every job), the cluster's own keys."""

    objects: list[ObjectItems]
    candidates: list[Candidate]
    local: Collection[str]
    ranking: Sequence[Candidate] = ()


def _attribute_on_thread(job: _Job) -> JobAnswer:
    """Executor job (no worker processes): what a worker process does, on a thread."""
    return run_job(job.objects, [*job.candidates, *job.ranking], job.local)


def _on_threads(executor: Executor) -> Callable[[_Job], Awaitable[JobAnswer]]:
    def start(job: _Job) -> asyncio.Future[JobAnswer]:
        return asyncio.get_running_loop().run_in_executor(executor, _attribute_on_thread, job)
    return start


def _on_processes(pool: RsaProcessPool) -> Callable[[_Job], Awaitable[JobAnswer]]:
    def start(job: _Job) -> Awaitable[JobAnswer]:
        return pool.attribute(job.objects, job.candidates, job.local, job.ranking)
    return start


class Attributor:
    """Answers "which key sealed this item" from memory, then the store, then RSA."""

    def __init__(self, store: Store, executor: Executor, keystore: Keystore, *,
                 threads: int | None = None, processes: RsaProcessPool | None = None,
                 memory_items: int = MEMORY_CACHE_ITEMS) -> None:
        self._cache = store.inventory      # the stored attribution cache
        self._memory_items = memory_items
        self._keystore = keystore
        self._processes = processes
        self._rsa: FairShare[_Job, JobAnswer] = (
            FairShare(_on_processes(processes), processes.depth) if processes is not None
            else FairShare(_on_threads(executor), threads or os.cpu_count() or 1))
        # Oldest first, evicted in O(1): deleting a plain dict's first entry over and
        # over leaves a run of dead slots that every next(iter()) walks again (10 us
        # against 1.4 us per eviction at 32k entries; 4 % of a first pass's loop).
        self._known: OrderedDict[bytes, str] = OrderedDict()  # hash -> fingerprint
        self._unknown: OrderedDict[bytes, int] = OrderedDict()  # hash -> epoch unknown at
        self._evicted = False                   # memory has forgotten some answers
        self._usage: Counter[str] = Counter()   # fingerprint -> items it sealed so far
        self._candidates: dict[str, Candidate] = {}  # fingerprint -> key with its modulus
        self._ranked: list[Candidate] = []      # every loaded key, most used first (cached)
        self._rank: dict[str, int] = {}         # fingerprint -> position in _ranked
        self._ranked_at = float("-inf")
        self.backlog = 0                        # items waiting for RSA right now
        self.rsa_operations = 0                 # RSA decrypts done since start
        self._rsa_cpu = 0.0                     # the RSA threads' CPU seconds in jobs
        self._rsa_busy = 0.0                    # ... and their wall seconds in jobs

    @property
    def rsa_work(self) -> RsaWork:
        deaths = self._processes.deaths if self._processes is not None else 0
        return RsaWork(self.rsa_operations, self._rsa_cpu, self._rsa_busy, deaths)

    def _cached(self, item_hash: str) -> tuple[bool, str | None]:
        raw = bytes.fromhex(item_hash)
        fingerprint = self._known.get(raw)
        if fingerprint is not None:
            return True, fingerprint
        if self._unknown.get(raw) == self._keystore.epoch:
            return True, None
        return False, None

    def _remember(self, item_hash: str, fingerprint: str | None, epoch: int) -> None:
        raw = bytes.fromhex(item_hash)
        if len(self._known) >= self._memory_items:
            self._known.popitem(last=False)
            self._evicted = True
        if len(self._unknown) >= self._memory_items:
            self._unknown.popitem(last=False)
            self._evicted = True
        if fingerprint is None:
            self._unknown[raw] = epoch
        else:
            # Interned so that 100k cached items share a handful of fingerprint strings.
            key = self._keystore.get(fingerprint)
            self._known[raw] = key.fingerprint if key is not None else fingerprint
            self._unknown.pop(raw, None)
            self._usage[fingerprint] += 1

    def _order(self, preferred: Sequence[str], likely: Collection[str],
               ) -> tuple[list[Candidate], list[Candidate], set[str]]:
        """The base order: *preferred* in order (the cluster's sealing key), then the
        *likely* keys (those the cluster holds), then every loaded key by items sealed
        so far (then newest first): the lead, the ranking, and the fingerprints of the
        lead (the cluster's keys).

        Costs what the cluster holds, not what the fleet holds: the whole ranking follows
        the lead as it is, not filtered, the same list for every job until the next
        ranking (the RSA pool encodes it once), so the lead's keys come again in it, and
        each item tries a key once (:mod:`.domain.attribution`).  Sorting thousands of
        keys for every page of every cluster, and later filtering them, grew a first
        pass quadratically with the fleet.
        """
        ranked, rank = self._ranking()
        head = list(dict.fromkeys(f for f in preferred if f in rank))
        chosen = set(head)
        head += sorted((f for f in likely if f in rank and f not in chosen), key=rank.__getitem__)
        chosen.update(head)
        return [ranked[rank[f]] for f in head], ranked, chosen

    def _ranking(self) -> tuple[list[Candidate], dict[str, int]]:
        """Every loaded key by items sealed so far, then newest: ranked again at most
        every second (usage only orders the tries); keys loaded in between join at the
        end (a first pass loads a cluster's keys, cluster after cluster), read from the
        keystore's load order past those already ranked."""
        now = time.monotonic()
        if now - self._ranked_at > _RERANK_INTERVAL:
            # Sorted by the candidates' own fields (read once per key): 2,000 keys'
            # properties and timestamps read again every second were most of a
            # ranking's cost.  Newest first among equals: a stable sort of the keys
            # newest first, then by usage.
            usage = self._usage
            candidates = [self._candidate(key) for key in self._keystore.loaded_keys()]
            candidates.sort(key=_not_before, reverse=True)
            candidates.sort(key=lambda c: usage.get(c.fingerprint, 0), reverse=True)
            self._ranked = candidates
            self._rank = {c.fingerprint: index for index, c in enumerate(candidates)}
            self._ranked_at = now
        else:
            for key in self._keystore.loaded_since(len(self._ranked)):
                self._rank[key.fingerprint] = len(self._ranked)
                self._ranked.append(self._candidate(key))
        return self._ranked, self._rank

    def _candidate(self, key: SealingKey) -> Candidate:
        known = self._candidates.get(key.fingerprint)
        if known is None or known.key is not key:
            known = self._candidates[key.fingerprint] = candidate(key)
        return known

    async def attribute(self, groups: Sequence[Sequence[ItemRequest]], *, owner: str = "",
                        preferred: Sequence[str] = (),
                        likely: Collection[str] = ()) -> dict[str, str | None]:
        """Attribute every item of *groups* (one group per SealedSecret) for *owner*
        (a cluster: owners take turns on the RSA threads)."""
        result: dict[str, str | None] = {}
        missing: list[str] = []
        for group in groups:
            for request in group:
                hit, fingerprint = self._cached(request.item_hash)
                if hit:
                    result[request.item_hash] = fingerprint
                else:
                    missing.append(request.item_hash)
        if not missing:
            return result
        epoch = self._keystore.epoch
        if self._cache.attributions_all_queued and not self._evicted:
            stored = {}   # the store holds what memory does: nothing for these
        else:
            stored = await self._cache.get_attributions(missing, known_keys_epoch=epoch)
        for item_hash, fingerprint in stored.items():
            result[item_hash] = fingerprint
            self._remember(item_hash, fingerprint, epoch)
        todo = [[r for r in group if r.item_hash not in result] for group in groups]
        todo = [group for group in todo if group]
        if not todo:
            return result
        await self._keystore.materialize()
        lead, ranking, local = self._order(preferred, likely)
        computed = await self._run_rsa(owner, todo, lead, ranking, local)
        # The epoch of the keys actually tried, not whatever it is by now.  Written with
        # other clusters' a moment later (nothing waits for it: the records carry their
        # items' keys), read back meanwhile from the queue.
        self._cache.queue_attributions(computed, known_keys_epoch=epoch)
        for item_hash, fingerprint in computed:
            result[item_hash] = fingerprint
            self._remember(item_hash, fingerprint, epoch)
        return result

    async def _run_rsa(self, owner: str, groups: list[list[ItemRequest]],
                       lead: list[Candidate], ranking: Sequence[Candidate],
                       local: Collection[str]) -> list[tuple[str, str | None]]:
        if not lead and not ranking:
            return [(r.item_hash, None) for group in groups for r in group]
        count = sum(len(group) for group in groups)
        self.backlog += count
        try:
            chunks = list(_chunks(groups))
            jobs = [self._rsa.run(owner, _Job(_objects(chunk), lead, local, ranking))
                    for chunk in chunks]
            answers: list[tuple[str, str | None]] = []
            for chunk, done in zip(chunks, await asyncio.gather(*jobs), strict=True):
                hashes = [r.item_hash for group in chunk for r in group]
                answers.extend(zip(hashes, done.fingerprints, strict=True))
                self.rsa_operations += done.attempts
                self._rsa_cpu += done.cpu_seconds
                self._rsa_busy += done.busy_seconds
            return answers
        finally:
            self.backlog -= count


def _not_before(candidate: Candidate) -> dt.datetime:
    return candidate.not_before


def _objects(chunk: list[list[ItemRequest]]) -> list[ObjectItems]:
    """A chunk's SealedSecrets as the domain's (and the worker pipe's) values: the items
    without their hashes, which stay here to pair with the answers."""
    return [ObjectItems(tuple((r.ciphertext, r.label) for r in group), group[0].sealed_at)
            for group in chunk if group]


def _chunks(groups: list[list[ItemRequest]]) -> Iterator[list[list[ItemRequest]]]:
    chunk: list[list[ItemRequest]] = []
    items = 0
    for group in groups:
        if chunk and (len(chunk) >= _CHUNK_GROUPS or items + len(group) > _CHUNK_ITEMS):
            yield chunk
            chunk, items = [], 0
        chunk.append(group)
        items += len(group)
    if chunk:
        yield chunk
