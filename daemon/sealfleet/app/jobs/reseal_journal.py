"""The per-object journal as a reseal step writes it: in batches, never per object.

A ``cluster:<name>`` step of a reseal job may work through 20,000 objects; one SQLite
transaction each would cost more than the reseal's own writes to the apiserver.
:class:`ObjectJournal` buffers the objects' new states (:meth:`ObjectJournal.record` is
synchronous: the step never waits on the store per object) and writes them in one
transaction per :data:`BATCH` objects or per :data:`FLUSH_SECONDS`, whichever comes
first, on a flusher task of its own; leaving its context writes what is left (a daemon
killed before that loses at most one batch of marks: those objects are read again at
the replay, where an object already sealed with the target is skipped, so none is
resealed twice into different results).

Why a table (``store.job_objects``, migration 0010) and not more runner steps: the
runner's steps are what it schedules (phases, concurrency, attempts); objects are what
one step works through, counted for the job document and replayed by that step alone,
so a step stays one unit for the runner and its objects cost one row each, batched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

import structlog

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.job_objects import FINAL_STATES, JobObject
from sealfleet.adapters.store.records import JsonObject
from sealfleet.domain.planning.resealing import PlannedReseal
from sealfleet.errors import FleetError

log = structlog.get_logger(__name__)

BATCH = 500             # objects per transaction at most
FLUSH_SECONDS = 1.0     # a mark waits at most this long before it is written


class ObjectJournal:
    """One step's objects: what the journal held when the step started, and the marks
    the step makes, written in batches (see the module docstring)."""

    def __init__(self, store: Store, job_id: str, step: str,
                 journaled: Mapping[str, JobObject]) -> None:
        self._store = store
        self._job_id = job_id
        self.step = step
        self.journaled = dict(journaled)    # ref -> as found when the step (re)started
        self._pending: dict[str, JobObject] = {}
        self._wake = asyncio.Event()
        self.batches = 0                    # transactions written (for the step detail)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, store: Store, job_id: str, step: str,
                   ) -> AsyncIterator[ObjectJournal]:
        found = {o.ref: o for o in await store.jobs.step_objects(job_id, step)}
        journal = cls(store, job_id, step, found)
        flusher = asyncio.create_task(journal._flush_loop())
        try:
            yield journal
            await journal._stop(flusher)
        except Exception:
            await journal._stop(flusher)   # the marks of a failing step are kept too
            raise
        finally:
            # Cancelled (the daemon stopping): nothing more is written, as after a kill.
            flusher.cancel()

    def final(self, ref: str) -> bool:
        """Done or skipped when the step started: not read again."""
        found = self.journaled.get(ref)
        return found is not None and found.state in FINAL_STATES

    def record(self, ref: str, state: str, *, outcome: str | None = None,
               generation: int | None = None, conflicts: int = 0,
               error: str | None = None) -> None:
        self._pending[ref] = JobObject(step=self.step, ref=ref, state=state, outcome=outcome,
                                       generation=generation, conflicts=conflicts,
                                       error=error)
        if len(self._pending) >= BATCH:
            self._wake.set()

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = list(self._pending.values()), {}
        await self._store.jobs.update_objects(self._job_id, batch)
        self.batches += 1

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except FleetError as error:     # kept in memory: the next flush tries again
                log.warning("reseal_journal_flush_failed", step=self.step, error=str(error))

    async def _stop(self, flusher: asyncio.Task[None]) -> None:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await self._flush()


def document_ref(path: str | None, document: int | None) -> str:
    """A Git document's ref in the journal: ``path#index``."""
    return f"{path or ''}#{'' if document is None else document}"


def repo_marks(step: str, entries: Sequence[PlannedReseal],
               detail: JsonObject) -> list[JobObject]:
    """A repository step's documents as its detail says they ended: resealed (done),
    already done on a pending branch (skipped), named by a problem (failed), else
    nothing to change (skipped).  The Git step's own replay is its commit trailer."""
    def refs(key: str) -> set[str]:
        found = detail.get(key)
        return {document_ref(str(d.get("path")), d.get("document"))  # type: ignore[arg-type]
                for d in found if isinstance(d, dict)} if isinstance(found, list) else set()

    resealed, pending = refs("documents"), refs("pending")
    problems = [str(p) for p in detail.get("problems") or []]  # type: ignore[union-attr]
    marks = []
    for entry in entries:
        ref = document_ref(entry.path, entry.document)
        if ref in resealed:
            marks.append(JobObject(step, ref, "done", outcome="resealed"))
        elif ref in pending:
            marks.append(JobObject(step, ref, "skipped", outcome="pending_branch"))
        else:
            problem = next((p for p in problems if p.startswith(
                f"{entry.path}: document {entry.document}")), None) or next(
                (p for p in problems if p.startswith(f"{entry.path}:")), None)
            marks.append(JobObject(step, ref, "failed", error=problem) if problem
                         else JobObject(step, ref, "skipped", outcome="unchanged"))
    return marks
