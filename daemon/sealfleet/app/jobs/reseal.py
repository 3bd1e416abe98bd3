"""The reseal job: stale (and compromised) SealedSecrets sealed again with the current key,
in the clusters and in their GitOps repositories.

``plan`` reads the inventory (``reseal_inventory``), asks the pure planner what to reseal
and journals the answer: one ``cluster:<name>`` step per cluster with objects to write
there, one ``repo:<name>`` step per repository with documents to rewrite, and a
``relabel:<fp>`` step per compromised key (``reseal_relabel``: once no in-cluster
SealedSecret uses it, its key Secrets are labelled ``compromised`` in every cluster).
Every planned object is journaled with the job, in the same transaction, as a row of
the per-object journal (``store.jobs`` objects, see ``reseal_journal``): the cluster
step marks them in batches as it goes and a replay reads only what is not marked done;
the job's params keep each cluster's target key and each repository's planned
documents (names and fingerprints only), so a replay after a crash reaches the same
result.  ``dry_run`` returns the plan document and journals nothing.  Cluster steps are
:class:`~sealfleet.app.jobs.reseal_cluster.ClusterResealer`; repository steps are
``reseal_git.GitResealer``'s (their documents marked from the step's detail when it
ends).  ``finish`` checks what the clusters really show: every resealed object's items
attributed to the target key and Synced for its generation; the result carries the
journal's counts per cluster and repository.

Objects managed by Flux or Argo CD are never written in the cluster (the planner
routes them to their repository, or reports them).  :class:`AutoReseal` starts a
reseal after a renewal or a compromise when ``[fleet] auto_reseal`` is on.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

import structlog

from sealfleet.adapters.store.job_objects import counts_document
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject, JsonValue
from sealfleet.app.jobs import (
    relabel_job,
    reseal_cluster,
    reseal_git,
    reseal_inventory,
    reseal_relabel,
)
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import Executor as JobExecutor
from sealfleet.app.jobs.executor import Plan, StepOutcome
from sealfleet.app.jobs.reseal_journal import ObjectJournal, document_ref, repo_marks
from sealfleet.app.jobs.reseal_params import (
    entry_document,
    entry_from_document,
    selection_document,
    selection_of,
)
from sealfleet.domain import attribution, sealed_secrets
from sealfleet.domain.jobs import JobKind, StepState
from sealfleet.domain.planning.resealing import PlannedReseal, ResealPlan, Source, plan_reseal
from sealfleet.domain.resealing import rsa_threads
from sealfleet.errors import FleetError, PermanentError, RefusedError

log = structlog.get_logger(__name__)

_SHOWN = 5
CLUSTER_CONCURRENCY = 16    # clusters resealed at once (each bounded on its own)

Submit = Callable[[str, JsonObject, str], Awaitable[JobRecord]]


def _json_value(document: Mapping[str, object]) -> dict[str, JsonValue]:
    """A plan document (built of JSON types only) as the journal's JSON type."""
    return json.loads(json.dumps(document))  # type: ignore[no-any-return]


def _refusal(plan: ResealPlan) -> str:
    shown = "; ".join(f"{n.ref}: {n.reason}" for n in plan.not_planned[:_SHOWN])
    more = f" and {len(plan.not_planned) - _SHOWN} more" if len(plan.not_planned) > _SHOWN \
        else ""
    hint = ("; include_hinted (sealfleet reseal --include-hinted) reseals in the cluster "
            "what only app.kubernetes.io/instance says may be managed"
            if any("app.kubernetes.io/instance" in n.reason for n in plan.not_planned) else "")
    return (f"nothing can be resealed as asked: {len(plan.not_planned)} selected "
            f"SealedSecret(s) cannot be ({shown}{more}){hint}")


