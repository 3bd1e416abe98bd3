"""A cluster's SealedSecrets as the worker holds them in memory, and what to write next.

The worker keeps a compact entry per SealedSecret (resourceVersion, the key of each
item, Synced, state) so that (a) a relist skips unchanged objects without touching
the store or RSA, and (b) a new sealing key or compromised set reclassifies the whole
cluster without reading the store back.  Full records exist only on their way to the
store (the pending batch).

Parsing is strict about shape and lenient about content: anything that is not a
well-formed SealedSecret yields a ``malformed_reason`` naming the field or item (never
a value), and the object is recorded with state ``unknown`` and no items.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from sealfleet.adapters.store.records import ItemFact, SealedSecretRecord
from sealfleet.domain import hybrid
from sealfleet.domain.attribution import item_hash
from sealfleet.domain.likely_keys import sealing_times
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import ciphertext_fingerprint, identity_of
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import FleetError

log = structlog.get_logger(__name__)

Ref = tuple[str, str]  # (namespace, name)
LEGACY_ITEM = "spec.data"
_MAX_MESSAGE = 300


def ref_of(obj: Mapping[str, Any]) -> Ref:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return ("", "")
    # Namespaces repeat across thousands of objects: one string each in memory.
    return (sys.intern(str(metadata.get("namespace") or "")), str(metadata.get("name") or ""))


@dataclass
class Parsed:
    """One SealedSecret object reduced to what the inventory needs."""

    ref: Ref
    uid: str
    resource_version: str
    generation: int
    scope: Scope = Scope.STRICT
    ciphertext_fingerprint: str = ""
    label: bytes = b""
    items: list[tuple[str, str, str]] = field(default_factory=list)  # (item, hash, ciphertext)
    synced: bool | None = None
    synced_message: str | None = None
    malformed_reason: str | None = None
    sealed_at: tuple[dt.datetime, ...] = ()  # when its items were likely sealed


def parse(obj: Mapping[str, Any]) -> Parsed:
    """Parse one SealedSecret; never raises (problems go to ``malformed_reason``)."""
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    generation = metadata.get("generation")
    result = Parsed(ref=ref_of(obj), uid=str(metadata.get("uid") or ""),
                    resource_version=str(metadata.get("resourceVersion") or ""),
                    generation=generation if isinstance(generation, int) else 0,
                    sealed_at=sealing_times(metadata))
    try:
        _parse_status(obj, result)
        _parse_spec(obj, result)
    except (FleetError, ValueError, TypeError, AttributeError) as error:
        result.malformed_reason = str(error)[:_MAX_MESSAGE] or type(error).__name__
        result.items = []
    return result


def _parse_status(obj: Mapping[str, Any], result: Parsed) -> None:
    status = obj.get("status")
    if not isinstance(status, Mapping):
        return
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Synced":
            value = condition.get("status")
            result.synced = True if value == "True" else False if value == "False" else None
            message = condition.get("message")
            result.synced_message = str(message)[:_MAX_MESSAGE] if message else None


def _parse_spec(obj: Mapping[str, Any], result: Parsed) -> None:
    if not isinstance(obj.get("metadata"), Mapping):
        raise ValueError("metadata is missing or not a mapping")
    if not result.ref[0] or not result.ref[1]:
        raise ValueError("metadata.namespace or metadata.name is missing")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("spec is missing or not a mapping")
    identity = identity_of(obj)
    result.scope, result.label = identity.scope, identity.label
    encrypted = spec.get("encryptedData")
    legacy = spec.get("data")
    if encrypted is not None and not isinstance(encrypted, Mapping):
        raise ValueError("spec.encryptedData is not a mapping")
    values: dict[str, str] = {}
    for item, value in (encrypted or {}).items():
        if not isinstance(value, str):
            raise ValueError(f"item {item!r}: value is not a string")
        values[str(item)] = value
    if legacy:
        if values:
            raise ValueError("uses both spec.encryptedData and spec.data")
        if not isinstance(legacy, str):
            raise ValueError("spec.data is not a string")
        values[LEGACY_ITEM] = legacy
    result.ciphertext_fingerprint = ciphertext_fingerprint(values)
    result.items = [(item, item_hash(value, result.label), value)
                    for item, value in sorted(values.items())]
    # A bad item does not hide the good ones: they are still attributed, and the
    # reason names every bad item (no key can open those; attribution skips them).
    problems = [problem for item, value in sorted(values.items())
                if (problem := _ciphertext_problem(item, value)) is not None]
    if problems:
        result.malformed_reason = "; ".join(problems)[:_MAX_MESSAGE]


def _ciphertext_problem(item: str, value: str) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return f"item {item!r}: not valid base64"
    try:
        hybrid.split(raw)
    except FleetError:
        return f"item {item!r}: not a sealed value (too short)"
    return None


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


@dataclass(frozen=True)
class Pending:
    upserts: list[SealedSecretRecord]
    deletes: list[Ref]
    states: list[tuple[str, str, SecretState]]


class ClusterInventory:
    """Entries by (namespace, name) and the batch of writes not flushed yet."""

    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._entries: dict[Ref, Entry] = {}
        self.pending_upserts: dict[Ref, SealedSecretRecord] = {}
        self.pending_deletes: set[Ref] = set()
        self.pending_states: dict[Ref, SecretState] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, records: Sequence[SealedSecretRecord]) -> None:
        for record in records:
            ref = (sys.intern(record.namespace), record.name)
            self._entries[ref] = Entry(
                ref=ref, resource_version=record.resource_version,
                item_keys=tuple(item.fingerprint for item in record.items),
                synced=record.synced, state=record.state,
                malformed=record.malformed_reason is not None)

    def get(self, ref: Ref) -> Entry | None:
        return self._entries.get(ref)

    def entries(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

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
        self._entries.pop(ref, None)
        self.pending_upserts.pop(ref, None)
        self.pending_states.pop(ref, None)

    def _queue(self, record: SealedSecretRecord) -> None:
        ref = (record.namespace, record.name)
        self.pending_deletes.discard(ref)
        self.pending_states.pop(ref, None)
        self.pending_upserts[ref] = record

    def store_parsed(self, parsed: Parsed, items: tuple[ItemFact, ...],
                     state_of: Any, now: dt.datetime) -> Entry:
        """Remember a parsed, attributed object and queue its record."""
        entry = Entry(ref=parsed.ref, resource_version=parsed.resource_version,
                      item_keys=tuple(item.fingerprint for item in items),
                      synced=parsed.synced, state=SecretState.UNKNOWN,
                      malformed=parsed.malformed_reason is not None)
        previous = self._entries.get(parsed.ref)
        if previous is not None and previous.item_keys == entry.item_keys:
            entry.verified = previous.verified
        if entry.malformed and (previous is None
                                or previous.resource_version != entry.resource_version):
            log.warning("sealed_secret_malformed", namespace=parsed.ref[0],
                        name=parsed.ref[1], reason=parsed.malformed_reason)
        entry.state = state_of(entry)
        self._entries[parsed.ref] = entry
        self._queue(self._record(parsed, items, entry.state, now))
        return entry

    def note_malformed(self, parsed: Parsed, now: dt.datetime) -> None:
        """Record an object too malformed to have items, logging it once per version."""
        log.warning("sealed_secret_malformed", namespace=parsed.ref[0], name=parsed.ref[1],
                    reason=parsed.malformed_reason)
        self._entries[parsed.ref] = Entry(ref=parsed.ref,
                                          resource_version=parsed.resource_version,
                                          item_keys=(), synced=parsed.synced,
                                          state=SecretState.UNKNOWN, malformed=True)
        self._queue(self._record(parsed, (), SecretState.UNKNOWN, now))

    def _record(self, parsed: Parsed, items: tuple[ItemFact, ...], state: SecretState,
                now: dt.datetime) -> SealedSecretRecord:
        return SealedSecretRecord(
            cluster=self.cluster, namespace=parsed.ref[0], name=parsed.ref[1], uid=parsed.uid,
            resource_version=parsed.resource_version, generation=parsed.generation,
            scope=parsed.scope, ciphertext_fingerprint=parsed.ciphertext_fingerprint,
            items=items, state=state, synced=parsed.synced,
            synced_message=parsed.synced_message, observed_at=now,
            malformed_reason=parsed.malformed_reason)

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

    def delete(self, ref: Ref) -> None:
        self.forget(ref)
        self.pending_deletes.add(ref)

    def pending_count(self) -> int:
        return len(self.pending_upserts) + len(self.pending_deletes) + len(self.pending_states)

    def take_pending(self) -> Pending:
        pending = Pending(upserts=list(self.pending_upserts.values()),
                          deletes=sorted(self.pending_deletes),
                          states=[(ns, name, state)
                                  for (ns, name), state in self.pending_states.items()])
        self.pending_upserts, self.pending_deletes, self.pending_states = {}, set(), {}
        return pending
