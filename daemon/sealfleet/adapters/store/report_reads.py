"""The inventory reads behind the API's report, in one read transaction, cheaply.

The report is rebuilt every second or so while a first pass churns the inventory, and
for 1,000 clusters its reads were some 90 CPU-ms of Python per rebuild: turning rows
into records (timestamps parsed, dataclasses made) for every cluster and every key, the
unchanged ones included, and reading each key's certificate, which the report never
shows.  Here only the columns the report uses are read, and a row seen at the previous
read gives back the record made from it then (:class:`RowCache`): rows are tuples that
SQLite makes in C, so an unchanged row costs a dictionary look-up.  The CPU time the
read took is returned with it, for the refresher's pacing.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from sealfleet.adapters.store import codec, inventory_reads, keys_sql
from sealfleet.adapters.store.records import ClusterRecord, KeyRecord, KeyUsage
from sealfleet.domain.staleness import SecretState

R = TypeVar("R")

_KEY_SELECT = ("SELECT fingerprint, not_before, not_after, source, state, fleet_master, "
               "private_key_ciphertext IS NOT NULL, NULL FROM sealing_keys "
               "ORDER BY not_before, fingerprint")   # as keys_sql.list_keys, no certificate


class RowCache:
    """Records by the rows they were made from, kept from one read to the next (one read
    at a time: the report's rebuilds are serialised)."""

    def __init__(self) -> None:
        self.clusters: dict[tuple[Any, ...], ClusterRecord] = {}
        self.keys: dict[tuple[Any, ...], KeyRecord] = {}


@dataclasses.dataclass(frozen=True)
class ReportRows:
    clusters: list[ClusterRecord]                      # by name, removed ones included
    keys: list[KeyRecord]                              # certificate_pem left out (None)
    holdings: dict[str, list[tuple[str, str | None]]]  # cluster -> (fingerprint, label)
    malformed: dict[str, list[tuple[str, str]]]        # cluster -> (Secret name, reason)
    counts: dict[str, dict[SecretState, int]]
    usage: dict[str, KeyUsage]
    master: list[str]
    adopted: dict[str, list[str]]
    cpu: float                                         # CPU seconds of this read


def _cached(rows: list[tuple[Any, ...]], seen: dict[tuple[Any, ...], R],
            make: Callable[[tuple[Any, ...]], R]) -> tuple[list[R], dict[tuple[Any, ...], R]]:
    kept: dict[tuple[Any, ...], R] = {}
    out = []
    for row in rows:
        record = seen.get(row)
        if record is None:
            record = make(row)
        kept[row] = record
        out.append(record)
    return out, kept


def report_rows(conn: sqlite3.Connection, cache: RowCache) -> ReportRows:
    started = time.thread_time()
    clusters, cache.clusters = _cached(
        conn.execute(codec.CLUSTER_SELECT + " ORDER BY name").fetchall(), cache.clusters,
        codec.cluster_record)
    keys, cache.keys = _cached(conn.execute(_KEY_SELECT).fetchall(), cache.keys,
                               codec.key_record)
    holdings: dict[str, list[tuple[str, str | None]]] = defaultdict(list)
    for cluster, fingerprint, label in conn.execute(
            "SELECT cluster, fingerprint, label_value FROM cluster_keys "
            "ORDER BY cluster, secret_name"):
        holdings[cluster].append((fingerprint, label))
    malformed: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for cluster, secret_name, reason in conn.execute(
            "SELECT cluster, secret_name, reason FROM malformed_key_secrets "
            "ORDER BY cluster, secret_name"):
        malformed[cluster].append((secret_name, reason))
    rows = ReportRows(clusters=clusters, keys=keys, holdings=dict(holdings),
                      malformed=dict(malformed), counts=inventory_reads.state_counts(conn),
                      usage=keys_sql.key_usage(conn), master=keys_sql.fleet_master(conn),
                      adopted=keys_sql.adopted_keys(conn), cpu=0.0)
    return dataclasses.replace(rows, cpu=time.thread_time() - started)
