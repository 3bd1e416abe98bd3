"""The job journal: long operations (key sync, renewal, reseal) with per-object progress.

A job is recorded with every object it will touch *before* it touches any, and each
object's state is recorded as it moves (pending -> running -> done | failed | skipped),
so a daemon restarted mid-job resumes with the objects not yet done instead of
starting over, and ``attempt`` counts how often an object was tried.  Functions here
are transaction bodies (writes) and queries (reads) for the Store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from sealfleet.adapters.store import codec
from sealfleet.errors import StoreError

JOB_STATES = ("pending", "running", "succeeded", "failed", "cancelled")
ITEM_STATES = ("pending", "running", "done", "failed", "skipped")


def create_job(conn: sqlite3.Connection, job_id: str, kind: str, params: dict[str, Any],
               refs: Sequence[str]) -> None:
    now = codec.now()
    try:
        conn.execute("INSERT INTO jobs (id, kind, state, params, created_at, updated_at) "
                     "VALUES (?, ?, 'pending', ?, ?, ?)",
                     (job_id, kind, codec.encode_json(params), now, now))
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


def _job(row: Sequence[Any], counts: dict[str, int]) -> dict[str, Any]:
    job_id, kind, state, params, error, created_at, updated_at = row
    return {"id": job_id, "kind": kind, "state": state, "params": codec.decode_json(params),
            "error": error, "created_at": codec.parse_timestamp(created_at),
            "updated_at": codec.parse_timestamp(updated_at), "items": counts}


_JOB_SELECT = "SELECT id, kind, state, params, error, created_at, updated_at FROM jobs"


def _item_counts(conn: sqlite3.Connection, job_id: str) -> dict[str, int]:
    return dict(conn.execute("SELECT state, count(*) FROM job_items WHERE job_id = ? "
                             "GROUP BY state", (job_id,)).fetchall())


def get_job(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    row = conn.execute(_JOB_SELECT + " WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row, _item_counts(conn, job_id))


def list_jobs(conn: sqlite3.Connection, state: str | None, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute(_JOB_SELECT + " WHERE (?1 IS NULL OR state = ?1) "
                        "ORDER BY created_at DESC, id LIMIT ?2", (state, limit)).fetchall()
    return [_job(row, _item_counts(conn, row[0])) for row in rows]


def job_items(conn: sqlite3.Connection, job_id: str,
              states: Sequence[str] | None) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT ref, state, attempt, error, updated_at FROM job_items "
                        "WHERE job_id = ? ORDER BY ref", (job_id,))
    wanted = set(states) if states is not None else None
    return [{"ref": ref, "state": state, "attempt": attempt, "error": error,
             "updated_at": codec.parse_timestamp(updated_at)}
            for ref, state, attempt, error, updated_at in rows
            if wanted is None or state in wanted]
