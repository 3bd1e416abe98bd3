"""The keystore's transaction bodies and queries (see keys.py for ``store.keys``).

Sealing keys' public facts, the fleet master set and the encrypted private keys are
a system of record: a key whose Secret was deleted from every cluster exists only
here.  Nothing in this module sees a private key: bodies receive
:class:`~sealfleet.adapters.store.key_material.EncryptedKey` values already sealed,
and queries return ciphertext for key_material.py to open outside the transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sealfleet.adapters.store import audit, codec, inventory_reads, inventory_writes
from sealfleet.adapters.store.key_material import EncryptedKey, Refusal
from sealfleet.adapters.store.records import KeyRecord, KeyUsage, QuarantinedKey
from sealfleet.domain.keys import KeyState
from sealfleet.errors import StoreError

KEY_STATES = tuple(state.value for state in KeyState)

# On conflict: a certificate-less record never replaces known validity; 'cert-only'
# gives way to any real source; a key never silently becomes *less* severe (only
# set_key_state can un-retire or un-compromise a key, and that is audited).
_UPSERT_KEY = """
INSERT INTO sealing_keys (fingerprint, not_before, not_after, source, state, fleet_master,
                          certificate_pem, created_at, updated_at, state_changed_at)
VALUES (?, ?, ?, ?, ?,
        ? OR EXISTS (SELECT 1 FROM fleet_master_keys f WHERE f.fingerprint = ?1),
        ?, ?, ?, ?)
ON CONFLICT (fingerprint) DO UPDATE SET
    not_before = CASE WHEN excluded.certificate_pem IS NOT NULL OR certificate_pem IS NULL
                      THEN excluded.not_before ELSE not_before END,
    not_after = CASE WHEN excluded.certificate_pem IS NOT NULL OR certificate_pem IS NULL
                     THEN excluded.not_after ELSE not_after END,
    certificate_pem = coalesce(excluded.certificate_pem, certificate_pem),
    source = CASE WHEN source = 'cert-only' THEN excluded.source ELSE source END,
    state = CASE
        WHEN state = 'compromised' OR excluded.state = 'compromised' THEN 'compromised'
        WHEN state = 'retired' OR excluded.state = 'retired' THEN 'retired'
        ELSE 'active' END,
    state_changed_at = CASE
        WHEN state = 'compromised' OR excluded.state = state THEN state_changed_at
        WHEN state = 'retired' AND excluded.state = 'active' THEN state_changed_at
        ELSE excluded.updated_at END,
    updated_at = excluded.updated_at
"""


def _key_row(record: KeyRecord, now: str) -> tuple[Any, ...]:
    if record.state not in KEY_STATES:
        raise StoreError(f"key {record.fingerprint}: unknown state {record.state!r}")
    return (record.fingerprint, codec.timestamp(record.not_before),
            codec.timestamp(record.not_after), record.source, record.state,
            int(record.fleet_master), record.certificate_pem, now, now, now)


def upsert_keys(conn: sqlite3.Connection, records: Sequence[KeyRecord]) -> None:
    if not records:
        return
    now = codec.now()
    conn.executemany(_UPSERT_KEY, [_key_row(r, now) for r in records])
    conn.executemany("INSERT OR IGNORE INTO fleet_master_keys (fingerprint) VALUES (?)",
                     [(r.fingerprint,) for r in records if r.fleet_master])


def store_encrypted_keys(conn: sqlite3.Connection, sealed: Sequence[EncryptedKey]) -> None:
    """The keys' public facts, then their ciphertext, in one transaction."""
    upsert_keys(conn, _facts_of(sealed))
    _write_ciphertexts(conn, sealed)


def upsert_keys_and_material(conn: sqlite3.Connection, records: Sequence[KeyRecord],
                             sealed: Sequence[EncryptedKey]) -> None:
    """Public facts, then private keys, as :func:`upsert_keys` and
    :func:`store_encrypted_keys` one after the other, in one transaction.

    A sealed key's facts that *records* already wrote as they are are not written
    again: the same row upserted twice, as a first pass did for every new key."""
    upsert_keys(conn, records)
    if sealed:
        written = {_key_row(r, "") for r in records}
        upsert_keys(conn, [f for f in _facts_of(sealed) if _key_row(f, "") not in written])
        _write_ciphertexts(conn, sealed)


