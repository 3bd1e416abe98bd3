"""The per-object journal of a job's steps (table ``job_objects``, migration 0010).

A step that acts on many objects (a reseal's ``cluster:<name>``, with 20,000 objects or
more) cannot afford a transaction per object, nor a replay that handles every object
again.  Its objects are journaled as ``planned`` with the job itself (``jobs.create_job``
calls :func:`insert_planned` in its transaction), then moved in batches: one
transaction per :func:`update_objects` call, whatever the number of rows.  Module
functions are the transaction bodies and queries; :class:`JobJournal` (``store.jobs``)
exposes them.

Why a table of its own rather than more ``job_items``: job items are the runner's steps
(it runs every pending one, grouped by phase); objects are what a step works through,
and are counted, listed and replayed by that step alone.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sealfleet.adapters.store import codec
from sealfleet.adapters.store.records import JsonValue
from sealfleet.errors import StoreError

OBJECT_STATES = ("planned", "written", "done", "skipped", "failed")
FINAL_STATES = frozenset({"done", "skipped"})   # a replay does not read these again


@dataclass(frozen=True)
class JobObject:
    """One object of a step, as journaled."""

    step: str                 # e.g. "cluster:prod-eu"
    ref: str                  # e.g. "team-a/db-password"
    state: str                # planned | written | done | skipped | failed
    outcome: str | None = None        # resealed, rotated_via_controller, already_target...
    generation: int | None = None     # written at this generation (Synced awaited for it)
    conflicts: int = 0                # 409s that made the step read and reseal it again
    error: str | None = None


@dataclass(frozen=True)
class StepCounts:
    """How far one step got, from its objects."""

    planned: int = 0
    written: int = 0          # in the cluster, the controller's Synced not yet seen
    done: int = 0
    skipped: int = 0
    failed: int = 0
    conflicts: int = 0

    @property
    def remaining(self) -> int:
        return self.planned - self.done - self.skipped - self.failed


def insert_planned(conn: sqlite3.Connection, job_id: str,
                   objects: Sequence[tuple[str, str]], now: str) -> None:
    """(step, ref) rows as ``planned`` (part of the job's own transaction)."""
    conn.executemany("INSERT OR IGNORE INTO job_objects (job_id, step, ref, state, updated_at) "
                     "VALUES (?, ?, ?, 'planned', ?)",
                     [(job_id, step, ref, now) for step, ref in objects])


def update_objects(conn: sqlite3.Connection, job_id: str,
                   objects: Sequence[JobObject]) -> None:
    """A batch of objects' new states, one transaction (an object not planned is added)."""
    for obj in objects:
        if obj.state not in OBJECT_STATES:
            raise StoreError(f"unknown job object state {obj.state!r}: expected one of "
                             f"{', '.join(OBJECT_STATES)}")
    now = codec.now()
    conn.executemany(
        "INSERT INTO job_objects (job_id, step, ref, state, outcome, generation, conflicts, "
        "error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (job_id, step, ref) DO UPDATE SET state = excluded.state, "
        "outcome = excluded.outcome, generation = excluded.generation, "
        "conflicts = excluded.conflicts, error = excluded.error, "
        "updated_at = excluded.updated_at",
        [(job_id, o.step, o.ref, o.state, o.outcome, o.generation, o.conflicts, o.error, now)
         for o in objects])


def step_objects(conn: sqlite3.Connection, job_id: str, step: str) -> list[JobObject]:
    rows = conn.execute("SELECT step, ref, state, outcome, generation, conflicts, error "
                        "FROM job_objects WHERE job_id = ? AND step = ? ORDER BY ref",
                        (job_id, step))
    return [JobObject(*row) for row in rows]


def step_counts(conn: sqlite3.Connection, job_id: str) -> dict[str, StepCounts]:
    """Per step: objects in each state and conflicts (one grouped scan of the job)."""
    found: dict[str, dict[str, int]] = {}
    for step, state, count, conflicts in conn.execute(
            "SELECT step, state, count(*), sum(conflicts) FROM job_objects "
            "WHERE job_id = ? GROUP BY step, state", (job_id,)):
        counts = found.setdefault(step, {"planned": 0, "conflicts": 0})
        counts["planned"] += count
        counts["conflicts"] += conflicts or 0
        if state != "planned":
            counts[state] = count
    return {step: StepCounts(**counts) for step, counts in found.items()}


def counts_document(counts: StepCounts) -> dict[str, int]:
    """A step's counts as the job document shows them."""
    return {"planned": counts.planned, "done": counts.done, "skipped": counts.skipped,
            "failed": counts.failed, "conflicts": counts.conflicts,
            "awaiting_synced": counts.written, "remaining": counts.remaining}


def progress_document(counts: Mapping[str, StepCounts]) -> dict[str, JsonValue]:
    """The job document's ``progress``: counts per cluster, per repository, in total."""
    clusters: dict[str, JsonValue] = {}
    repositories: dict[str, JsonValue] = {}
    total = StepCounts()
    for step, found in sorted(counts.items()):
        phase, _, name = step.partition(":")
        (clusters if phase == "cluster" else repositories)[name] = dict(counts_document(found))
        total = StepCounts(*(a + b for a, b in zip(dataclasses.astuple(total),
                                                    dataclasses.astuple(found), strict=True)))
    return {"clusters": clusters, "repositories": repositories,
            "total": dict(counts_document(total))}