class ResealExecutor:
    """The ``reseal`` job kind (see the module docstring)."""

    kind = JobKind.RESEAL

    def __init__(self, ctx: JobContext, pool: Executor | None = None) -> None:
        self._ctx = ctx
        self._pool = pool or ThreadPoolExecutor(rsa_threads(), thread_name_prefix="reseal")

    @property
    def concurrency(self) -> int:
        return CLUSTER_CONCURRENCY

    async def _plan(self, params: JsonObject) -> tuple[ResealPlan, dict[str, JsonValue]]:
        settings = self._ctx.settings()
        selection = selection_of(params)
        unknown = sorted((selection.clusters or frozenset())
                         - {c.name for c in settings.clusters})
        if unknown:
            raise RefusedError(f"no cluster named {', '.join(unknown)} in the config")
        unknown = sorted((selection.repos or frozenset()) - {r.name for r in settings.repos})
        if unknown:
            raise RefusedError(f"no repository named {', '.join(unknown)} in the config")
        hinted = params.get("include_hinted") is True
        inputs = await reseal_inventory.load(self._ctx.store, self._ctx.keystore, settings,
                                             include_hinted=hinted)
        plan = plan_reseal(inputs.cluster_objects, inputs.git_documents, inputs.targets,
                           selection)
        return plan, {**selection_document(selection), "include_hinted": hinted}

    async def dry_run(self, params: JsonObject) -> JsonObject:
        """The plan as ``ResealPlan.dry_run`` documents it; nothing is journaled."""
        plan, selection = await self._plan(params)
        document: dict[str, JsonValue] = {"dry_run": True, "selection": selection}
        document.update(_json_value(plan.dry_run()))
        return document

    async def plan(self, params: JsonObject) -> Plan:
        plan, selection = await self._plan(params)
        if not plan.planned and plan.not_planned:
            raise RefusedError(_refusal(plan))
        clusters: dict[str, JsonValue] = {}
        repos: dict[str, JsonValue] = {}
        objects: list[tuple[str, str]] = []     # the per-object journal's planned rows
        for (source, where), entries in plan.by_destination().items():
            if source is Source.CLUSTER:
                targets = {e.target_key for e in entries}
                if len(targets) != 1:   # the planner gives one key per cluster
                    raise RefusedError(f"cluster {where}: more than one target key planned")
                objects += [(f"cluster:{where}", f"{e.namespace}/{e.name}") for e in entries]
                clusters[where] = {"target_key": targets.pop(), "planned": len(entries)}
            else:
                repos[where] = [entry_document(e) for e in entries]
                objects += [(f"repo:{where}", document_ref(e.path, e.document))
                            for e in entries]
        relabels = await reseal_relabel.planned(self._ctx)
        steps = [f"cluster:{name}" for name in sorted(clusters)] + \
            [f"repo:{name}" for name in sorted(repos)] + \
            [f"relabel:{fingerprint}" for fingerprint in relabels]
        counts = _json_value(plan.dry_run())
        target_keys: list[JsonValue] = [*sorted({p.target_key for p in plan.planned})]
        old_keys: list[JsonValue] = [*sorted({k for p in plan.planned for k in p.old_keys})]
        summary: dict[str, JsonValue] = {
            "planned": len(plan.planned), "not_planned": len(plan.not_planned),
            "by_cluster": counts["by_cluster"], "by_repository": counts["by_repository"],
            "by_reason": counts["by_reason"], "target_keys": target_keys,
            "old_keys": old_keys}
        not_planned: list[JsonValue] = [{"ref": n.ref, "reason": n.reason}
                                        for n in plan.not_planned]
        params_out: dict[str, JsonValue] = {
            "selection": selection, "clusters": clusters, "repos": repos,
            "not_planned": not_planned, **summary}
        if "after_job" in params:
            params_out["after_job"] = params["after_job"]
        if relabels:
            params_out["blast_radius"] = blast_radius(plan.planned, relabels)
        return Plan(steps=steps, params=params_out, audit={**summary, "selection": selection},
                    objects=objects)

    # ------------------------------------------------------------ steps

    async def run_step(self, job: JobRecord, step: str) -> StepOutcome:
        phase, _, name = step.partition(":")
        if phase == "cluster":
            planned = job.params.get("clusters")
            entry = planned.get(name) if isinstance(planned, dict) else None
            if not isinstance(entry, dict):
                raise PermanentError(f"the job's params hold no objects for cluster {name}")
            async with ObjectJournal.open(self._ctx.store, job.id, step) as journal:
                # Jobs journaled before the per-object journal name their objects in params.
                objects = sorted(journal.journaled) or [
                    str(ref) for ref in entry.get("objects") or []]  # type: ignore[union-attr]
                resealer = reseal_cluster.ClusterResealer(
                    self._ctx, self._pool, self._ctx.cluster(name), str(entry["target_key"]),
                    journal if journal.journaled else None)
                return await resealer.run(objects)
        if phase == "repo":
            entries = self._repo_entries(job, name)
            outcome = await reseal_git.GitResealer(self._ctx).reseal_step(job, name, entries)
            await self._ctx.store.jobs.update_objects(
                job.id, repo_marks(step, entries, outcome.detail))
            return outcome
        if phase == "relabel":
            return await reseal_relabel.relabel_step(self._ctx, job, name)
        raise PermanentError(f"unknown step {step}")

    @staticmethod
    def _repo_entries(job: JobRecord, repo: str) -> list[PlannedReseal]:
        repos = job.params.get("repos")
        documents = repos.get(repo) if isinstance(repos, dict) else None
        if not isinstance(documents, list):
            raise PermanentError(f"the job's params hold no documents for repository {repo}")
        return [entry_from_document(d) for d in documents if isinstance(d, dict)]

    # ------------------------------------------------------------ finish

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        clusters: dict[str, JsonValue] = {}
        repositories: dict[str, JsonValue] = {}
        relabelled: dict[str, JsonValue] = {}
        totals: Counter[str] = Counter()
        problems: list[str] = []
        journal_counts = await self._ctx.store.jobs.object_counts(job.id)
        for step in steps:
            phase, _, name = step.ref.partition(":")
            if phase == "relabel":
                relabelled[name] = {"state": step.state, "error": step.error,
                                    **step.detail}
                continue
            counts = {k: v for k, v in step.detail.items()
                      if isinstance(v, int) and not isinstance(v, bool)}
            entry: dict[str, JsonValue] = {"state": step.state, "error": step.error, **counts,
                                 "failures": step.detail.get("failures", [])}
            if step.ref in journal_counts:
                entry["objects"] = dict(counts_document(journal_counts[step.ref]))
            if phase == "cluster":
                if step.state in (StepState.DONE, StepState.SKIPPED):
                    verified, found = await self._verify_cluster(job, name)
                    entry["verified"] = verified
                    problems.extend(found)
                clusters[name] = entry
            elif phase == "repo":
                if step.state in (StepState.DONE, StepState.SKIPPED):
                    entry["verified"] = dict(await reseal_git.GitResealer(self._ctx).verify(
                        job, name, step.detail))
                repositories[name] = entry
            totals.update(counts)
        if problems:
            shown = "; ".join(problems[:_SHOWN])
            more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
            raise FleetError(f"{len(problems)} resealed object(s) not as expected: "
                             f"{shown}{more}")
        result: dict[str, JsonValue] = {
            "clusters": clusters, "repositories": repositories, "totals": dict(totals),
            "by_reason": job.params.get("by_reason", {}),
            "target_keys": job.params.get("target_keys", []),
            "not_planned": job.params.get("not_planned", [])}
        if relabelled:
            result["compromised_keys"] = relabelled
            result["blast_radius"] = job.params.get("blast_radius", {})
        await self._ctx.store.audit.record("reseal_result", job.actor, {
            "job": job.id, "totals": dict(totals),
            "target_keys": job.params.get("target_keys", []),
            "old_keys": job.params.get("old_keys", [])})
        return result

    async def _verify_cluster(self, job: JobRecord, name: str) -> tuple[int, list[str]]:
        """How many planned objects the cluster shows sealed with the target and Synced
        for their generation, and what is not so (deleted objects are not counted)."""
        planned = job.params.get("clusters")
        entry = planned.get(name) if isinstance(planned, dict) else None
        if not isinstance(entry, dict):
            return 0, []
        target = str(entry["target_key"])
        refs = [o.ref for o in await self._ctx.store.jobs.step_objects(job.id, f"cluster:{name}")
                ] or [str(r) for r in entry.get("objects") or []]  # type: ignore[union-attr]
        async with self._ctx.connect(self._ctx.cluster(name)) as client:
            listed = await reseal_cluster.list_objects(client)
        hashes: dict[str, list[str]] = {}
        for ref in refs:
            obj = listed.get(ref)
            if obj is not None:
                label = sealed_secrets.identity_of(obj).label
                hashes[ref] = [attribution.item_hash(v, label)
                               for v in sealed_secrets.encrypted_items(obj).values()]
        known = await self._ctx.store.inventory.get_attributions(
            [h for found in hashes.values() for h in found])
        held = target in self._ctx.keystore
        problems: list[str] = []
        verified = 0
        for ref, found in hashes.items():
            obj = listed[ref]
            observed, status, message = reseal_cluster.synced_state(obj)
            generation = reseal_cluster.generation_of(obj)
            others = {known.get(h) for h in found} - {target}
            if held and others:
                problems.append(f"{name}/{ref}: not every item is sealed with {target}")
            elif observed != generation or status != "True":
                problems.append(f"{name}/{ref}: not Synced for generation {generation} "
                                f"(observedGeneration {observed}, Synced {status}: "
                                f"{message or ''})")
            else:
                verified += 1
        return verified, problems


