"""Benchmark: the inventory store at fleet scale (100 clusters x 1,000 SealedSecrets).

Run: ``python bench/store.py [--secrets 100000] [--clusters 100] [--batch 500]``

Prints rows/s for sealfleet's ``Store.upsert_sealed_secrets`` (through the async
API, batches as the cluster workers send them), beside a raw ``sqlite3`` executemany
of the same rows into a table with the same columns and unique key, measured in the
same run, with the ratio.  The baseline uses WAL and ``synchronous=NORMAL`` like the
store, with SQLite's other defaults; the store additionally maintains two indexes
(by state, by key), encodes the records, and upserts rather than inserts.  Rows per
CPU-second are printed too, since wall time on a shared machine is noisy.  Then the
main read queries the API runs.  Target: the upsert reaches >= 100k rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime as dt
import gc
import hashlib
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sealfleet.adapters.store import Store, codec
from sealfleet.adapters.store.records import ItemFact, SealedSecretRecord
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

ITEM_NAMES = ("username", "password", "token", "api-key", "ca.crt", "tls.key", "url")


def fake_fingerprint(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def make_records(secrets: int, clusters: int, seed: int = 7) -> list[SealedSecretRecord]:
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    per_cluster = secrets // clusters
    records = []
    for c in range(clusters):
        cluster = f"cluster-{c:03d}"
        keys = [fake_fingerprint(f"{cluster}-{k}") for k in range(3)]  # 2 old, 1 current
        # In (namespace, name) order, as the apiserver lists them (etcd key order).
        for i in range(per_cluster):
            namespace = f"team-{i * 40 // per_cluster:02d}"
            key = keys[2] if rng.random() < 0.7 else rng.choice(keys[:2])
            items = tuple(
                ItemFact(name, hashlib.sha256(f"{cluster}/{i}/{name}".encode()).hexdigest(),
                         key if rng.random() > 0.01 else None)
                for name in rng.sample(ITEM_NAMES, rng.choice((2, 3, 3, 4))))
            state = (SecretState.UNKNOWN if any(it.fingerprint is None for it in items)
                     else SecretState.CURRENT if key == keys[2] else SecretState.STALE)
            records.append(SealedSecretRecord(
                cluster=cluster, namespace=namespace, name=f"app-{i:05d}",
                uid=f"{c:08x}-0000-4000-8000-{i:012x}", resource_version=str(1000 + i),
                generation=1, scope=Scope.STRICT,
                ciphertext_fingerprint=hashlib.sha256(f"{cluster}{i}".encode()).hexdigest(),
                items=items, state=state, synced=True, synced_message=None, observed_at=now))
    return records


class Clock:
    """Wall time and this process's CPU time (all threads) since creation."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def raw_baseline(path: Path, rows: list[tuple[Any, ...]], batch: int) -> tuple[float, float]:
    """Plain executemany of the same rows, same columns and unique key, one tx per batch."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    columns = codec.SEALED_SECRET_COLUMNS
    conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {', '.join(columns)}, "
                 "UNIQUE (cluster, namespace, name))")
    sql = f"INSERT INTO t ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"  # noqa: S608
    clock = Clock()
    for offset in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[offset:offset + batch])
        conn.execute("COMMIT")
    elapsed = clock.read()
    conn.close()
    return elapsed


def remove_round(folder: Path, round_: int) -> None:
    for leftover in folder.glob(f"*{round_}.db*"):
        leftover.unlink()


async def timed_upsert(store: Store, records: list[SealedSecretRecord], batch: int,
                       producers: int = 1) -> tuple[float, float]:
    """Upsert in batches from *producers* concurrent tasks (the daemon's cluster workers)."""
    batches = [records[offset:offset + batch] for offset in range(0, len(records), batch)]

    async def produce(mine: list[list[SealedSecretRecord]]) -> None:
        for chunk in mine:
            await store.inventory.upsert_sealed_secrets(chunk)

    clock = Clock()
    async with asyncio.TaskGroup() as group:
        for index in range(producers):
            group.create_task(produce(batches[index::producers]))
    return clock.read()


async def query_ms(fn: Callable[[], Awaitable[Any]], repeat: int = 20) -> tuple[float, float]:
    await fn()  # warm the page cache and the reader threads
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), max(samples)


