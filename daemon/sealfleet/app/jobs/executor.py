"""What the runner needs of an executor: a plan before anything acts, idempotent steps,
and a final check of what the clusters (or repositories) really show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject
from sealfleet.domain.jobs import JobKind, StepState
from sealfleet.domain.keys import KeySource, SealingKey


@dataclass(frozen=True)
class Plan:
    """A job as it will be journaled: its steps (in order), its parameters as resolved,
    what the audit entry says, keys it brings (stored encrypted with the entry), and the
    objects its steps will work through (the per-object journal)."""

    steps: Sequence[str]
    params: JsonObject = field(default_factory=dict)
    audit: JsonObject = field(default_factory=dict)
    new_keys: Sequence[SealingKey] = field(default=(), repr=False)
    new_key_source: KeySource = KeySource.GENERATED   # IMPORTED: a key_import's keys
    # (step, ref) objects the steps work through, journaled as planned with the job
    objects: Sequence[tuple[str, str]] = field(default=(), repr=False)


@dataclass(frozen=True)
class StepOutcome:
    state: StepState = StepState.DONE     # or SKIPPED: nothing needed doing
    detail: JsonObject = field(default_factory=dict)


class Executor(Protocol):
    """One kind of job.  Every method may be called again after a crash: steps must be
    idempotent (do nothing when their effect is already there)."""

    @property
    def kind(self) -> JobKind: ...

    @property
    def concurrency(self) -> int: ...   # steps run at once (across clusters)

    async def plan(self, params: JsonObject) -> Plan:
        """Raise :class:`~sealfleet.errors.RefusedError` to refuse (nothing journaled)."""
        ...

    async def run_step(self, job: JobRecord, step: str) -> StepOutcome:
        """Do one step; a :class:`~sealfleet.errors.FleetError` marks it failed."""
        ...

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        """Verify the outcome and return the job's result document; raise a
        :class:`~sealfleet.errors.FleetError` to fail the job."""
        ...