def blast_radius(planned: Sequence[PlannedReseal],
                 fingerprints: Sequence[str]) -> dict[str, JsonValue]:
    """Per compromised key: the planned SealedSecrets with an item sealed with it (their
    values must change: old ciphertexts stay readable in Git history and backups)."""
    radius: dict[str, list[JsonValue]] = {fp: [] for fp in fingerprints}
    for entry in planned:
        for fingerprint in radius:
            items: list[JsonValue] = [i.item for i in entry.items
                                      if i.fingerprint == fingerprint]
            if not items:
                continue
            where: dict[str, JsonValue] = {"source": entry.source.value, "cluster": entry.cluster}
            if entry.source is not Source.CLUSTER:
                where = {"source": entry.source.value, "repo": entry.repo,
                         "path": entry.path, "document": entry.document}
            radius[fingerprint].append({**where, "namespace": entry.namespace,
                                        "name": entry.name, "items": items})
    return {fp: list(found) for fp, found in radius.items()}


class AutoReseal:
    """A renewal or compromise executor that, once its job succeeded and with ``[fleet]
    auto_reseal`` on, submits a reseal of what is stale or compromised (actor
    ``auto_reseal``), once per job even when its finish runs again after a crash."""

    def __init__(self, inner: JobExecutor, ctx: JobContext, submit: Submit) -> None:
        self._inner = inner
        self._ctx = ctx
        self._submit = submit

    @property
    def kind(self) -> JobKind:
        return self._inner.kind

    @property
    def concurrency(self) -> int:
        return self._inner.concurrency

    async def plan(self, params: JsonObject) -> Plan:
        return await self._inner.plan(params)

    async def run_step(self, job: JobRecord, step: str) -> StepOutcome:
        return await self._inner.run_step(job, step)

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        result = await self._inner.finish(job, steps)
        if not self._ctx.settings().fleet.auto_reseal or any(
                s.state == StepState.FAILED for s in steps):
            return result
        for earlier in await self._ctx.store.jobs.list_jobs(limit=200):
            if earlier.kind == JobKind.RESEAL and earlier.params.get("after_job") == job.id:
                return {**result, "auto_reseal": earlier.id}
        try:
            reseal = await self._submit(JobKind.RESEAL.value,
                                        {"after_job": job.id,
                                         "states": ["stale", "compromised"]}, "auto_reseal")
        except RefusedError as refused:
            log.info("auto_reseal_refused", after_job=job.id, reason=str(refused))
            return {**result, "auto_reseal": {"refused": str(refused)}}
        log.info("auto_reseal_submitted", after_job=job.id, job_id=reseal.id)
        return {**result, "auto_reseal": reseal.id}


def with_auto_reseal(executors: Sequence[JobExecutor], ctx: JobContext,
                     submit: Submit) -> list[JobExecutor]:
    """*executors* with the renewal and compromise ones wrapped in :class:`AutoReseal`."""
    return [AutoReseal(e, ctx, submit) if e.kind in (JobKind.RENEWAL, JobKind.COMPROMISE)
            else e for e in executors]


def build(ctx: JobContext, pool: Executor | None, others: Sequence[JobExecutor],
          submit: Submit) -> tuple[list[JobExecutor], ResealExecutor]:
    """The daemon's executors: *others* (the key jobs) with auto reseal, the reseal
    executor (also returned alone: the API's dry runs) and the relabel one (a reseal's
    relabel step alone, once what it waited for is merged and applied)."""
    resealer = ResealExecutor(ctx, pool)
    return [*with_auto_reseal(others, ctx, submit), resealer,
            relabel_job.RelabelExecutor(ctx)], resealer
