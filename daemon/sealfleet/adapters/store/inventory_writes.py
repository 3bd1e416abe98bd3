"""The inventory's write transactions, as plain synchronous functions.

The inventory (clusters, SealedSecrets, key holdings, the attribution cache, watch
positions) is a cache of what the clusters say: it can be rebuilt by rescanning.
Each function is the body of exactly one transaction: the Store runs it on its
single writer thread between ``BEGIN IMMEDIATE`` and ``COMMIT`` (or ``ROLLBACK`` when
it raises), so every public write is atomic and batched — one executemany per
statement, never one round trip per row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sealfleet.adapters.store import codec, inventory_reads
from sealfleet.adapters.store.records import (
    ClusterRegistration,
    ClusterStatus,
    KeyHolding,
    KeyHoldings,
    MalformedKeySecret,
    SealedSecretRecord,
)
from sealfleet.domain.staleness import SecretState

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
                          sealing_key_source: str | None, controller_error: str | None,
                          controller_state: str | None,
                          key_renew_seconds: int | None,
                          registration: ClusterRegistration | None = None) -> None:
    if registration is not None:
        upsert_cluster(conn, name, registration.server, registration.controller_namespace,
                       registration.controller_name)
    else:
        ensure_clusters(conn, [name])
    conn.execute(
        "UPDATE clusters SET reachable = ?, last_error = ?, controller_error = ?, "
        "controller_state = coalesce(?, controller_state), "
        "controller_key_renew_seconds = coalesce(?, controller_key_renew_seconds), "
        "last_scan_at = coalesce(?, last_scan_at), "
        "scan_duration_ms = coalesce(?, scan_duration_ms), "
        "sealing_key = coalesce(?, sealing_key), "
        "sealing_key_source = coalesce(?, sealing_key_source), updated_at = ? WHERE name = ?",
        (int(reachable), last_error, controller_error, controller_state, key_renew_seconds,
         codec.optional_timestamp(last_scan_at), scan_duration_ms,
         sealing_key, sealing_key_source, codec.now(), name))


# ---------------------------------------------------------------- key holdings


def replace_cluster_keys(conn: sqlite3.Connection, cluster: str,
                         holdings: Sequence[KeyHolding],
                         malformed: Sequence[MalformedKeySecret]) -> None:
    ensure_clusters(conn, [cluster])
    conn.execute("DELETE FROM malformed_key_secrets WHERE cluster = ?", (cluster,))
    conn.executemany(
        "INSERT INTO malformed_key_secrets (cluster, secret_name, reason, observed_at) "
        "VALUES (?, ?, ?, ?)",
        [(cluster, m.secret_name, m.reason, codec.timestamp(m.observed_at)) for m in malformed])
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
    upsert_encoded(conn, {r.cluster for r in records}, [], records)


def upsert_encoded(conn: sqlite3.Connection, clusters: Iterable[str],
                   rows: Sequence[tuple[Any, ...]],
                   unencoded: Sequence[SealedSecretRecord]) -> dict[str, str]:
    """*rows* encoded by the caller, and *unencoded* records, which name keys without a
    reference yet: given one here, in the same transaction.  Returns the references
    given (for the caller's cache)."""
    refs: dict[str, str] = {}
    if unencoded:
        refs = ensure_key_refs(conn, codec.fingerprints_of(unencoded))
        rows = [*rows, *codec.sealed_secret_rows(unencoded, refs)]
    if rows:
        upsert_sealed_secret_rows(conn, clusters, rows)
    return refs


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


# ---------------------------------------------------------------- caches


def put_attributions(conn: sqlite3.Connection,
                     attributions: Sequence[tuple[str, str | None]],
                     known_keys_epoch: int) -> None:
    put_attribution_rows(conn, [(item_hash, fingerprint, known_keys_epoch)
                                for item_hash, fingerprint in attributions])


def put_attribution_rows(conn: sqlite3.Connection,
                         rows: Sequence[tuple[str, str | None, int]]) -> None:
    """(item hash, fingerprint or None, keys epoch) per item, each epoch its own."""
    now = codec.now()
    conn.executemany(
        "INSERT INTO attributions (item_hash, fingerprint, known_keys_epoch, attributed_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (item_hash) DO UPDATE SET "
        "fingerprint = excluded.fingerprint, known_keys_epoch = excluded.known_keys_epoch, "
        "attributed_at = excluded.attributed_at",
        [(item_hash, fingerprint, epoch, now) for item_hash, fingerprint, epoch in rows])


def prune_attributions(conn: sqlite3.Connection, older_than: dt.datetime) -> int:
    """Forget cached attributions no stored SealedSecret refers to any more.

    Only entries attributed before *older_than* go, so an item attributed just before
    its SealedSecret is written is not lost in between.  Returns how many were removed.
    """
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS live_item_hashes "
                 "(item_hash TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("DELETE FROM temp.live_item_hashes")
    # Git documents (migration 0007) hold items too: their answers are just as live.
    rows = conn.execute("SELECT items, keys FROM sealed_secrets UNION ALL "
                        "SELECT items, keys FROM git_sealed_secrets").fetchall()
    refs = inventory_reads.key_refs(conn)
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


def apply_cluster_changes(conn: sqlite3.Connection, cluster: str,
                          rows: Sequence[tuple[Any, ...]], deletes: Sequence[tuple[str, str]],
                          states: Sequence[tuple[str, str, SecretState]],
                          resource_versions: Mapping[str, str],
                          unencoded: Sequence[SealedSecretRecord] = (),
                          holdings: KeyHoldings | None = None,
                          status: ClusterStatus | None = None) -> dict[str, str]:
    """See Inventory.apply_cluster_changes (*rows* encoded as for upserts; *unencoded*
    records name keys without a reference yet: given one here, in the same transaction).
    Returns the references given."""
    refs = upsert_encoded(conn, (cluster,), rows, unencoded)
    if deletes:
        delete_sealed_secrets(conn, cluster, deletes)
    if states:
        update_states(conn, cluster, states)
    for resource, resource_version in resource_versions.items():
        set_watch_resource_version(conn, cluster, resource, resource_version)
    if holdings is not None:
        replace_cluster_keys(conn, cluster, holdings.holdings, holdings.malformed)
    if status is not None:
        record_cluster_status(conn, cluster, **status_fields(status))
    return refs


def status_fields(status: ClusterStatus) -> dict[str, Any]:
    """*status* as :func:`record_cluster_status`'s keyword arguments."""
    return {field.name: getattr(status, field.name) for field in dataclasses.fields(status)}