def _facts_of(sealed: Sequence[EncryptedKey]) -> list[KeyRecord]:
    return [KeyRecord(fingerprint=k.fingerprint, not_before=k.not_before,
                      not_after=k.not_after, source=k.source,
                      certificate_pem=k.certificate_pem) for k in sealed]


def _write_ciphertexts(conn: sqlite3.Connection, sealed: Sequence[EncryptedKey]) -> None:
    now = codec.now()
    conn.executemany("UPDATE sealing_keys SET private_key_ciphertext = ?, kek_id = ?, "
                     "updated_at = ? WHERE fingerprint = ?",
                     [(k.ciphertext, k.kek_id, now, k.fingerprint) for k in sealed])


def set_key_state(conn: sqlite3.Connection, fingerprint: str, state: str, *, actor: str,
                  reason: str | None) -> None:
    if state not in KEY_STATES:
        raise StoreError(f"unknown key state {state!r}: expected one of {', '.join(KEY_STATES)}")
    row = conn.execute("SELECT state FROM sealing_keys WHERE fingerprint = ?",
                       (fingerprint,)).fetchone()
    if row is None:
        raise StoreError(f"no such key: {fingerprint}")
    now = codec.now()
    conn.execute("UPDATE sealing_keys SET state = ?, state_reason = ?, state_changed_at = ?, "
                 "updated_at = ? WHERE fingerprint = ?", (state, reason, now, now, fingerprint))
    audit.append_entry(conn, "key_state_changed", actor,
                       {"fingerprint": fingerprint, "from": row[0], "to": state,
                        "reason": reason})


def set_fleet_master(conn: sqlite3.Connection, fingerprints: Sequence[str]) -> None:
    wanted = sorted(set(fingerprints))
    conn.execute("DELETE FROM fleet_master_keys")
    conn.executemany("INSERT INTO fleet_master_keys (fingerprint) VALUES (?)",
                     [(f,) for f in wanted])
    conn.execute("UPDATE sealing_keys SET fleet_master = fingerprint IN "
                 "(SELECT fingerprint FROM fleet_master_keys)")


def purge_private_key(conn: sqlite3.Connection, fingerprint: str, actor: str) -> None:
    """Drop a key's private half for good (its public facts stay); audited with it."""
    now = codec.now()
    conn.execute("UPDATE sealing_keys SET private_key_ciphertext = NULL, kek_id = NULL, "
                 "updated_at = ? WHERE fingerprint = ?", (now, fingerprint))
    audit.append_entry(conn, "key_purged", actor, {"fingerprint": fingerprint})


def fleet_master(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute(
        "SELECT fingerprint FROM fleet_master_keys ORDER BY fingerprint")]


def list_keys(conn: sqlite3.Connection) -> list[KeyRecord]:
    rows = conn.execute(codec.KEY_SELECT + " ORDER BY not_before, fingerprint")
    return [codec.key_record(row) for row in rows]


def encrypted_keys(conn: sqlite3.Connection,
                   only: Sequence[str] | None = None) -> list[EncryptedKey]:
    """Every stored private key (or those of *only*), still encrypted, oldest first."""
    wanted = None if only is None else codec.encode_json(list(only))
    rows = conn.execute(
        "SELECT fingerprint, not_before, not_after, source, certificate_pem, "
        "private_key_ciphertext, kek_id FROM sealing_keys "
        "WHERE private_key_ciphertext IS NOT NULL AND (?1 IS NULL OR fingerprint IN "
        "(SELECT value FROM json_each(?1))) ORDER BY not_before, fingerprint", (wanted,))
    return [EncryptedKey(fingerprint=fingerprint, not_before=codec.parse_time(not_before),
                         not_after=codec.parse_time(not_after), source=source,
                         certificate_pem=certificate_pem, ciphertext=bytes(ciphertext),
                         kek_id=kek_id)
            for fingerprint, not_before, not_after, source, certificate_pem, ciphertext, kek_id
            in rows]


