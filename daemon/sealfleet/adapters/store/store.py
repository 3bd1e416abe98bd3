"""The store: one SQLite writer thread, a few reader threads, asyncio on top.

Why stdlib ``sqlite3`` on dedicated threads rather than aiosqlite: every awaited
aiosqlite call is a queue round trip to its thread (30-60 us, ``bench/store.py``
prints it), so a write made of a BEGIN, a few executemany calls and a COMMIT pays
that several times, and aiosqlite offers no public way to run a whole function on its
thread.  Here a whole transaction is one plain function (see ``inventory_writes.py``)
submitted once to a single-thread executor that owns the writer connection: one hop
per transaction, whatever its size, and the executor's queue serialises writers for
free (writes queued meanwhile share one transaction, each in its savepoint:
group_commit.py).  No await can ever land between BEGIN and COMMIT, so a cancelled
caller cannot leave a transaction open.  Reads go to a small pool of threads, each with
its own ``query_only`` connection, so API queries run beside a long write (WAL) and
never queue behind it, which one aiosqlite connection could not do.

What is stored falls into two kinds, and the opened store exposes one repository per
concern over the same writer and readers:

* ``store.inventory`` (inventory.py): clusters, SealedSecrets, key holdings, caches.
  A cache of what the clusters say; rebuildable by rescanning.
* ``store.keys`` (keys.py), ``store.audit`` (audit.py), ``store.jobs`` (jobs.py): the
  keystore, the audit log and the job journal.  The system of record; not rebuildable.

Lifecycle: ``Store.open()`` is an async context manager.  With ``exclusive=True`` (the
daemon) it first takes the single-instance lock (locking.py).  It opens the writer
(WAL, ``synchronous=NORMAL``), verifies the checksums of applied migrations, applies
the pending ones, and, given a KEK, checks that the KEK is the database's and moves
self-contradicting key material out of the keystore (keystore_checks.py); then it
opens the readers.  Leaving it waits for in-flight transactions to finish (they commit
or roll back, never half-apply), closes all connections and releases the lock.
Every sqlite3 error is translated to :class:`StoreError` once, here (connection.py);
``store.health`` remembers whether the last write reached the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar, cast

import structlog

from sealfleet.adapters.store import (
    connection,
    inventory_reads,
    keys_sql,
    keystore_checks,
    locking,
    migrations,
)
from sealfleet.adapters.store.audit import AuditLog
from sealfleet.adapters.store.git_inventory import GitInventory
from sealfleet.adapters.store.git_pending import GitPendingReseals
from sealfleet.adapters.store.group_commit import GroupCommitter, WriterClosed
from sealfleet.adapters.store.inventory import Inventory
from sealfleet.adapters.store.jobs import JobJournal
from sealfleet.adapters.store.kek import KeyEncryptionKey
from sealfleet.adapters.store.keys import KeyRecords
from sealfleet.adapters.store.records import (
    StoreHealth,
)
from sealfleet.errors import FleetError, StoreError

P = ParamSpec("P")
T = TypeVar("T")

log = structlog.get_logger(__name__)


class Store:
    """Async facade over the database.  Create it with :meth:`open`."""

    def __init__(self, path: Path, *, kek: KeyEncryptionKey | None, readers: int,
                 migrations_dir: Path | None, busy_timeout: float) -> None:
        self.path = path
        self._kek = kek
        self._busy_timeout = busy_timeout
        self._migrations = migrations.discover(migrations_dir)
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._commits = GroupCommitter(self._writer_pool, self._writer_connection)
        self._reader_pool = ThreadPoolExecutor(readers, thread_name_prefix="store-reader",
                                               initializer=self._open_reader)
        self._writer: sqlite3.Connection | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._instance_lock: locking.InstanceLock | None = None
        self.applied_at_open: list[str] = []
        self.reads = 0          # read transactions run so far
        self.health = StoreHealth()
        self.inventory = Inventory(self)
        self.keys = KeyRecords(self, kek)
        self.audit = AuditLog(self)
        self.jobs = JobJournal(self)
        self.git = GitInventory(self)
        self.git_pending = GitPendingReseals(self)

    # ------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: str | os.PathLike[str], *, kek: KeyEncryptionKey | None = None,
                   readers: int = 2, migrations_dir: Path | None = None,
                   migrate: bool = True, exclusive: bool = False,
                   busy_timeout: float = connection.BUSY_TIMEOUT_SECONDS,
                   ) -> AsyncIterator[Store]:
        """Open the database, apply pending migrations (unless *migrate* is False), yield.

        *exclusive*: hold the single-instance lock while open (the daemon does; a
        second one is refused).  *kek*: check it is the database's, and the keystore.
        *busy_timeout*: seconds to wait for another process's lock before a
        :class:`~sealfleet.errors.StoreBusyError`.
        """
        store = cls(Path(path), kek=kek, readers=readers, migrations_dir=migrations_dir,
                    busy_timeout=busy_timeout)
        try:
            await store._submit(store._writer_pool,
                                functools.partial(store._start, migrate, exclusive))
            yield store
        finally:
            try:
                if store._writer is not None:
                    # A cache's rows: a store that cannot take them loses only those.
                    with contextlib.suppress(StoreError):
                        await store.inventory.flush_attributions()
            finally:
                await asyncio.to_thread(store._close)

    def _start(self, migrate: bool, exclusive: bool) -> None:
        if exclusive:
            self._instance_lock = locking.acquire(self.path)
        self._writer = connection.connect(self.path, busy_timeout=self._busy_timeout)
        if migrate:
            self.applied_at_open = migrations.apply_pending(self._writer, self._migrations)
        else:
            migrations.verify(self._writer, self._migrations)
            if migrations.pending(self._writer, self._migrations):
                raise StoreError(f"{self.path}: schema is not up to date; "
                                 "run `sealfleet db migrate`")
        if self._kek is not None and keystore_checks.schema_ready(self._writer):
            self._check_keystore(self._kek)
        if exclusive:  # no other process writes while it is held
            self.inventory.note_opened(
                attributions_held=inventory_reads.holds_attributions(self._writer))

    def _check_keystore(self, kek: KeyEncryptionKey) -> None:
        """On the writer thread at open: the KEK is ours; no stored key contradicts its row."""
        if self._transaction(keystore_checks.verify_kek, kek, self.path):
            log.info("store_kek_adopted", database=str(self.path), kek_id=kek.id)
        rows = self._transaction(keys_sql.encrypted_keys)
        bad = keystore_checks.contradicting(rows, kek)   # decrypts outside any transaction
        if bad:
            for row, refusal in self._transaction(keys_sql.quarantine_key_material, bad):
                log.warning("store_key_material_quarantined", database=str(self.path),
                            fingerprint=row.fingerprint, reason=refusal.reason,
                            certificate_removed=refusal.certificate_wrong)

    def _open_reader(self) -> None:
        # Runs once in each reader thread; a failure surfaces on that thread's first query.
        try:
            conn = connection.connect(self.path, read_only=True,
                                      busy_timeout=self._busy_timeout)
        except StoreError as exc:
            self._local.error = str(exc)
            return
        self._local.conn = conn
        with self._readers_lock:
            self._readers.append(conn)

    def _close(self) -> None:
        # Waiting for the writer thread lets in-flight transactions commit or roll back.
        self._commits.close()
        self._writer_pool.shutdown(wait=True)
        self._reader_pool.shutdown(wait=True)
        with self._readers_lock:
            connections = [*self._readers, *([self._writer] if self._writer else [])]
            self._readers.clear()
        for conn in connections:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._writer = None
        if self._instance_lock is not None:   # last: nobody may start while we still write
            self._instance_lock.release()

    # ------------------------------------------------------------ plumbing

    async def _submit(self, pool: ThreadPoolExecutor, call: Callable[[], T]) -> T:
        """Run *call* on *pool*; sqlite3 errors come back as StoreError (translated once)."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(pool, call)
        except RuntimeError as exc:  # the executor was shut down
            raise StoreError(f"{self.path}: store is closed") from exc
        try:
            return await future
        except sqlite3.Error as exc:
            raise connection.translate(exc, self.path) from exc

    def _writer_connection(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreError(f"{self.path}: store is not open")
        return self._writer

    def _transaction(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], /,
                     *args: P.args, **kwargs: P.kwargs) -> T:
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

    def _query(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], /,
               *args: P.args, **kwargs: P.kwargs) -> T:
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

    async def write(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], /,
                    *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(conn, *args)`` atomically, in a transaction it may share with the
        writes queued beside it (:mod:`group_commit`; for store modules' own use).

        A failure of the database itself (not a refusal by *fn*) is remembered in
        :attr:`health` until the next write succeeds.
        """
        try:
            result = cast(T, await self._commits.submit(
                lambda conn: fn(conn, *args, **kwargs)))
        except WriterClosed as exc:
            raise StoreError(f"{self.path}: store is closed") from exc
        except sqlite3.Error as exc:
            error = connection.translate(exc, self.path)
            self._note_failure(error)
            raise error from exc
        if not self.health.ok:
            log.info("store_write_recovered", database=str(self.path),
                     failures=self.health.consecutive_failures)
            self.health = StoreHealth()
        return result

    @property
    def write_groups(self) -> tuple[int, int]:
        """Writes run so far, and the transactions they took (group commit)."""
        return self._commits.writes, self._commits.transactions

    async def read(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], /,
                   *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(conn, *args)`` on a reader connection in one read transaction."""
        self.reads += 1
        return await self._submit(self._reader_pool,
                                  functools.partial(self._query, fn, *args, **kwargs))

    def _note_failure(self, error: StoreError) -> None:
        previous = self.health
        self.health = StoreHealth(
            last_error=str(error),
            failing_since=previous.failing_since or dt.datetime.now(dt.UTC),
            consecutive_failures=previous.consecutive_failures + 1)

    async def migration_status(self) -> list[tuple[str, dt.datetime | None]]:
        statuses = await self.read(migrations.status, self._migrations)
        return [(s.name, s.applied_at) for s in statuses]


__all__ = ["FleetError", "Store", "StoreError"]
