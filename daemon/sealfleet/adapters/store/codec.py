"""How records become rows and rows become records.

Times are stored as ISO 8601 UTC text with a fixed width (microseconds always
present), so SQL text comparison is time comparison.  A SealedSecret's items are one
compact text column plus references to the distinct keys that sealed them (layout
documented in migrations 0001 and 0002): one row write per SealedSecret instead of
one per item.  A key reference is the text of its ``key_refs`` id; *refs* arguments
map fingerprints to references (encoding) or references to fingerprints (decoding).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sealfleet.adapters.store.records import (
    ClusterRecord,
    ItemFact,
    JsonObject,
    JsonValue,
    KeyHolding,
    KeyRecord,
    SealedSecretRecord,
)
from sealfleet.domain.observed import ManagedBy
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import StoreError

_json_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_json_decode = json.JSONDecoder().decode


def timestamp(value: dt.datetime) -> str:
    """Fixed-width UTC text for a timezone-aware datetime (naive ones are refused)."""
    if value.tzinfo is None:
        raise StoreError("naive datetime given to the store; use timezone-aware UTC times")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def optional_timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else timestamp(value)


def parse_timestamp(text: str | None) -> dt.datetime | None:
    return None if text is None else dt.datetime.fromisoformat(text)


def parse_time(text: str) -> dt.datetime:
    """A NOT NULL time column."""
    return dt.datetime.fromisoformat(text)


def now() -> str:
    return timestamp(dt.datetime.now(dt.UTC))


def encode_items(items: Sequence[ItemFact],
                 refs: Mapping[str, str]) -> tuple[str, str, int]:
    """(items column, keys column, key_items) for one SealedSecret; see migration 0001.

    *refs* maps each fingerprint to its reference; a KeyError names a key that has
    none yet.  Hot path of every upsert (100k rows per full scan), hence plain string
    building rather than ``json.dumps`` (about seven times slower here), and a fast
    path for the usual case of every item sealed by the same key.
    """
    if not items:
        return "", "", 0
    first = items[0].fingerprint
    lines = []
    for fact in items:
        if fact.fingerprint != first or first is None:
            text, keys, attributed = _encode_items_general(items, refs)
            break
        lines.append(f"{fact.item}\t{fact.item_hash}\t0")
    else:
        text, keys, attributed = "\n".join(lines), refs[first] if first else "", len(items)
    # Item names are Secret data keys ([-._a-zA-Z0-9]+); anything else that could make
    # the text ambiguous (a tab, a newline, a leading "[") is stored as JSON instead.
    if (text[0] == "[" or text.count("\t") != 2 * len(items)
            or text.count("\n") != len(items) - 1):
        return _encode_items_json(items, refs)
    return text, keys, attributed


def _encode_items_general(items: Sequence[ItemFact],
                          refs: Mapping[str, str]) -> tuple[str, str, int]:
    """Items sealed by several keys, or that no known key opens."""
    keys: list[str] = []
    lines = []
    attributed = 0
    for fact in items:
        fingerprint = fact.fingerprint
        if fingerprint is None:
            lines.append(f"{fact.item}\t{fact.item_hash}\t-")
            continue
        attributed += 1
        if fingerprint not in keys:
            keys.append(fingerprint)
        lines.append(f"{fact.item}\t{fact.item_hash}\t{keys.index(fingerprint)}")
    return "\n".join(lines), " ".join(refs[k] for k in keys), attributed


def _encode_items_json(items: Sequence[ItemFact],
                       refs: Mapping[str, str]) -> tuple[str, str, int]:
    keys = list(dict.fromkeys(i.fingerprint for i in items if i.fingerprint is not None))
    return (_json_compact([[i.item, i.item_hash, i.fingerprint] for i in items]),
            " ".join(refs[k] for k in keys), sum(1 for i in items if i.fingerprint is not None))


def decode_items(text: str, keys: str, refs: Mapping[str, str]) -> tuple[ItemFact, ...]:
    """The items of one row; *refs* maps key references back to fingerprints."""
    if text.startswith("["):
        return tuple(ItemFact(item, item_hash, fingerprint)
                     for item, item_hash, fingerprint in _json_decode(text))
    if not text:
        return ()
    fingerprints = [refs[ref] for ref in keys.split(" ")] if keys else []
    facts = []
    for line in text.split("\n"):
        name, item_hash, index = line.split("\t")
        facts.append(ItemFact(name, item_hash, None if index == "-" else fingerprints[int(index)]))
    return tuple(facts)


def fingerprints_of(records: Sequence[SealedSecretRecord]) -> set[str]:
    """Every key fingerprint the records' items name."""
    return {fact.fingerprint for r in records for fact in r.items
            if fact.fingerprint is not None}


def encode_json(value: JsonValue) -> str:
    try:
        return _json_compact(value)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"value is not JSON-serialisable: {type(exc).__name__}") from exc


def decode_json(text: str) -> JsonValue:
    return cast(JsonValue, _json_decode(text))


def decode_json_object(text: str) -> JsonObject:
    """A JSON object column (job params, audit details): always written as an object."""
    value = decode_json(text)
    if not isinstance(value, dict):
        raise StoreError(f"expected a JSON object in the store, found {type(value).__name__}")
    return value


