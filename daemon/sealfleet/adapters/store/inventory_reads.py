"""The inventory's queries, as plain synchronous functions run on reader connections.

Every query here is shaped by an index of the first migration: sealed secrets are
paged by keyset over the ``UNIQUE (cluster, namespace, name)`` index (or the
``(state, cluster, namespace, name)`` index when filtering by state), never by
OFFSET, so page N costs the same as page 1 with 100k rows.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sealfleet.adapters.store import codec
from sealfleet.adapters.store.records import (
    ClusterRecord,
    KeyHolding,
    MalformedKeySecret,
    SealedSecretRecord,
)
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import InputError

# SQLite's default limit on host parameters is 32766 (3.32+); stay far below it.
_CHUNK = 900


def key_refs(conn: sqlite3.Connection) -> dict[str, str]:
    """reference -> fingerprint for every key reference (migration 0002).

    Read in the caller's transaction, so it covers every row that transaction sees;
    a fleet has hundreds of keys at most, so this costs well under a millisecond.
    """
    return {str(ref): fingerprint
            for ref, fingerprint in conn.execute("SELECT id, fingerprint FROM key_refs")}


def holds_attributions(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM attributions LIMIT 1").fetchone() is not None


def get_attributions(conn: sqlite3.Connection, item_hashes: Sequence[str],
                     known_keys_epoch: int | None) -> dict[str, str | None]:
    result: dict[str, str | None] = {}
    unique = list(dict.fromkeys(item_hashes))
    for start in range(0, len(unique), _CHUNK):
        chunk = unique[start:start + _CHUNK]
        rows = conn.execute(
            "SELECT item_hash, fingerprint, known_keys_epoch FROM attributions "  # noqa: S608
            f"WHERE item_hash IN ({', '.join('?' * len(chunk))})",  # only placeholders
            chunk)
        for item_hash, fingerprint, epoch in rows:
            # A cached "unknown" is only trusted for the key set it was computed with.
            if fingerprint is None and known_keys_epoch is not None and epoch != known_keys_epoch:
                continue
            result[item_hash] = fingerprint
    return result


def get_watch_resource_version(conn: sqlite3.Connection, cluster: str,
                               resource: str) -> str | None:
    row = conn.execute("SELECT resource_version FROM watch_resource_versions "
                       "WHERE cluster = ? AND resource = ?", (cluster, resource)).fetchone()
    return None if row is None else str(row[0])


def list_clusters(conn: sqlite3.Connection) -> list[ClusterRecord]:
    return [codec.cluster_record(row) for row in conn.execute(codec.CLUSTER_SELECT
                                                              + " ORDER BY name")]


def key_holdings_by_cluster(conn: sqlite3.Connection) -> dict[str, list[KeyHolding]]:
    """Every cluster's key Secrets in one query (the report needs them all)."""
    held: dict[str, list[KeyHolding]] = defaultdict(list)
    for cluster, *row in conn.execute(
            "SELECT cluster, fingerprint, secret_name, label_value, resource_version, "
            "creation_timestamp, observed_at FROM cluster_keys ORDER BY cluster, secret_name"):
        held[cluster].append(codec.key_holding(row))
    return dict(held)


def malformed_key_secrets_by_cluster(
        conn: sqlite3.Connection) -> dict[str, list[MalformedKeySecret]]:
    found: dict[str, list[MalformedKeySecret]] = defaultdict(list)
    for cluster, secret_name, reason, observed_at in conn.execute(
            "SELECT cluster, secret_name, reason, observed_at FROM malformed_key_secrets "
            "ORDER BY cluster, secret_name"):
        found[cluster].append(MalformedKeySecret(secret_name, reason,
                                                 dt.datetime.fromisoformat(observed_at)))
    return dict(found)


def cluster_key_holdings(conn: sqlite3.Connection, cluster: str) -> list[KeyHolding]:
    rows = conn.execute(
        "SELECT fingerprint, secret_name, label_value, resource_version, creation_timestamp, "
        "observed_at FROM cluster_keys WHERE cluster = ? ORDER BY secret_name", (cluster,))
    return [codec.key_holding(row) for row in rows]


def state_counts(conn: sqlite3.Connection) -> dict[str, dict[SecretState, int]]:
    counts: dict[str, dict[SecretState, int]] = defaultdict(dict)
    for state, cluster, count in conn.execute(
            "SELECT state, cluster, count(*) FROM sealed_secrets GROUP BY state, cluster"):
        counts[cluster][SecretState(state)] = count
    return dict(counts)


