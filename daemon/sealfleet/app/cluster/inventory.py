"""A cluster's SealedSecrets as its worker holds them in memory, and what to write next.

The worker keeps a compact entry per SealedSecret (resourceVersion, the key of each
item, Synced, state) so that (a) a relist skips unchanged objects without touching
the store or RSA, and (b) a new sealing key or compromised set reclassifies the whole
cluster without reading the store back.  Full records exist only on their way to the
store (the pending batch).  States are decided by :func:`staleness.classify` alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from sealfleet.adapters.store.records import ItemFact, SealedSecretRecord
from sealfleet.domain.observed import Parsed, Ref, ref_of
from sealfleet.domain.staleness import KeyContext, SecretState, classify

log = structlog.get_logger(__name__)

@dataclass(slots=True)
class Entry:
    """What the worker remembers of one SealedSecret between events."""

    ref: Ref
    resource_version: str
    item_keys: tuple[str | None, ...]
    synced: bool | None
    state: SecretState
    malformed: bool = False
    verified: bool | None = None   # least-privilege mode: the controller's /v1/verify answer

    @property
    def has_unknown(self) -> bool:
        return any(key is None for key in self.item_keys)

    def classify(self, context: KeyContext) -> SecretState:
        return classify(self.item_keys, context, synced=self.synced, malformed=self.malformed,
                        verified=self.verified)


@dataclass(frozen=True)
class Pending:
    upserts: list[SealedSecretRecord]
    deletes: list[Ref]
    states: list[tuple[str, str, SecretState]]


class ClusterInventory:
    """Entries by (namespace, name) and the batch of writes not flushed yet."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self.on_pending: Callable[[], None] = _nothing  # a write was queued (the writer's)
        # Unattributed items came or went, or a key came into or out of use: what the
        # keystore should wake this cluster for changed (the observer's).
        self.on_interest: Callable[[], None] = _nothing
        self._entries: dict[Ref, Entry] = {}
        self._unknown: set[Ref] = set()   # entries with an item no known key opens
        self._key_uses: Counter[str] = Counter()  # fingerprint -> entries using it
        self.pending_upserts: dict[Ref, SealedSecretRecord] = {}
        self.pending_deletes: set[Ref] = set()
        self.pending_states: dict[Ref, SecretState] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, records: Sequence[SealedSecretRecord]) -> None:
        for record in records:
            ref = (sys.intern(record.namespace), record.name)
            self._put(Entry(
                ref=ref, resource_version=record.resource_version,
                item_keys=tuple(item.fingerprint for item in record.items),
                synced=record.synced, state=record.state,
                malformed=record.malformed_reason is not None))

    def get(self, ref: Ref) -> Entry | None:
        return self._entries.get(ref)

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def unknown_entries(self) -> list[Entry]:
        """The entries with an item no known key opens (without a look at the others)."""
        return [self._entries[ref] for ref in self._unknown]

    @property
    def has_unknown(self) -> bool:
        return bool(self._unknown)

    def keys_in_use(self) -> set[str]:
        """The fingerprints some entry's items were sealed with."""
        return set(self._key_uses)

    def _put(self, entry: Entry) -> None:
        """The one way in: keeps the unknown set and the key uses in step."""
        previous = self._entries.get(entry.ref)
        self._entries[entry.ref] = entry
        self._account(previous, entry)

    def _drop(self, ref: Ref) -> None:
        self._account(self._entries.pop(ref, None), None)

    def _account(self, previous: Entry | None, entry: Entry | None) -> None:
        old_keys = previous.item_keys if previous is not None else ()
        new_keys = entry.item_keys if entry is not None else ()
        if old_keys == new_keys:
            return  # the common case: an object changed, its items' keys did not
        had_unknown = bool(self._unknown)
        interest = False
        for key in {k for k in old_keys if k is not None}:
            self._key_uses[key] -= 1
            if not self._key_uses[key]:
                del self._key_uses[key]
                interest = True
        for key in {k for k in new_keys if k is not None}:
            self._key_uses[key] += 1
            interest = interest or self._key_uses[key] == 1
        if entry is not None and entry.has_unknown:
            self._unknown.add(entry.ref)
        elif previous is not None:
            self._unknown.discard(previous.ref)
        if interest or had_unknown != bool(self._unknown):
            self.on_interest()

    def refs(self) -> set[Ref]:
        return set(self._entries)

    def unchanged(self, obj: Mapping[str, Any], *, recheck_unknown: bool = False) -> bool:
        """Same resourceVersion as last seen (and, if asked, no unknown item to retry)."""
        entry = self._entries.get(ref_of(obj))
        if entry is None:
            return False
        metadata = obj.get("metadata")
        rv = str(metadata.get("resourceVersion") or "") if isinstance(metadata, Mapping) else ""
        if not rv or rv != entry.resource_version:
            return False
        return not (recheck_unknown and entry.has_unknown)

    def forget(self, ref: Ref) -> None:
        self._drop(ref)
        self.pending_upserts.pop(ref, None)
        self.pending_states.pop(ref, None)

    def _queue(self, record: SealedSecretRecord) -> None:
        ref = (record.namespace, record.name)
        self.pending_deletes.discard(ref)
        self.pending_states.pop(ref, None)
        self.pending_upserts[ref] = record
        self.on_pending()

    def store_parsed(self, parsed: Parsed, items: tuple[ItemFact, ...],
                     context: KeyContext, now: dt.datetime) -> Entry:
        """Remember a parsed, attributed object and queue its record."""
        entry = Entry(ref=parsed.ref, resource_version=parsed.resource_version,
                      item_keys=tuple(item.fingerprint for item in items),
                      synced=parsed.synced, state=SecretState.UNKNOWN,
                      malformed=parsed.malformed_reason is not None)
        previous = self._entries.get(parsed.ref)
        if previous is not None and previous.item_keys == entry.item_keys:
            entry.verified = previous.verified
        if entry.malformed:
            _log_malformed_once(parsed, previous)
        entry.state = entry.classify(context)
        self._put(entry)
        self._queue(self._record(parsed, items, entry.state, now))
        return entry

    def note_malformed(self, parsed: Parsed, now: dt.datetime) -> None:
        """Record an object too malformed to have items."""
        _log_malformed_once(parsed, self._entries.get(parsed.ref))
        self._put(Entry(ref=parsed.ref, resource_version=parsed.resource_version,
                        item_keys=(), synced=parsed.synced, state=SecretState.UNKNOWN,
                        malformed=True))
        self._queue(self._record(parsed, (), SecretState.UNKNOWN, now))

    def _record(self, parsed: Parsed, items: tuple[ItemFact, ...], state: SecretState,
                now: dt.datetime) -> SealedSecretRecord:
        return SealedSecretRecord(
            cluster=self.cluster, namespace=parsed.ref[0], name=parsed.ref[1], uid=parsed.uid,
            resource_version=parsed.resource_version, generation=parsed.generation,
            scope=parsed.scope, ciphertext_fingerprint=parsed.ciphertext_fingerprint,
            items=items, state=state, synced=parsed.synced,
            synced_message=parsed.synced_message, observed_at=now,
            malformed_reason=parsed.malformed_reason, managed_by=parsed.managed_by)

    def reclassify(self, entry: Entry, context: KeyContext) -> None:
        """Judge *entry* again (new facts about its keys or the controller's answer)."""
        self.set_state(entry, entry.classify(context))

    def reclassify_all(self, context: KeyContext) -> None:
        for entry in self.entries():
            self.reclassify(entry, context)

    def set_state(self, entry: Entry, state: SecretState) -> None:
        """A reclassification: patch the queued record, or queue a state-only update."""
        if state is entry.state:
            return
        entry.state = state
        queued = self.pending_upserts.get(entry.ref)
        if queued is not None:
            self.pending_upserts[entry.ref] = dataclasses.replace(queued, state=state)
        else:
            self.pending_states[entry.ref] = state
        self.on_pending()

    def delete(self, ref: Ref) -> None:
        self.forget(ref)
        self.pending_deletes.add(ref)
        self.on_pending()

    def pending_count(self) -> int:
        return len(self.pending_upserts) + len(self.pending_deletes) + len(self.pending_states)

    def requeue(self, pending: Pending) -> None:
        """Put back a batch the store did not take; what was queued since wins."""
        for record in pending.upserts:
            ref = (record.namespace, record.name)
            if ref not in self.pending_upserts and ref not in self.pending_deletes \
                    and ref in self._entries:
                self.pending_upserts[ref] = record
        for ref in pending.deletes:
            if ref not in self._entries and ref not in self.pending_upserts:
                self.pending_deletes.add(ref)
        for namespace, name, state in pending.states:
            ref = (namespace, name)
            if ref not in self.pending_upserts and ref not in self.pending_states \
                    and ref in self._entries:
                self.pending_states[ref] = state

    def take_pending(self) -> Pending:
        pending = Pending(upserts=list(self.pending_upserts.values()),
                          deletes=sorted(self.pending_deletes),
                          states=[(ns, name, state)
                                  for (ns, name), state in self.pending_states.items()])
        self.pending_upserts, self.pending_deletes, self.pending_states = {}, set(), {}
        return pending


def _nothing() -> None:
    return None


def _log_malformed_once(parsed: Parsed, previous: Entry | None) -> None:
    """Log an object when it becomes malformed, not again for each later version (the
    controller's own status update of a broken object is a new resourceVersion too)."""
    if previous is None or not previous.malformed:
        log.warning("sealed_secret_malformed", namespace=parsed.ref[0], name=parsed.ref[1],
                    reason=parsed.malformed_reason)
