"""The job journal: long operations (key sync, renewal, reseal) with per-object progress.

A job is recorded with every object it will touch *before* it touches any, and each
object's state is recorded as it moves (pending -> running -> done | failed | skipped),
so a daemon restarted mid-job resumes with the objects not yet done instead of
starting over, and ``attempt`` counts how often an object was tried.  The journal is
a system of record (not rebuildable from the clusters).  Module functions are the
transaction bodies and queries; :class:`JobJournal` is ``store.jobs``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sealfleet.adapters.store import codec
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject
from sealfleet.errors import StoreError

if TYPE_CHECKING:
    from sealfleet.adapters.store.store import Store

JOB_STATES = ("pending", "running", "succeeded", "failed", "cancelled")
ITEM_STATES = ("pending", "running", "done", "failed", "skipped")


def create_job(conn: sqlite3.Connection, job_id: str, kind: str, params: JsonObject,
               refs: Sequence[str]) -> None:
    now = codec.now()
    try:
        conn.execute("INSERT INTO jobs (id, kind, state, params, created_at, updated_at) "
                     "VALUES (?, ?, 'pending', ?, ?, ?)",
                     (job_id, kind, codec.encode_json(dict(params)), now, now))
    except sqlite3.IntegrityError:
        raise StoreError(f"job {job_id} already exists") from None
    conn.executemany("INSERT OR IGNORE INTO job_items (job_id, ref, state, updated_at) "
                     "VALUES (?, ?, 'pending', ?)", [(job_id, ref, now) for ref in refs])


def set_job_state(conn: sqlite3.Connection, job_id: str, state: str,
                  error: str | None) -> None:
    if state not in JOB_STATES:
        raise StoreError(f"unknown job state {state!r}: expected one of {', '.join(JOB_STATES)}")
    cursor = conn.execute("UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?",
                          (state, error, codec.now(), job_id))
    if cursor.rowcount == 0:
        raise StoreError(f"no such job: {job_id}")


def update_job_items(conn: sqlite3.Connection, job_id: str,
                     updates: Sequence[tuple[str, str, str | None]]) -> None:
    """(ref, state, error) per object; moving to 'running' counts an attempt."""
    for _, state, _ in updates:
        if state not in ITEM_STATES:
            raise StoreError(f"unknown job item state {state!r}: expected one of "
                             f"{', '.join(ITEM_STATES)}")
    now = codec.now()
    conn.executemany(
        "UPDATE job_items SET state = ?1, error = ?2, updated_at = ?3, "
        "attempt = attempt + (?1 = 'running') WHERE job_id = ?4 AND ref = ?5",
        [(state, error, now, job_id, ref) for ref, state, error in updates])
    conn.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, job_id))


def _job(row: Sequence[Any], counts: dict[str, int]) -> JobRecord:
    job_id, kind, state, params, error, created_at, updated_at = row
    return JobRecord(id=job_id, kind=kind, state=state, params=codec.decode_json_object(params),
                     error=error, created_at=codec.parse_time(created_at),
                     updated_at=codec.parse_time(updated_at), items=counts)


_JOB_SELECT = "SELECT id, kind, state, params, error, created_at, updated_at FROM jobs"


def _item_counts(conn: sqlite3.Connection, job_id: str) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM job_items WHERE job_id = ? "
                             "GROUP BY state", (job_id,)).fetchall())


def get_job(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = conn.execute(_JOB_SELECT + " WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row, _item_counts(conn, job_id))


def list_jobs(conn: sqlite3.Connection, state: str | None, limit: int) -> list[JobRecord]:
    rows = conn.execute(_JOB_SELECT + " WHERE (?1 IS NULL OR state = ?1) "
                        "ORDER BY created_at DESC, id LIMIT ?2", (state, limit)).fetchall()
    return [_job(row, _item_counts(conn, row[0])) for row in rows]


def job_items(conn: sqlite3.Connection, job_id: str,
              states: Sequence[str] | None) -> list[JobItem]:
    rows = conn.execute("SELECT ref, state, attempt, error, updated_at FROM job_items "
                        "WHERE job_id = ? ORDER BY ref", (job_id,))
    wanted = set(states) if states is not None else None
    return [JobItem(ref=ref, state=state, attempt=attempt, error=error,
                    updated_at=codec.parse_time(updated_at))
            for ref, state, attempt, error, updated_at in rows
            if wanted is None or state in wanted]


class JobJournal:
    """``store.jobs``: journal jobs and their objects; read them back to resume."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create_job(self, kind: str, params: JsonObject, refs: Sequence[str], *,
                         job_id: str | None = None) -> str:
        """Journal a job and every object it will touch (all pending); returns its id."""
        job_id = job_id or uuid.uuid4().hex
        await self._store.write(create_job, job_id, kind, dict(params), list(refs))
        return job_id

    async def set_job_state(self, job_id: str, state: str, *,
                            error: str | None = None) -> None:
        await self._store.write(set_job_state, job_id, state, error)

    async def update_job_items(self, job_id: str,
                               updates: Sequence[tuple[str, str, str | None]]) -> None:
        """(ref, state, error) per object; moving an object to 'running' counts an attempt."""
        if updates:
            await self._store.write(update_job_items, job_id, list(updates))

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._store.read(get_job, job_id)

    async def list_jobs(self, *, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Newest first, optionally only those in *state*."""
        return await self._store.read(list_jobs, state, limit)

    async def job_items(self, job_id: str, *,
                        states: Sequence[str] | None = None) -> list[JobItem]:
        """The job's objects in ref order, optionally only those in *states* (to resume)."""
        return await self._store.read(job_items, job_id,
                                      None if states is None else list(states))
