"""The job runner: journal first, then act; resume whatever a crash interrupted.

``submit`` asks the job's executor for its plan, then journals the job, all its steps,
its audit entry and any new key in one transaction, and only then queues it: nothing
acts before the journal says what will happen.  ``run`` (an eternal task of the
service) first queues every job the journal holds as pending or running, oldest first,
then runs queued jobs one at a time (two key jobs touching the same controllers at
once could undo each other).  A job's steps run with the executor's concurrency; a
step found ``running`` was interrupted and runs again (steps are idempotent), a
finished step never does.  When no step is left, the executor verifies what the
clusters show and the job ends ``succeeded`` or ``failed``, audited with its outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence

import structlog

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.jobs import AuditNote
from sealfleet.adapters.store.key_material import EncryptedKey
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject, KeyMaterial
from sealfleet.app.jobs.executor import Executor
from sealfleet.domain.jobs import JobKind, JobState, StepState, outcome
from sealfleet.errors import FleetError, RefusedError

log = structlog.get_logger(__name__)

_UNFINISHED_STEPS = (StepState.PENDING.value, StepState.RUNNING.value)
_RETRY_INTERRUPTED = 2.0   # seconds before a job interrupted by a store error resumes


def phases(refs: Iterable[str]) -> list[list[str]]:
    """Steps grouped for running: a step is ``<phase>:<name>``; phases run one after the
    other in the order they first appear, the steps of one phase side by side (e.g. a
    renewal's ``master:<fp>`` before its ``cluster:<name>`` steps)."""
    grouped: dict[str, list[str]] = {}
    for ref in refs:
        grouped.setdefault(ref.partition(":")[0], []).append(ref)
    return list(grouped.values())


class JobRunner:
    def __init__(self, store: Store, executors: Sequence[Executor]) -> None:
        self._store = store
        self._executors: Mapping[JobKind, Executor] = {e.kind: e for e in executors}
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self.current: str | None = None

    @property
    def kinds(self) -> frozenset[JobKind]:
        return frozenset(self._executors)

    async def submit(self, kind: str, params: JsonObject, *, actor: str) -> JobRecord:
        """Plan, journal and queue a job; RefusedError (nothing journaled) when it
        cannot be done as asked."""
        try:
            executor = self._executors[JobKind(kind)]
        except (ValueError, KeyError):
            raise RefusedError(f"no such job kind: {kind}") from None
        plan = await executor.plan(params)
        sealed: list[EncryptedKey] = []
        if plan.new_keys:
            sealed, refused = await self._store.keys.seal(
                [KeyMaterial(key=k, source=plan.new_key_source) for k in plan.new_keys])
            if refused:
                raise RefusedError(f"{kind}: a new key was refused: {refused[0].reason}")
        job_id = await self._store.jobs.create_job(
            executor.kind, plan.params, plan.steps, actor=actor, keys=sealed,
            note=AuditNote(f"{executor.kind}_requested", plan.audit), objects=plan.objects)
        log.info("job_submitted", job=job_id, kind=executor.kind, actor=actor,
                 steps=len(plan.steps))
        self._enqueue(job_id)
        job = await self._store.jobs.get_job(job_id)
        if job is None:  # pragma: no cover - just written
            raise FleetError(f"job {job_id} vanished from the journal")
        return job

    def _enqueue(self, job_id: str) -> None:
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._queue.put_nowait(job_id)

    async def run(self) -> None:
        """Until cancelled: resume the journal's unfinished jobs, then run queued ones."""
        for job in await self._store.jobs.unfinished():
            log.info("job_resuming", job=job.id, kind=job.kind, state=job.state)
            self._enqueue(job.id)
        while True:
            job_id = await self._queue.get()
            self.current = job_id
            try:
                await self._run_job(job_id)
            except FleetError as error:
                # The journal could not be written (a locked database): the job stays
                # unfinished there; try it again shortly, from where it stands.
                log.warning("job_interrupted", job=job_id, error=str(error))
                await asyncio.sleep(_RETRY_INTERRUPTED)
                self._queued.discard(job_id)
                self._enqueue(job_id)
                continue
            finally:
                self.current = None
            self._queued.discard(job_id)

    async def _run_job(self, job_id: str) -> None:
        journal = self._store.jobs
        job = await journal.get_job(job_id)
        if job is None or JobState(job.state).finished:
            return
        executor = self._executors.get(JobKind(job.kind))
        if executor is None:
            await journal.set_job_state(job_id, JobState.FAILED,
                                        error=f"this daemon cannot run {job.kind} jobs",
                                        note=AuditNote(f"{job.kind}_finished", {}))
            return
        with structlog.contextvars.bound_contextvars(job=job_id, kind=job.kind):
            await journal.set_job_state(job_id, JobState.RUNNING)
            todo = await journal.job_items(job_id, states=_UNFINISHED_STEPS)
            gate = asyncio.Semaphore(max(1, executor.concurrency))
            for phase in phases(step.ref for step in todo):
                await asyncio.gather(*(self._run_step(executor, job, ref, gate)
                                       for ref in phase))
            steps = await journal.job_items(job_id)
            await self._finish(executor, job, steps)

    async def _run_step(self, executor: Executor, job: JobRecord, step: str,
                        gate: asyncio.Semaphore) -> None:
        journal = self._store.jobs
        async with gate:
            await journal.update_job_items(job.id, [(step, StepState.RUNNING, None)])
            try:
                done = await executor.run_step(job, step)
            except FleetError as error:
                log.warning("job_step_failed", step=step, error=str(error))
                await journal.update_job_items(job.id, [(step, StepState.FAILED, str(error))])
                return
            log.info("job_step_done", step=step, state=done.state)
            await journal.update_job_items(job.id, [(step, done.state, None, done.detail)])

    async def _finish(self, executor: Executor, job: JobRecord,
                      steps: Sequence[JobItem]) -> None:
        state = outcome(StepState(step.state) for step in steps)
        failed = [step.ref for step in steps if step.state == StepState.FAILED]
        error = f"{len(failed)} of {len(steps)} steps failed: {', '.join(failed)}" \
            if failed else None
        result: JsonObject = {}
        try:
            result = await executor.finish(job, steps)
        except FleetError as verification:
            state, error = JobState.FAILED, error or f"verification failed: {verification}"
        await self._store.jobs.set_job_state(
            job.id, state, error=error, result=result,
            note=AuditNote(f"{job.kind}_finished", {"failed_steps": list(failed)}))
        log.info("job_finished", state=state, error=error)