async def round_trips(tmp: Path, calls: int = 2000) -> tuple[float, float, float]:
    """Microseconds per awaited call: aiosqlite, and the Store's one-hop transaction.

    Returns (aiosqlite per await, aiosqlite 4-statement transaction, Store transaction
    of the same 4 statements): why the Store runs whole transactions on its own thread.
    """
    import aiosqlite

    path = tmp / "roundtrip.db"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await conn.execute("PRAGMA journal_mode = WAL")       # the Store's pragmas
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        start = time.perf_counter()
        for _ in range(calls):
            await conn.execute("SELECT 1")
        per_await = (time.perf_counter() - start) / calls * 1e6
        start = time.perf_counter()
        for i in range(calls // 4):
            await conn.execute("BEGIN IMMEDIATE")
            await conn.execute("INSERT INTO t VALUES (?)", (i,))
            await conn.execute("DELETE FROM t WHERE x = ?", (i,))
            await conn.execute("COMMIT")
        per_tx_aiosqlite = (time.perf_counter() - start) / (calls // 4) * 1e6

    def body(conn: sqlite3.Connection, i: int) -> None:
        conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("DELETE FROM t WHERE x = ?", (i,))

    async with Store.open(tmp / "roundtrip-store.db") as store:
        await store.write(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS t (x)"))
        start = time.perf_counter()
        for i in range(calls // 4):
            await store.write(body, i)
        per_tx_store = (time.perf_counter() - start) / (calls // 4) * 1e6
    return per_await, per_tx_aiosqlite, per_tx_store


async def first_pass_writes(tmp: Path, clusters: int, at_once: int) -> tuple[float, float, float]:
    """A first pass's writes per cluster (its row, its status, its 20 SealedSecrets and
    their watch positions in one flush, its status again) for *clusters* clusters,
    *at_once* of them at a time: (wall s, CPU s, writes per transaction)."""
    records = make_records(clusters * 20, clusters)
    by_cluster: dict[str, list[SealedSecretRecord]] = {}
    for record in records:
        by_cluster.setdefault(record.cluster, []).append(record)
    gate = asyncio.Semaphore(at_once)
    async with Store.open(tmp / f"first-pass-{at_once}.db") as store:
        inventory = store.inventory

        async def one(name: str, rows: list[SealedSecretRecord]) -> None:
            async with gate:
                await inventory.upsert_cluster(name, server="https://10.0.0.1:6443")
                await inventory.record_cluster_status(name, reachable=True)
                await inventory.apply_cluster_changes(
                    name, upserts=rows,
                    resource_versions={"sealedsecrets": "12", "secrets": "13"})
                await inventory.record_cluster_status(name, reachable=True)

        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one(name, rows) for name, rows in by_cluster.items()))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        writes, transactions = store.write_groups
    return wall, cpu, writes / max(transactions, 1)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--producers", type=int, default=4,
                        help="concurrent writers for the concurrent-insert figure")
    args = parser.parse_args()

    records = make_records(args.secrets, args.clusters)
    items = sum(len(r.items) for r in records)
    print(f"{len(records):,} SealedSecrets, {items:,} items, {args.clusters} clusters, "
          f"batches of {args.batch}; SQLite {sqlite3.sqlite_version}")
    changed = [dataclasses.replace(r, resource_version="9" + r.resource_version,
                                   items=r.items[::-1]) for r in records]
    # The baseline inserts exactly the rows the store writes (keys as references).
    refs = {fp: str(ref) for ref, fp in enumerate(sorted(codec.fingerprints_of(records)), 1)}
    rows = codec.sealed_secret_rows(records, refs)
    # 200k pre-built records (~2M objects) that a daemon never holds at once would make
    # every full GC pass crawl them; move them out of the collector's way.
    gc.collect()
    gc.freeze()
    with tempfile.TemporaryDirectory() as tmp:
        per_await, tx_aiosqlite, tx_store = await round_trips(Path(tmp))
    print(f"round trip: aiosqlite {per_await:.0f} us per awaited call; a 4-statement "
          f"transaction {tx_aiosqlite:.0f} us through aiosqlite, {tx_store:.0f} us as one "
          f"Store.write (ratio {tx_aiosqlite / tx_store:.1f}x)")
    # Group commit: one cluster at a time, every write is a transaction of its own (the
    # baseline); 32 at once (the daemon's connect_concurrency) they share commits.
    with tempfile.TemporaryDirectory() as tmp:
        alone = await first_pass_writes(Path(tmp), 1000, 1)
        grouped = await first_pass_writes(Path(tmp), 1000, 32)
    print(f"first-pass writes of 1,000 clusters: one at a time {alone[0]:.2f} s, "
          f"{alone[1]:.2f} CPU-s ({alone[2]:.1f} writes per transaction); 32 at once "
          f"{grouped[0]:.2f} s, {grouped[1]:.2f} CPU-s ({grouped[2]:.1f} writes per "
          f"transaction): {alone[1] / grouped[1]:.1f}x less CPU")
    # The machine is shared: alternate baseline and sealfleet, keep each one's best round.
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            timings = {"baseline": raw_baseline(Path(tmp) / f"raw{round_}.db", rows, args.batch)}
            async with Store.open(Path(tmp) / f"inventory{round_}.db") as store:
                timings["insert (first scan)"] = await timed_upsert(store, records, args.batch)
            async with Store.open(Path(tmp) / f"concurrent{round_}.db") as store:
                timings[f"insert, {args.producers} concurrent writers"] = await timed_upsert(
                    store, records, args.batch, args.producers)
            async with Store.open(Path(tmp) / f"inventory{round_}.db") as store:
                timings["re-upsert unchanged (rescan)"] = await timed_upsert(store, records,
                                                                             args.batch)
                timings["update with changed items"] = await timed_upsert(store, changed,
                                                                          args.batch)
            for label, (wall, cpu) in timings.items():
                best[label] = max(best.get(label, 0.0), len(records) / wall)
                best_cpu[label] = max(best_cpu.get(label, 0.0), len(records) / cpu)
            if round_ < args.rounds - 1:  # ~150 MB a round: keep only the last for the reads
                remove_round(Path(tmp), round_)
        base_rate, base_cpu = best.pop("baseline"), best_cpu.pop("baseline")
        print(f"\nupsert through Store, best of {args.rounds} rounds; baseline = raw sqlite3 "
              f"executemany of the same rows: {base_rate:,.0f} rows/s wall, "
              f"{base_cpu:,.0f} rows per CPU-second")
        print(f"  {'':<34} {'rows/s':>10} {'ratio':>6}   {'rows/CPU-s':>10} {'ratio':>6}")
        for label, rate in best.items():
            cpu_rate = best_cpu[label]
            print(f"  {label:<34} {rate:>10,.0f} {rate / base_rate:6.2f}   "
                  f"{cpu_rate:>10,.0f} {cpu_rate / base_cpu:6.2f}")
        status = "OK" if best["insert (first scan)"] >= 100_000 else "BELOW TARGET"
        cpu_status = "OK" if best_cpu["insert (first scan)"] >= 100_000 else "BELOW TARGET"
        # One producer awaits each batch, so its rows/s can exceed its rows per CPU-second
        # only through the machine's idle time; on a loaded machine the wall figure drops
        # with the baseline's (compare the baseline's wall and CPU rates above).
        print(f"  target >= 100,000 rows/s for the insert: {status} (wall), "
              f"{cpu_status} (per CPU-second, i.e. on one unloaded core)")

        async with Store.open(Path(tmp) / f"inventory{args.rounds - 1}.db") as store:
            some_key = records[0].items[0].fingerprint or ""
            _, cursor = await store.inventory.list_sealed_secrets(limit=100)
            queries: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("state_counts (all clusters)", store.inventory.state_counts),
                ("list_clusters", store.inventory.list_clusters),
                ("key_usage (all keys)", store.keys.key_usage),
                ("list_keys", store.keys.list_keys),
                ("sealed-secrets page 1 (100)",
                 lambda: store.inventory.list_sealed_secrets(limit=100)),
                ("sealed-secrets page 2 (cursor)",
                 lambda: store.inventory.list_sealed_secrets(limit=100, cursor=cursor)),
                ("page, cluster filter", lambda: store.inventory.list_sealed_secrets(
                    cluster="cluster-050", limit=100)),
                ("page, state=stale", lambda: store.inventory.list_sealed_secrets(
                    state=SecretState.STALE, limit=100)),
                ("secrets using one key",
                 lambda: store.inventory.sealed_secrets_using_key(some_key)),
                ("sealed_secrets_of_cluster", lambda: store.inventory.sealed_secrets_of_cluster(
                    "cluster-050")),
            ]
            print("\nreads, ms (median / max of 20)")
            for label, fn in queries:
                median, worst = await query_ms(fn)
                print(f"  {label:<32} {median:8.2f} / {worst:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
