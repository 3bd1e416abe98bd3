"""The inventory store: one SQLite writer thread, a few reader threads, asyncio on top.

Why stdlib ``sqlite3`` on dedicated threads rather than aiosqlite: every awaited
aiosqlite call is a queue round trip to its thread (30-60 us, ``bench/store.py``
prints it), so a write made of a BEGIN, a few executemany calls and a COMMIT pays
that several times, and aiosqlite offers no public way to run a whole function on its
thread.  Here a whole transaction is one plain function (see ``writes.py``)
submitted once to a single-thread executor that owns the writer connection: one hop
per transaction, whatever its size, and the executor's queue serialises writers for
free.  No await can ever land between BEGIN and COMMIT, so a cancelled caller cannot
leave a transaction open.  Reads go to a small pool of threads, each with its own
``query_only`` connection, so API queries run beside a long write (WAL) and never
queue behind it, which one aiosqlite connection could not do.

Lifecycle: ``Store.open()`` is an async context manager.  It opens the writer
(WAL, ``synchronous=NORMAL``), verifies the checksums of applied migrations, applies
the pending ones, then opens the readers.  Leaving it waits for in-flight
transactions to finish (they commit or roll back, never half-apply) and closes all
connections.  Every sqlite3 error is translated to :class:`StoreError` once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sealfleet.adapters.store import codec, jobs, migrations, reads, writes
from sealfleet.adapters.store.kek import KeyEncryptionKey
from sealfleet.adapters.store.records import KeyHolding, KeyMaterial, KeyRecord, SealedSecretRecord
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import FleetError, StoreError

P = ParamSpec("P")
T = TypeVar("T")

PAGE_SIZE = 16384
WRITER_CACHE_KIB = 64 * 1024
WAL_CHECKPOINT_PAGES = 8192          # x 16 KiB pages = 128 MiB
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
BUSY_TIMEOUT_MS = 10_000   # another process (e.g. `sealfleet db status`) may hold a lock briefly


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """A connection with the store's pragmas; autocommit mode (we issue BEGIN ourselves)."""
    if read_only:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
    else:
        if not path.exists():
            # The file holds encrypted keys and the inventory: owner-only from birth.
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            except OSError as exc:
                raise StoreError(f"{path}: cannot create database "
                                 f"({exc.strerror or type(exc).__name__})") from exc
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Only takes effect on a new, empty database (before WAL is set).  16 KiB pages
        # hold ~70 SealedSecret rows each: measured ~20% faster bulk upserts than 4 KiB.
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # The writer touches every index of a 100k-row inventory on a full scan; a
        # cache that holds them measured ~10% faster upserts than the 2 MiB default.
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        # WAL appends a fresh copy of every page a transaction touches; checkpointing
        # every 128 MiB instead of every 16 MiB copies hot index pages back far less
        # often (measured ~6% less CPU, ~20% more rows/s on a 100k-row scan).  The WAL
        # file is truncated back to 64 MiB after each checkpoint.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = OFF")  # references document intent; rows may arrive first
    return conn


