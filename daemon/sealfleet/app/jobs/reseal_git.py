"""A reseal job's repository steps (``repo:<name>``): a placeholder with the interface the
Git reseal (branch reseal-git) implements; this build cannot write repositories, so a
repository step fails with that one line and the cluster steps go on."""

from __future__ import annotations

from collections.abc import Sequence

from sealfleet.adapters.store.records import JobRecord, JsonObject
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import StepOutcome
from sealfleet.domain.planning.resealing import PlannedReseal
from sealfleet.errors import PermanentError

_UNAVAILABLE = "git reseal not available in this build"


class GitResealer:
    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    async def reseal_step(self, job: JobRecord, repo: str,
                          entries: Sequence[PlannedReseal]) -> StepOutcome:
        raise PermanentError(_UNAVAILABLE)

    async def verify(self, job: JobRecord, repo: str, detail: JsonObject) -> JsonObject:
        raise PermanentError(_UNAVAILABLE)
