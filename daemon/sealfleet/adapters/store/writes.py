"""The store's write transactions, as plain synchronous functions.

Each function is the body of exactly one transaction: the Store runs it on its
single writer thread between ``BEGIN IMMEDIATE`` and ``COMMIT`` (or ``ROLLBACK`` when
it raises), so every public write is atomic and batched — one executemany per
statement, never one round trip per row.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from cryptography.hazmat.primitives import serialization

from sealfleet.adapters.store import codec, reads
from sealfleet.adapters.store.kek import KeyEncryptionKey
from sealfleet.adapters.store.records import KeyHolding, KeyMaterial, KeyRecord, SealedSecretRecord
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import StoreError

KEY_STATES = ("active", "retired", "compromised")

# ---------------------------------------------------------------- clusters


def upsert_cluster(conn: sqlite3.Connection, name: str, server: str | None,
                   controller_namespace: str, controller_name: str) -> None:
    now = codec.now()
    conn.execute(
        "INSERT INTO clusters (name, server, controller_namespace, controller_name, "
        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET server = excluded.server, "
        "controller_namespace = excluded.controller_namespace, "
        "controller_name = excluded.controller_name, updated_at = excluded.updated_at, "
        "removed_at = NULL",
        (name, server, controller_namespace, controller_name, now, now))


def ensure_clusters(conn: sqlite3.Connection, names: Iterable[str]) -> None:
    """Create placeholder rows for clusters first seen through their objects."""
    now = codec.now()
    conn.executemany("INSERT OR IGNORE INTO clusters (name, created_at, updated_at) "
                     "VALUES (?, ?, ?)", [(name, now, now) for name in set(names)])


def mark_cluster_removed(conn: sqlite3.Connection, name: str) -> None:
    now = codec.now()
    conn.execute("UPDATE clusters SET removed_at = coalesce(removed_at, ?), updated_at = ? "
                 "WHERE name = ?", (now, now, name))


def record_cluster_status(conn: sqlite3.Connection, name: str, *, reachable: bool,
                          last_error: str | None, last_scan_at: dt.datetime | None,
                          scan_duration_ms: int | None, sealing_key: str | None,
                          sealing_key_source: str | None) -> None:
    ensure_clusters(conn, [name])
    conn.execute(
        "UPDATE clusters SET reachable = ?, last_error = ?, "
        "last_scan_at = coalesce(?, last_scan_at), "
        "scan_duration_ms = coalesce(?, scan_duration_ms), "
        "sealing_key = coalesce(?, sealing_key), "
        "sealing_key_source = coalesce(?, sealing_key_source), updated_at = ? WHERE name = ?",
        (int(reachable), last_error, codec.optional_timestamp(last_scan_at), scan_duration_ms,
         sealing_key, sealing_key_source, codec.now(), name))


# ---------------------------------------------------------------- keys

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
    now = codec.now()
    conn.executemany(_UPSERT_KEY, [_key_row(r, now) for r in records])
    conn.executemany("INSERT OR IGNORE INTO fleet_master_keys (fingerprint) VALUES (?)",
                     [(r.fingerprint,) for r in records if r.fleet_master])


def store_key_material(conn: sqlite3.Connection, materials: Sequence[KeyMaterial],
                       kek: KeyEncryptionKey | None) -> None:
    if kek is None:
        raise StoreError("cannot store private keys: no key-encryption key configured")
    now = codec.now()
    records = []
    secrets = []
    for material in materials:
        key = material.key
        records.append(KeyRecord(
            fingerprint=key.fingerprint, not_before=key.not_before, not_after=key.not_after,
            source=material.source, certificate_pem=key.certificate.pem.decode() or None))
        der = key.private_key.private_bytes(serialization.Encoding.DER,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
        secrets.append((kek.encrypt(der, fingerprint=key.fingerprint), kek.id, now,
                        key.fingerprint))
    upsert_keys(conn, records)
    conn.executemany("UPDATE sealing_keys SET private_key_ciphertext = ?, kek_id = ?, "
                     "updated_at = ? WHERE fingerprint = ?", secrets)


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
    audit(conn, "key_state_changed", actor,
          {"fingerprint": fingerprint, "from": row[0], "to": state, "reason": reason})


def set_fleet_master(conn: sqlite3.Connection, fingerprints: Sequence[str]) -> None:
    wanted = sorted(set(fingerprints))
    conn.execute("DELETE FROM fleet_master_keys")
    conn.executemany("INSERT INTO fleet_master_keys (fingerprint) VALUES (?)",
                     [(f,) for f in wanted])
    conn.execute("UPDATE sealing_keys SET fleet_master = fingerprint IN "
                 "(SELECT fingerprint FROM fleet_master_keys)")


def replace_cluster_keys(conn: sqlite3.Connection, cluster: str,
                         holdings: Sequence[KeyHolding]) -> None:
    ensure_clusters(conn, [cluster])
    conn.execute("DELETE FROM cluster_keys WHERE cluster = ?", (cluster,))
    conn.executemany(
        "INSERT INTO cluster_keys (cluster, secret_name, fingerprint, label_value, "
        "resource_version, creation_timestamp, observed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(cluster, h.secret_name, h.fingerprint, h.label_value, h.resource_version,
          codec.optional_timestamp(h.creation_timestamp), codec.timestamp(h.observed_at))
         for h in holdings])


# ---------------------------------------------------------------- sealed secrets

_columns = codec.SEALED_SECRET_COLUMNS
# Built from the constant column list (never input), so it stays in step with codec.
_UPSERT_SEALED_SECRET = (
    f"INSERT INTO sealed_secrets ({', '.join(_columns)}, first_seen, state_changed_at) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(_columns))}, ?{len(_columns)}, ?{len(_columns)}) "
    "ON CONFLICT (cluster, namespace, name) DO UPDATE SET "
    # A new uid is a new object under an old name: it is first seen now.
    "first_seen = CASE WHEN uid = excluded.uid THEN first_seen ELSE excluded.last_seen END, "
    "state_changed_at = CASE WHEN state = excluded.state THEN state_changed_at "
    "ELSE excluded.last_seen END, "
    + ", ".join(f"{c} = excluded.{c}" for c in _columns[3:])
)


def ensure_key_refs(conn: sqlite3.Connection, fingerprints: Iterable[str]) -> dict[str, str]:
    """fingerprint -> reference (migration 0002) for each key, creating missing ones.

    Only ever inserts: a reference, once given, stays its key's for good, so callers
    may cache what this returns.
    """
    wanted = sorted(set(fingerprints))
    if not wanted:
        return {}
    conn.executemany("INSERT OR IGNORE INTO key_refs (fingerprint) VALUES (?)",
                     [(f,) for f in wanted])
    refs: dict[str, str] = {}
    for offset in range(0, len(wanted), 500):
        chunk = wanted[offset:offset + 500]
        refs.update((fingerprint, str(ref)) for ref, fingerprint in conn.execute(
            "SELECT id, fingerprint FROM key_refs "  # noqa: S608 (placeholders only)
            f"WHERE fingerprint IN ({', '.join('?' * len(chunk))})", chunk))
    return refs


def upsert_sealed_secrets(conn: sqlite3.Connection,
                          records: Sequence[SealedSecretRecord]) -> None:
    refs = ensure_key_refs(conn, codec.fingerprints_of(records))
    upsert_sealed_secret_rows(conn, {r.cluster for r in records},
                              codec.sealed_secret_rows(records, refs))


def upsert_sealed_secret_rows(conn: sqlite3.Connection, clusters: Iterable[str],
                              rows: Sequence[tuple[Any, ...]]) -> None:
    """Rows already encoded by ``codec.sealed_secret_rows`` (see Store.upsert_sealed_secrets)."""
    ensure_clusters(conn, clusters)
    conn.executemany(_UPSERT_SEALED_SECRET, rows)


def delete_sealed_secrets(conn: sqlite3.Connection, cluster: str,
                          refs: Sequence[tuple[str, str]]) -> None:
    conn.executemany("DELETE FROM sealed_secrets WHERE cluster = ? AND namespace = ? "
                     "AND name = ?", [(cluster, ns, name) for ns, name in refs])


def delete_sealed_secrets_not_seen_since(conn: sqlite3.Connection, cluster: str,
                                         since: dt.datetime) -> int:
    cursor = conn.execute("DELETE FROM sealed_secrets WHERE cluster = ? AND last_seen < ?",
                          (cluster, codec.timestamp(since)))
    return cursor.rowcount


def update_states(conn: sqlite3.Connection, cluster: str,
                  states: Sequence[tuple[str, str, SecretState]]) -> None:
    now = codec.now()
    conn.executemany(
        "UPDATE sealed_secrets SET state = ?1, state_changed_at = ?2 "
        "WHERE cluster = ?3 AND namespace = ?4 AND name = ?5 AND state != ?1",
        [(str(state), now, cluster, ns, name) for ns, name, state in states])


# ---------------------------------------------------------------- caches and logs


def put_attributions(conn: sqlite3.Connection,
                     attributions: Sequence[tuple[str, str | None]],
                     known_keys_epoch: int) -> None:
    now = codec.now()
    conn.executemany(
        "INSERT INTO attributions (item_hash, fingerprint, known_keys_epoch, attributed_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (item_hash) DO UPDATE SET "
        "fingerprint = excluded.fingerprint, known_keys_epoch = excluded.known_keys_epoch, "
        "attributed_at = excluded.attributed_at",
        [(item_hash, fingerprint, known_keys_epoch, now)
         for item_hash, fingerprint in attributions])


def prune_attributions(conn: sqlite3.Connection, older_than: dt.datetime) -> int:
    """Forget cached attributions no stored SealedSecret refers to any more.

    Only entries attributed before *older_than* go, so an item attributed just before
    its SealedSecret is written is not lost in between.  Returns how many were removed.
    """
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS live_item_hashes "
                 "(item_hash TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM temp.live_item_hashes")
    rows = conn.execute("SELECT items, keys FROM sealed_secrets").fetchall()
    refs = reads.key_refs(conn)
    conn.executemany("INSERT OR IGNORE INTO temp.live_item_hashes VALUES (?)",
                     ((fact.item_hash,) for items, keys in rows
                      for fact in codec.decode_items(items, keys, refs)))
    cursor = conn.execute("DELETE FROM attributions WHERE attributed_at < ? AND item_hash NOT IN "
                          "(SELECT item_hash FROM temp.live_item_hashes)",
                          (codec.timestamp(older_than),))
    conn.execute("DELETE FROM temp.live_item_hashes")
    return cursor.rowcount


def set_watch_resource_version(conn: sqlite3.Connection, cluster: str, resource: str,
                               resource_version: str | None) -> None:
    if resource_version is None:
        conn.execute("DELETE FROM watch_resource_versions WHERE cluster = ? AND resource = ?",
                     (cluster, resource))
        return
    conn.execute(
        "INSERT INTO watch_resource_versions (cluster, resource, resource_version, updated_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (cluster, resource) DO UPDATE SET "
        "resource_version = excluded.resource_version, updated_at = excluded.updated_at",
        (cluster, resource, resource_version, codec.now()))


def audit(conn: sqlite3.Connection, event: str, actor: str, details: dict[str, Any]) -> int:
    cursor = conn.execute("INSERT INTO audit_log (at, event, actor, details) VALUES (?, ?, ?, ?)",
                          (codec.now(), event, actor, codec.encode_json(details)))
    return int(cursor.lastrowid or 0)