class Store:
    """Async facade over the inventory database.  Create it with :meth:`open`."""

    def __init__(self, path: Path, *, kek: KeyEncryptionKey | None, readers: int,
                 migrations_dir: Path | None) -> None:
        self.path = path
        self._kek = kek
        self._migrations = migrations.discover(migrations_dir)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix="store-reader",
                                               initializer=self._open_reader)
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.applied_at_open: list[str] = []
        # fingerprint -> key reference, for encoding rows on the caller's thread; only
        # the event loop touches it, and references never change once given.
        self._key_refs: dict[str, str] = {}

    # ------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: str | os.PathLike[str], *, kek: KeyEncryptionKey | None = None,
                   readers: int = 2, migrations_dir: Path | None = None,
                   migrate: bool = True) -> AsyncIterator[Store]:
        """Open the database, apply pending migrations (unless *migrate* is False), yield."""
        store = cls(Path(path), kek=kek, readers=readers, migrations_dir=migrations_dir)
        try:
            await store._run(store._writer_pool, store._start, migrate)
            yield store
        finally:
            await asyncio.to_thread(store._close)

    def _start(self, migrate: bool) -> None:
        self._writer = connect(self.path)
        if migrate:
            self.applied_at_open = migrations.apply_pending(self._writer, self._migrations)
        else:
            migrations.verify(self._writer, self._migrations)
            if migrations.pending(self._writer, self._migrations):
                raise StoreError(f"{self.path}: schema is not up to date; "
                                 "run `sealfleet db migrate`")

    def _open_reader(self) -> None:
        # Runs once in each reader thread; a failure surfaces on that thread's first query.
        try:
            conn = connect(self.path, read_only=True)
        except sqlite3.Error as exc:
            self._local.error = f"{type(exc).__name__}: {exc}"
            return
        self._local.conn = conn
        with self._readers_lock:
            self._readers.append(conn)

    def _close(self) -> None:
        # Waiting for the writer thread lets in-flight transactions commit or roll back.
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        with self._readers_lock:
            connections = [*self._readers, *([self._writer] if self._writer else [])]
            self._readers.clear()
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._writer = None

    # ------------------------------------------------------------ plumbing

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[P, T],
                   *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(pool, functools.partial(fn, *args, **kwargs))
        except RuntimeError as exc:  # the executor was shut down
            raise StoreError(f"{self.path}: store is closed") from exc
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: {type(exc).__name__}: {exc}") from exc

    def _transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run *fn(writer, ...)* as one IMMEDIATE transaction on the writer thread."""
        conn = self._writer
        if conn is None:
            raise StoreError(f"{self.path}: store is not open")
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args, **kwargs)
            conn.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT (disk full, I/O error): never leave the single
            # writer connection inside a transaction, or every later write would fail.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _query(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            error = getattr(self._local, "error", "unknown error")
            raise StoreError(f"{self.path}: cannot open a reader connection ({error})")
        # One read transaction per query: a consistent snapshot across its statements.
        conn.execute("BEGIN")
        try:
            return fn(conn, *args, **kwargs)
        finally:
            conn.execute("COMMIT")

    async def write(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args)`` as one write transaction (for store modules' own use)."""
        return await self._run(self._writer_pool, self._transaction, fn, *args, **kwargs)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args)`` on a reader connection in one read transaction."""
        return await self._run(self._reader_pool, self._query, fn, *args, **kwargs)

    # ------------------------------------------------------------ writes

    async def upsert_cluster(self, name: str, *, server: str | None = None,
                             controller_namespace: str = "kube-system",
                             controller_name: str = "sealed-secrets-controller") -> None:
        await self.write(writes.upsert_cluster, name, server, controller_namespace,
                         controller_name)

    async def mark_cluster_removed(self, name: str) -> None:
        await self.write(writes.mark_cluster_removed, name)

    async def record_cluster_status(self, name: str, *, reachable: bool,
                                    last_error: str | None = None,
                                    last_scan_at: dt.datetime | None = None,
                                    scan_duration_ms: int | None = None,
                                    sealing_key: str | None = None,
                                    sealing_key_source: str | None = None) -> None:
        await self.write(writes.record_cluster_status, name, reachable=reachable,
                         last_error=last_error, last_scan_at=last_scan_at,
                         scan_duration_ms=scan_duration_ms, sealing_key=sealing_key,
                         sealing_key_source=sealing_key_source)

    async def upsert_keys(self, records: Sequence[KeyRecord]) -> None:
        if records:
            await self.write(writes.upsert_keys, list(records))

    async def store_key_material(self, materials: Sequence[KeyMaterial]) -> None:
        if materials:
            await self.write(writes.store_key_material, list(materials), self._kek)

    async def set_key_state(self, fingerprint: str, state: str, *, actor: str,
                            reason: str | None = None) -> None:
        await self.write(writes.set_key_state, fingerprint, state, actor=actor, reason=reason)

    async def set_fleet_master(self, fingerprints: Sequence[str]) -> None:
        await self.write(writes.set_fleet_master, list(fingerprints))

    async def replace_cluster_keys(self, cluster: str, holdings: Sequence[KeyHolding]) -> None:
        await self.write(writes.replace_cluster_keys, cluster, list(holdings))

    async def upsert_sealed_secrets(self, records: Sequence[SealedSecretRecord]) -> None:
        """Insert or update by (cluster, namespace, name), in one transaction.

        The rows are encoded here, on the caller's thread (about 2.5 us per record),
        so that the writer thread spends its time inside SQLite, which releases the
        GIL: with several cluster workers writing, encoding the next batch overlaps
        with writing this one instead of queueing behind it.
        """
        if not records:
            return
        try:
            rows = codec.sealed_secret_rows(records, self._key_refs)
        except KeyError:
            # A key no row has named before (rare: keys are few and long-lived): give it
            # a reference first, in its own transaction; references are never undone.
            self._key_refs.update(await self.write(writes.ensure_key_refs,
                                                   codec.fingerprints_of(records)))
            rows = codec.sealed_secret_rows(records, self._key_refs)
        await self.write(writes.upsert_sealed_secret_rows, {r.cluster for r in records}, rows)

    async def delete_sealed_secrets(self, cluster: str,
                                    refs: Sequence[tuple[str, str]]) -> None:
        if refs:
            await self.write(writes.delete_sealed_secrets, cluster, list(refs))

    async def delete_sealed_secrets_not_seen_since(self, cluster: str,
                                                   since: dt.datetime) -> int:
        """Delete the cluster's rows whose last_seen is before *since*; return how many."""
        return await self.write(writes.delete_sealed_secrets_not_seen_since, cluster, since)

    async def update_states(self, cluster: str,
                            states: Sequence[tuple[str, str, SecretState]]) -> None:
        if states:
            await self.write(writes.update_states, cluster, list(states))

    async def put_attributions(self, attributions: Sequence[tuple[str, str | None]], *,
                               known_keys_epoch: int) -> None:
        if attributions:
            await self.write(writes.put_attributions, list(attributions), known_keys_epoch)

    async def prune_attributions(self, *, older_than: dt.datetime) -> int:
        """Drop cache entries older than *older_than* that no stored item refers to.

        Holds the write lock for about a second per 100k SealedSecrets: run it rarely
        (e.g. daily), not on the scan path."""
        return await self.write(writes.prune_attributions, older_than)

    async def set_watch_resource_version(self, cluster: str, resource: str,
                                         rv: str | None) -> None:
        await self.write(writes.set_watch_resource_version, cluster, resource, rv)

    async def audit(self, event: str, actor: str, details: dict[str, Any]) -> int:
        """Append to the audit log (never secrets in *details*); returns the entry id."""
        return await self.write(writes.audit, event, actor, dict(details))

    # ------------------------------------------------------------ jobs

    async def create_job(self, kind: str, params: dict[str, Any], refs: Sequence[str], *,
                         job_id: str | None = None) -> str:
        """Journal a job and every object it will touch (all pending); returns its id."""
        job_id = job_id or uuid.uuid4().hex
        await self.write(jobs.create_job, job_id, kind, dict(params), list(refs))
        return job_id

    async def set_job_state(self, job_id: str, state: str, *, error: str | None = None) -> None:
        await self.write(jobs.set_job_state, job_id, state, error)

    async def update_job_items(self, job_id: str,
                               updates: Sequence[tuple[str, str, str | None]]) -> None:
        """(ref, state, error) per object; moving an object to 'running' counts an attempt."""
        if updates:
            await self.write(jobs.update_job_items, job_id, list(updates))

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        return await self.read(jobs.get_job, job_id)

    async def list_jobs(self, *, state: str | None = None,
                        limit: int = 100) -> list[dict[str, Any]]:
        return await self.read(jobs.list_jobs, state, limit)

    async def job_items(self, job_id: str, *,
                        states: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The job's objects in ref order, optionally only those in *states* (to resume)."""
        return await self.read(jobs.job_items, job_id, None if states is None else list(states))

    # ------------------------------------------------------------ reads

    async def get_attributions(self, item_hashes: Sequence[str], *,
                               known_keys_epoch: int | None = None) -> dict[str, str | None]:
        """Cached attributions.  With *known_keys_epoch*, cached "unknown" (None) answers
        from another epoch are left out, so the caller retries them with the new keys."""
        if not item_hashes:
            return {}
        return await self.read(reads.get_attributions, list(item_hashes), known_keys_epoch)

    async def get_watch_resource_version(self, cluster: str, resource: str) -> str | None:
        return await self.read(reads.get_watch_resource_version, cluster, resource)

    async def load_private_keys(self) -> list[SealingKey]:
        return await self.read(reads.load_private_keys, self._kek)

    async def list_keys(self) -> list[KeyRecord]:
        return await self.read(reads.list_keys)

    async def key_usage(self) -> dict[str, dict[str, Any]]:
        """fingerprint -> {"clusters": [holding cluster names], "items": n, "sealed_secrets": n}."""
        return await self.read(reads.key_usage)

    async def list_clusters(self) -> list[dict[str, Any]]:
        return await self.read(reads.list_clusters)

    async def cluster_key_holdings(self, cluster: str) -> list[KeyHolding]:
        return await self.read(reads.cluster_key_holdings, cluster)

    async def state_counts(self) -> dict[str, dict[SecretState, int]]:
        return await self.read(reads.state_counts)

    async def list_sealed_secrets(self, cluster: str | None = None,
                                  namespace: str | None = None,
                                  state: SecretState | str | None = None, limit: int = 100,
                                  cursor: str | None = None,
                                  ) -> tuple[list[SealedSecretRecord], str | None]:
        """One keyset page in (cluster, namespace, name) order and the next page's cursor
        (None on the last page).  A malformed cursor or state is an InputError."""
        if state is not None:
            try:
                state = SecretState(state)
            except ValueError:
                from sealfleet.errors import InputError
                raise InputError(f"unknown state {state!r}") from None
        return await self.read(reads.list_sealed_secrets, cluster=cluster, namespace=namespace,
                               state=state, limit=limit, cursor=cursor)

    async def sealed_secrets_of_cluster(self, cluster: str) -> list[SealedSecretRecord]:
        return await self.read(reads.sealed_secrets_of_cluster, cluster)

    async def sealed_secrets_using_key(self, fingerprint: str, *, cluster: str | None = None,
                                       ) -> list[tuple[str, str, str]]:
        return await self.read(reads.sealed_secrets_using_key, fingerprint, cluster=cluster)

    async def audit_entries(self, *, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        return await self.read(reads.audit_entries, after_id=after_id, limit=limit)

    async def migration_status(self) -> list[tuple[str, dt.datetime | None]]:
        statuses = await self.read(migrations.status, self._migrations)
        return [(s.name, s.applied_at) for s in statuses]


__all__ = ["FleetError", "Store", "StoreError", "connect"]