# Column order shared by the upsert statement and sealed_secret_row().
SEALED_SECRET_COLUMNS = (
    "cluster", "namespace", "name", "uid", "resource_version", "generation", "scope",
    "item_count", "ciphertext_fingerprint", "items", "keys", "key_items", "state", "synced",
    "synced_message",
    "malformed_reason", "managed_by_tool", "managed_by_name", "managed_by_hint",
    "last_seen",   # last: the upsert reuses its parameter for first_seen/state_changed_at
)


def sealed_secret_rows(records: Sequence[SealedSecretRecord],
                       refs: Mapping[str, str]) -> list[tuple[Any, ...]]:
    """Rows for the upsert; the observed_at text is cached since a batch shares it.

    Raises KeyError when an item names a key *refs* has no reference for.
    """
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    last_time: dt.datetime | None = None
    last_text = ""
    for r in records:
        if r.observed_at is not last_time:
            last_time, last_text = r.observed_at, timestamp(r.observed_at)
        items, keys, key_items = encode_items(r.items, refs)
        managed = r.managed_by
        # sqlite3 binds int and str subclasses as such: Scope (IntEnum) is stored as its
        # number, SecretState (StrEnum) as its value, a bool as 0/1, with no conversion.
        append((r.cluster, r.namespace, r.name, r.uid, r.resource_version, r.generation,
                r.scope, len(r.items), r.ciphertext_fingerprint, items, keys, key_items,
                r.state, r.synced, r.synced_message, r.malformed_reason,
                managed.tool if managed else None, managed.name if managed else None,
                managed.hint if managed else None, last_text))
    return rows


SEALED_SECRET_SELECT = (
    "SELECT cluster, namespace, name, uid, resource_version, generation, scope, "  # noqa: S105
    "ciphertext_fingerprint, items, keys, state, synced, synced_message, last_seen, "
    "malformed_reason, managed_by_tool, managed_by_name, managed_by_hint FROM sealed_secrets"
)


def sealed_secret_record(row: Sequence[Any], refs: Mapping[str, str]) -> SealedSecretRecord:
    (cluster, namespace, name, uid, resource_version, generation, scope, fingerprint,
     items, keys, state, synced, synced_message, last_seen, malformed_reason,
     managed_tool, managed_name, managed_hint) = row
    return SealedSecretRecord(
        cluster=cluster, namespace=namespace, name=name, uid=uid,
        resource_version=resource_version, generation=generation, scope=Scope(scope),
        ciphertext_fingerprint=fingerprint, items=decode_items(items, keys, refs),
        state=SecretState(state), synced=None if synced is None else bool(synced),
        synced_message=synced_message, observed_at=dt.datetime.fromisoformat(last_seen),
        malformed_reason=malformed_reason,
        managed_by=None if managed_tool is None else ManagedBy(
            managed_tool, managed_name or "", bool(managed_hint)))


KEY_SELECT = (
    "SELECT fingerprint, not_before, not_after, source, state, fleet_master, "
    "private_key_ciphertext IS NOT NULL, certificate_pem FROM sealing_keys"
)


def key_record(row: Sequence[Any]) -> KeyRecord:
    fingerprint, not_before, not_after, source, state, master, has_private, cert = row
    return KeyRecord(fingerprint=fingerprint, not_before=dt.datetime.fromisoformat(not_before),
                     not_after=dt.datetime.fromisoformat(not_after), source=source,
                     state=state, fleet_master=bool(master),
                     has_private_key=bool(has_private), certificate_pem=cert)


CLUSTER_SELECT = (
    "SELECT name, server, controller_namespace, controller_name, reachable, last_error, "
    "last_scan_at, scan_duration_ms, sealing_key, sealing_key_source, removed_at, "
    "controller_error, controller_state, controller_key_renew_seconds FROM clusters"
)


def cluster_record(row: Sequence[Any]) -> ClusterRecord:
    (name, server, controller_namespace, controller_name, reachable, last_error,
     last_scan_at, scan_duration_ms, sealing_key, sealing_key_source, removed_at,
     controller_error, controller_state, key_renew_seconds) = row
    return ClusterRecord(
        name=name, server=server, controller_namespace=controller_namespace,
        controller_name=controller_name,
        reachable=None if reachable is None else bool(reachable), last_error=last_error,
        last_scan_at=parse_timestamp(last_scan_at), scan_duration_ms=scan_duration_ms,
        sealing_key=sealing_key, sealing_key_source=sealing_key_source,
        removed_at=parse_timestamp(removed_at), controller_error=controller_error,
        controller_state=controller_state, controller_key_renew_seconds=key_renew_seconds)


def key_holding(row: Sequence[Any]) -> KeyHolding:
    fingerprint, secret_name, label, rv, created, observed = row
    return KeyHolding(fingerprint=fingerprint, secret_name=secret_name, label_value=label,
                      resource_version=rv, creation_timestamp=parse_timestamp(created),
                      observed_at=dt.datetime.fromisoformat(observed))


def encode_cursor(cluster: str, namespace: str, name: str) -> str:
    """An opaque keyset cursor: the last (cluster, namespace, name) of a page."""
    raw = _json_compact([cluster, namespace, name]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = _json_decode(raw.decode())
    except (ValueError, UnicodeDecodeError):
        raise ValueError("malformed cursor") from None
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(part, str) and _is_unicode_text(part) for part in value)):
        raise ValueError("malformed cursor")
    return value[0], value[1], value[2]


def _is_unicode_text(text: str) -> bool:
    """False for a JSON "\\ud800" escape's lone surrogate, which SQLite cannot bind."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
