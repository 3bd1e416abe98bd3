"""The ``relabel`` job: a compromised key's deferred relabel, once nothing needs it.

A reseal's ``relabel:<fp>`` step (``reseal_relabel``) is skipped while in-cluster
SealedSecrets still use the key: a Flux- or Argo CD-managed object is resealed on a
pending Git branch, and until that branch is merged and applied the cluster's object
keeps the old ciphertext.  Nothing else in the reseal changes when the merge lands, so
this job runs that same step alone, one per key: the live check of what the clusters
show, the guarded relabel, the controller's restart and the wait until it serves its
sealing key, journaled per cluster and audited exactly as in a reseal.

:func:`due` says when one is worth submitting (``domain/relabel_due`` holds the rule);
the scheduler asks it every tick with ``[fleet] auto_relabel`` on.  ``plan`` refuses a
job that would relabel nothing (no key it names is still held under another label than
``compromised``), so a stale request journals nothing.  ``finish`` reads every cluster
the step relabelled again: the planner must find nothing left to relabel there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence

import structlog

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject, JsonValue
from sealfleet.app.config import Settings
from sealfleet.app.jobs import compromised_keys, reseal_relabel
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import Plan, StepOutcome
from sealfleet.domain.jobs import JobKind, StepState
from sealfleet.domain.relabel_due import (
    CompromisedKeyStanding,
    RelabelAttempt,
    due_relabels,
    nothing_in_clusters_needs_it,
)
from sealfleet.errors import FleetError, InputError, PermanentError, RefusedError

log = structlog.get_logger(__name__)

FIELDS = frozenset({"fingerprints", "after_job"})
_JOBS_SEARCHED = 200     # newest reseal/relabel jobs searched for a key's last attempt


def _fingerprints(params: JsonObject) -> list[str] | None:
    unknown = sorted(set(params) - FIELDS)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}: expected {', '.join(sorted(FIELDS))}")
    value = params.get("fingerprints")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InputError("fingerprints must be an array of key fingerprints")
    return [str(v) for v in value]


class RelabelExecutor:
    """The ``relabel`` job kind (see the module docstring)."""

    kind = JobKind.RELABEL

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    @property
    def concurrency(self) -> int:
        return 1     # one key at a time; the step itself works the clusters side by side

    async def plan(self, params: JsonObject) -> Plan:
        asked = _fingerprints(params)
        held = await reseal_relabel.planned(self._ctx)
        chosen = held if asked is None else [fp for fp in held if fp in set(asked)]
        if not chosen:
            raise RefusedError("nothing to relabel: no cluster holds "
                               + ("a compromised key" if asked is None
                                  else ", ".join(asked))
                               + " under another label than compromised")
        fingerprints: list[JsonValue] = list(chosen)
        return Plan(steps=[f"relabel:{fp}" for fp in chosen],
                    params={"fingerprints": fingerprints},
                    audit={"fingerprints": fingerprints})

    async def run_step(self, job: JobRecord, step: str) -> StepOutcome:
        phase, _, fingerprint = step.partition(":")
        if phase != "relabel":
            raise PermanentError(f"unknown step {step}")
        return await reseal_relabel.relabel_step(self._ctx, job, fingerprint)

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        """Per key, the step's account; every cluster it relabelled is read again."""
        keys: dict[str, JsonValue] = {}
        problems: list[str] = []
        for step in steps:
            fingerprint = step.ref.partition(":")[2]
            keys[fingerprint] = {"state": step.state, "error": step.error, **step.detail}
            relabelled = step.detail.get("relabelled")
            for cluster in relabelled if isinstance(relabelled, list) else []:
                left = await reseal_relabel.remaining_relabels(self._ctx, str(cluster),
                                                               fingerprint)
                if left:
                    problems.append(f"{cluster}: {', '.join(left)} still not labelled "
                                    f"compromised for {fingerprint}")
        if problems:
            raise FleetError(f"the relabel is not what the clusters show: {'; '.join(problems)}")
        return {"compromised_keys": keys}


async def last_attempts(store: Store, fingerprints: Collection[str], *,
                        jobs: int = _JOBS_SEARCHED) -> dict[str, RelabelAttempt]:
    """The newest finished ``relabel:<fp>`` step of each key, among the *jobs* newest
    reseal and relabel jobs of the journal."""
    remaining = set(fingerprints)
    found: dict[str, RelabelAttempt] = {}
    kinds = {JobKind.RESEAL.value, JobKind.RELABEL.value}
    for job in await store.jobs.list_jobs(limit=jobs):
        if not remaining:
            break
        if job.kind not in kinds:
            continue
        for step in await store.jobs.job_items(job.id):
            phase, _, fingerprint = step.ref.partition(":")
            if phase != "relabel" or fingerprint not in remaining \
                    or not StepState(step.state).finished:
                continue
            remaining.discard(fingerprint)
            found[fingerprint] = RelabelAttempt(
                job_id=job.id, automatic=job.kind == JobKind.RELABEL.value,
                waited_for_clusters=reseal_relabel.waited_for_clusters(step),
                finished_at=step.updated_at)
    return found


async def due(store: Store, settings: Settings, *, unattributed: int,
              now: dt.datetime) -> list[str]:
    """The compromised keys whose relabel, skipped for in-cluster objects, is possible
    now (``domain/relabel_due`` decides; *unattributed*: items waiting for attribution
    right now).  Reads the inventory and the journal only, and the journal only while
    some compromised key is still held under another label."""
    held = await reseal_relabel.held_unrelabelled(store, settings)
    if not held:
        return []
    configured = {c.name for c in settings.clusters}
    # Git documents are not counted, as in the step: base branches keep old ciphertexts.
    standings = [CompromisedKeyStanding(
        fingerprint=use.fingerprint, held_unrelabelled=True,
        cluster_objects=sum(1 for cluster, _, _ in use.cluster_objects if cluster in configured),
        unattributed=unattributed, last_attempt=None)
        for use in await compromised_keys.still_sealing(store, held)]
    # While a branch waits to be merged (days, perhaps) the journal is not read at all.
    free = [s for s in standings if nothing_in_clusters_needs_it(s)]
    if not free:
        return []
    attempts = await last_attempts(store, [s.fingerprint for s in free])
    return due_relabels([dataclasses.replace(s, last_attempt=attempts.get(s.fingerprint))
                         for s in free],
                        now=now, retry_after=settings.fleet.resync_interval)