def list_sealed_secrets(conn: sqlite3.Connection, *, cluster: str | None,
                        namespace: str | None, state: SecretState | str | None, limit: int,
                        cursor: str | None) -> tuple[list[SealedSecretRecord], str | None]:
    if limit < 1:
        raise InputError(f"limit must be at least 1, got {limit}")
    where: list[str] = []
    params: list[Any] = []
    if state is not None:
        where.append("state = ?")
        params.append(str(SecretState(state)))
    if cluster is not None:
        where.append("cluster = ?")
        params.append(cluster)
    if namespace is not None:
        where.append("namespace = ?")
        params.append(namespace)
    if cursor is not None:
        try:
            after = codec.decode_cursor(cursor)
        except ValueError:
            raise InputError("malformed cursor") from None
        # Columns an equality filter pins are left out of the keyset comparison: with
        # them in it, SQLite seeks on the row value alone and then sorts every later
        # row of the index (all clusters after this one) to page through one cluster.
        pinned: tuple[str, ...] = ()
        if cluster is not None:
            pinned = (cluster,) if namespace is None else (cluster, namespace)
        if after[:len(pinned)] < pinned:
            pass                      # the cursor lies before the filtered range
        elif after[:len(pinned)] > pinned:
            return [], None           # ... or after it: nothing is left
        else:
            columns = ("cluster", "namespace", "name")[len(pinned):]
            where.append(f"({', '.join(columns)}) > ({', '.join('?' * len(columns))})")
            params.extend(after[len(pinned):])
    index = "sealed_secrets_by_state" if state is not None else \
        "sqlite_autoindex_sealed_secrets_1"
    sql = (codec.SEALED_SECRET_SELECT + f" INDEXED BY {index}"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY cluster, namespace, name LIMIT ?")
    rows = conn.execute(sql, [*params, limit + 1]).fetchall()
    refs = key_refs(conn)
    records = [codec.sealed_secret_record(row, refs) for row in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = records[-1]
        next_cursor = codec.encode_cursor(last.cluster, last.namespace, last.name)
    return records, next_cursor


def sealed_secrets_of_cluster(conn: sqlite3.Connection,
                              cluster: str) -> list[SealedSecretRecord]:
    rows = conn.execute(codec.SEALED_SECRET_SELECT + " WHERE cluster = ? "
                        "ORDER BY namespace, name", (cluster,))
    refs = key_refs(conn)
    return [codec.sealed_secret_record(row, refs) for row in rows]


def records_sealed_with(conn: sqlite3.Connection, fingerprint: str) -> list[SealedSecretRecord]:
    """The whole records of the SealedSecrets with an item sealed by the key (a
    compromise's blast radius): the index finds them, one lookup each reads them."""
    refs = key_refs(conn)
    records = []
    for cluster, namespace, name in sealed_secrets_using_key(conn, fingerprint):
        row = conn.execute(codec.SEALED_SECRET_SELECT + " WHERE cluster = ? AND namespace = ? "
                           "AND name = ?", (cluster, namespace, name)).fetchone()
        if row is not None:
            records.append(codec.sealed_secret_record(row, refs))
    return records


def sealed_secrets_using_key(conn: sqlite3.Connection, fingerprint: str, *,
                             cluster: str | None = None) -> list[tuple[str, str, str]]:
    """(cluster, namespace, name) of the SealedSecrets with an item sealed by the key."""
    found = conn.execute("SELECT id FROM key_refs WHERE fingerprint = ?",
                         (fingerprint,)).fetchone()
    if found is None:
        return []  # no stored SealedSecret has ever named this key
    sql = ("SELECT cluster, namespace, name FROM sealed_secrets WHERE keys = :key "
           "AND (:cluster IS NULL OR cluster = :cluster) UNION ALL "
           "SELECT cluster, namespace, name FROM sealed_secrets WHERE id IN ("
           "SELECT id FROM sealed_secrets INDEXED BY sealed_secrets_by_key "
           "WHERE keys LIKE '% %' AND instr(' ' || keys || ' ', ' ' || :key || ' ') > 0) "
           "AND (:cluster IS NULL OR cluster = :cluster) ORDER BY 1, 2, 3")
    rows = conn.execute(sql, {"key": str(found[0]), "cluster": cluster})
    return [(c, ns, name) for c, ns, name in rows]

