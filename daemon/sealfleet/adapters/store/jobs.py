"""The job journal: every mutation as a job of ordered, idempotent steps.

A job is recorded with every step it will take *before* any acts, in one transaction
with its audit entry (and, for a renewal, with the new key's encrypted material: the
key exists exactly when its job does, so a replay never makes a second one).  Each
step's state is recorded as it moves (pending -> running -> done | failed | skipped);
a daemon restarted mid-job resumes with the steps not yet finished.  The journal is a
system of record (not rebuildable from the clusters).  Module functions are the
transaction bodies and queries; :class:`JobJournal` is ``store.jobs``.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sealfleet.adapters.store import audit, codec, job_objects, keys_sql
from sealfleet.adapters.store.job_objects import JobObject, StepCounts
from sealfleet.adapters.store.key_material import EncryptedKey
from sealfleet.adapters.store.records import JobItem, JobRecord, JobTally, JsonObject
from sealfleet.domain.jobs import JobState, StepState
from sealfleet.errors import StoreError

if TYPE_CHECKING:
    from sealfleet.adapters.store.store import Store

JOB_STATES = tuple(state.value for state in JobState)
ITEM_STATES = tuple(state.value for state in StepState)


@dataclass(frozen=True)
class AuditNote:
    """The audit entry written in the same transaction as a journal change."""

    event: str
    details: JsonObject


def create_job(conn: sqlite3.Connection, job_id: str, kind: str, params: JsonObject,
               refs: Sequence[str], actor: str, note: AuditNote | None,
               keys: Sequence[EncryptedKey],
               objects: Sequence[tuple[str, str]] = ()) -> None:
    now = codec.now()
    try:
        conn.execute("INSERT INTO jobs (id, kind, state, params, actor, created_at, updated_at) "
                     "VALUES (?, ?, 'pending', ?, ?, ?, ?)",
                     (job_id, kind, codec.encode_json(dict(params)), actor, now, now))
    except sqlite3.IntegrityError:
        raise StoreError(f"job {job_id} already exists") from None
    conn.executemany("INSERT OR IGNORE INTO job_items (job_id, ref, state, position, updated_at) "
                     "VALUES (?, ?, 'pending', ?, ?)",
                     [(job_id, ref, position, now) for position, ref in enumerate(refs)])
    if objects:
        job_objects.insert_planned(conn, job_id, objects, now)
    if keys:
        keys_sql.store_encrypted_keys(conn, keys)
    if note is not None:
        audit.append_entry(conn, note.event, actor, {**note.details, "job": job_id})


def add_steps(conn: sqlite3.Connection, job_id: str, refs: Sequence[str]) -> None:
    """Steps a running job found it needs (journaled before they act)."""
    now = codec.now()
    (last,) = conn.execute("SELECT coalesce(max(position), -1) FROM job_items WHERE job_id = ?",
                           (job_id,)).fetchone()
    conn.executemany("INSERT OR IGNORE INTO job_items (job_id, ref, state, position, updated_at) "
                     "VALUES (?, ?, 'pending', ?, ?)",
                     [(job_id, ref, last + 1 + index, now) for index, ref in enumerate(refs)])


def set_job_state(conn: sqlite3.Connection, job_id: str, state: str, error: str | None,
                  result: JsonObject | None, note: AuditNote | None) -> None:
    if state not in JOB_STATES:
        raise StoreError(f"unknown job state {state!r}: expected one of {', '.join(JOB_STATES)}")
    now = codec.now()
    finished = JobState(state).finished
    cursor = conn.execute(
        "UPDATE jobs SET state = ?, error = ?, updated_at = ?, "
        "result = coalesce(?, result), "
        "started_at = CASE WHEN ? = 'running' THEN coalesce(started_at, ?) ELSE started_at END, "
        "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE id = ?",
        (state, error, now, None if result is None else codec.encode_json(dict(result)),
         state, now, int(finished), now, job_id))
    if cursor.rowcount == 0:
        raise StoreError(f"no such job: {job_id}")
    if note is not None:
        (actor,) = conn.execute("SELECT actor FROM jobs WHERE id = ?", (job_id,)).fetchone()
        audit.append_entry(conn, note.event, actor, {**note.details, "job": job_id,
                                                     "outcome": state})


def update_job_items(conn: sqlite3.Connection, job_id: str,
                     updates: Sequence[tuple[str, str, str | None, JsonObject | None]]) -> None:
    """(ref, state, error, detail) per step; moving to 'running' counts an attempt."""
    for _, state, _, _ in updates:
        if state not in ITEM_STATES:
            raise StoreError(f"unknown job item state {state!r}: expected one of "
                             f"{', '.join(ITEM_STATES)}")
    now = codec.now()
    conn.executemany(
        "UPDATE job_items SET state = ?1, error = ?2, updated_at = ?3, "
        "detail = coalesce(?6, detail), "
        "attempt = attempt + (?1 = 'running') WHERE job_id = ?4 AND ref = ?5",
        [(state, error, now, job_id, ref,
          None if detail is None else codec.encode_json(dict(detail)))
         for ref, state, error, detail in updates])
    conn.execute("UPDATE jobs SET updated_at = ? WHERE id = ?", (now, job_id))


_JOB_SELECT = ("SELECT id, kind, state, params, error, created_at, updated_at, actor, result, "
               "started_at, finished_at FROM jobs")


def _job(row: Sequence[Any], counts: dict[str, int]) -> JobRecord:
    (job_id, kind, state, params, error, created_at, updated_at, actor, result, started_at,
     finished_at) = row
    return JobRecord(id=job_id, kind=kind, state=state, params=codec.decode_json_object(params),
                     error=error, created_at=codec.parse_time(created_at),
                     updated_at=codec.parse_time(updated_at), items=counts, actor=actor,
                     result=codec.decode_json_object(result),
                     started_at=codec.parse_timestamp(started_at),
                     finished_at=codec.parse_timestamp(finished_at))


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


def unfinished_jobs(conn: sqlite3.Connection) -> list[JobRecord]:
    rows = conn.execute(_JOB_SELECT + " WHERE state IN ('pending', 'running') "
                        "ORDER BY created_at, id").fetchall()
    return [_job(row, _item_counts(conn, row[0])) for row in rows]


def tallies(conn: sqlite3.Connection) -> list[JobTally]:
    rows = conn.execute("SELECT kind, state, count(*), max(coalesce(finished_at, updated_at)) "
                        "FROM jobs GROUP BY kind, state ORDER BY kind, state")
    return [JobTally(kind=kind, state=state, count=count, last_at=codec.parse_time(last))
            for kind, state, count, last in rows]


def job_items(conn: sqlite3.Connection, job_id: str,
              states: Sequence[str] | None) -> list[JobItem]:
    rows = conn.execute("SELECT ref, state, attempt, error, updated_at, detail FROM job_items "
                        "WHERE job_id = ? ORDER BY position, ref", (job_id,))
    wanted = set(states) if states is not None else None
    return [JobItem(ref=ref, state=state, attempt=attempt, error=error,
                    updated_at=codec.parse_time(updated_at),
                    detail=codec.decode_json_object(detail))
            for ref, state, attempt, error, updated_at, detail in rows
            if wanted is None or state in wanted]


class JobJournal:
    """``store.jobs``: journal jobs and their steps; read them back to resume."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def create_job(self, kind: str, params: JsonObject, refs: Sequence[str], *,
                         job_id: str | None = None, actor: str = "sealfleet",
                         note: AuditNote | None = None,
                         keys: Sequence[EncryptedKey] = (),
                         objects: Sequence[tuple[str, str]] = ()) -> str:
        """Journal a job, every step it will take (all pending), the (step, ref) objects
        its steps will work through (all planned), its audit entry and any new keys it
        brings, in one transaction; returns its id."""
        job_id = job_id or uuid.uuid4().hex
        await self._store.write(create_job, job_id, kind, dict(params), list(refs), actor, note,
                                list(keys), list(objects))
        return job_id

    async def update_objects(self, job_id: str, objects: Sequence[JobObject]) -> None:
        """A batch of a job's objects moved to new states, in one transaction."""
        if objects:
            await self._store.write(job_objects.update_objects, job_id, list(objects))

    async def step_objects(self, job_id: str, step: str) -> list[JobObject]:
        """The objects of one step as journaled, by ref."""
        return await self._store.read(job_objects.step_objects, job_id, step)

    async def object_counts(self, job_id: str) -> dict[str, StepCounts]:
        """Per step of *job_id*: its objects in each state (steps without any left out)."""
        return await self._store.read(job_objects.step_counts, job_id)

    async def add_steps(self, job_id: str, refs: Sequence[str]) -> None:
        if refs:
            await self._store.write(add_steps, job_id, list(refs))

    async def set_job_state(self, job_id: str, state: str, *, error: str | None = None,
                            result: JsonObject | None = None,
                            note: AuditNote | None = None) -> None:
        await self._store.write(set_job_state, job_id, state, error, result, note)

    async def update_job_items(
            self, job_id: str,
            updates: Sequence[tuple[str, str, str | None] | tuple[str, str, str | None,
                                                                   JsonObject | None]]) -> None:
        """(ref, state, error[, detail]) per step; moving a step to 'running' counts an
        attempt."""
        if updates:
            full = [(u[0], u[1], u[2], u[3] if len(u) > 3 else None) for u in updates]
            await self._store.write(update_job_items, job_id, full)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._store.read(get_job, job_id)

    async def list_jobs(self, *, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Newest first, optionally only those in *state*."""
        return await self._store.read(list_jobs, state, limit)

    async def unfinished(self) -> list[JobRecord]:
        """Jobs to resume at start, oldest first."""
        return await self._store.read(unfinished_jobs)

    async def tallies(self) -> list[JobTally]:
        """Jobs per (kind, state) and when the newest of each finished (or, unfinished,
        last moved): one grouped scan of the jobs table, a row per kind and state."""
        return await self._store.read(tallies)

    async def job_items(self, job_id: str, *,
                        states: Sequence[str] | None = None) -> list[JobItem]:
        """The job's steps in planned order, optionally only those in *states*."""
        return await self._store.read(job_items, job_id,
                                      None if states is None else list(states))