def quarantine_key_material(conn: sqlite3.Connection,
                            entries: Sequence[tuple[EncryptedKey, Refusal]],
                            ) -> list[tuple[EncryptedKey, Refusal]]:
    """Move contradicting material out of the keystore (migration 0004); returns what moved.

    A row is moved only if it still holds the very ciphertext that was checked, so a
    key stored again meanwhile is left alone.  Each move is audited.
    """
    now = codec.now()
    moved = []
    for row, refusal in entries:
        cursor = conn.execute(
            "UPDATE sealing_keys SET private_key_ciphertext = NULL, kek_id = NULL, "
            "certificate_pem = CASE WHEN ? THEN NULL ELSE certificate_pem END, updated_at = ? "
            "WHERE fingerprint = ? AND private_key_ciphertext = ?",
            (refusal.certificate_wrong, now, row.fingerprint, row.ciphertext))
        if cursor.rowcount == 0:
            continue
        conn.execute(
            "INSERT INTO quarantined_key_material (fingerprint, reason, private_key_ciphertext, "
            "kek_id, certificate_pem, quarantined_at) VALUES (?, ?, ?, ?, ?, ?)",
            (row.fingerprint, refusal.reason, row.ciphertext, row.kek_id, row.certificate_pem,
             now))
        audit.append_entry(conn, "key_material_quarantined", "sealfleet",
                           {"fingerprint": row.fingerprint, "reason": refusal.reason,
                            "certificate_removed": refusal.certificate_wrong})
        moved.append((row, refusal))
    return moved


def quarantined_keys(conn: sqlite3.Connection) -> list[QuarantinedKey]:
    rows = conn.execute("SELECT fingerprint, reason, quarantined_at FROM "
                        "quarantined_key_material ORDER BY id")
    return [QuarantinedKey(fingerprint, reason, codec.parse_time(at))
            for fingerprint, reason, at in rows]


@dataclass
class _Usage:
    clusters: list[str] = field(default_factory=list)
    items: int = 0
    sealed_secrets: int = 0


def key_usage(conn: sqlite3.Connection) -> dict[str, KeyUsage]:
    """fingerprint -> usage, for every key stored, held by a cluster, or sealing an item."""
    usage: dict[str, _Usage] = {}

    def entry(fingerprint: str) -> _Usage:
        return usage.setdefault(fingerprint, _Usage())

    for (fingerprint,) in conn.execute("SELECT fingerprint FROM sealing_keys"):
        entry(fingerprint)
    for fingerprint, cluster in conn.execute(
            "SELECT DISTINCT fingerprint, cluster FROM cluster_keys ORDER BY fingerprint, cluster"):
        entry(fingerprint).clusters.append(cluster)
    refs = inventory_reads.key_refs(conn)
    # Single-key SealedSecrets (nearly all): a covering scan of sealed_secrets_by_key.
    for keys, secrets, items in conn.execute(
            "SELECT keys, count(*), sum(key_items) FROM sealed_secrets "
            "INDEXED BY sealed_secrets_by_key WHERE keys != '' AND keys NOT LIKE '% %' "
            "GROUP BY keys"):
        single = entry(refs[keys])
        single.items += items
        single.sealed_secrets += secrets
    # The few whose items were sealed by several keys: count per item.
    for items_text, keys in conn.execute(
            "SELECT items, keys FROM sealed_secrets WHERE id IN (SELECT id FROM sealed_secrets "
            "INDEXED BY sealed_secrets_by_key WHERE keys LIKE '% %')"):
        for ref in keys.split(" "):
            entry(refs[ref]).sealed_secrets += 1
        for fact in codec.decode_items(items_text, keys, refs):
            if fact.fingerprint is not None:
                entry(fact.fingerprint).items += 1
    return {fingerprint: KeyUsage(clusters=tuple(u.clusters), items=u.items,
                                  sealed_secrets=u.sealed_secrets)
            for fingerprint, u in usage.items()}


def record_adoption(conn: sqlite3.Connection, cluster: str, fingerprints: Sequence[str],
                    job_id: str | None) -> None:
    """Keys adopted from *cluster* (idempotent: the first adoption's time and job kept)."""
    now = codec.now()
    inventory_writes.ensure_clusters(conn, [cluster])
    conn.executemany(
        "INSERT OR IGNORE INTO adopted_keys (cluster, fingerprint, adopted_at, job_id) "
        "VALUES (?, ?, ?, ?)", [(cluster, fp, now, job_id) for fp in fingerprints])


def adopted_keys(conn: sqlite3.Connection) -> dict[str, list[str]]:
    """cluster -> the keys adopted from it that are still wanted there (state active)."""
    out: dict[str, list[str]] = {}
    for cluster, fingerprint in conn.execute(
            "SELECT a.cluster, a.fingerprint FROM adopted_keys a JOIN sealing_keys k "
            "ON k.fingerprint = a.fingerprint WHERE k.state = 'active' "
            "ORDER BY a.cluster, a.fingerprint"):
        out.setdefault(cluster, []).append(fingerprint)
    return out
