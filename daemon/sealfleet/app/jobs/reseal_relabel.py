"""A reseal job's last phase: compromised keys no in-cluster object needs, relabelled.

After a compromise the key stays loaded until nothing in a cluster is sealed with it
(the controller must still open those objects).  A reseal plans a ``relabel:<fp>`` step
per compromised key some cluster still holds under another label than ``compromised``
(as the inventory last saw its key Secrets); the step runs after the cluster and
repository steps and:

1. reads every cluster's SealedSecrets as they are now and looks their items up in the
   attribution cache: any item sealed with the key, or not attributed yet (it might be
   the key's), and the step is *skipped*, naming what still uses it.  Git documents
   (``compromised_keys.still_sealing``, the inventory's view) are named in the detail
   but do not hold the key back: until their reseal branch merges, base branches still carry
   old ciphertexts, but it is the in-cluster objects the controller must decrypt (a
   Flux- or Argo-managed object is one of those: resealed in Git, not in the cluster,
   it keeps the key loaded until its branch is merged and applied);
2. in each cluster, plans with ``planning/key_sync`` (the same guards as a key sync: not
   the legacy-named Secret, not a Secret sealfleet did not write, never the
   controller's last key) and applies only the relabels of this key, then restarts the
   controller if it loaded the key, and waits until it serves what its Secrets say.

Each cluster's relabel is journaled as an object of the step (``written`` before the
labels change, ``done`` after the controller came back), so a replay after a crash
between the relabel and the restart still restarts, once (the restart carries the job
id).  Every relabel is audited; nothing here touches a SealedSecret.

A step skipped for in-cluster objects names, in ``waiting_for``, the GitOps-managed ones
among them with the pending ``sealfleet/reseal-*`` branch that reseals their document:
the key stays loaded until that branch is merged and applied.  Then the relabel is due
(``domain/relabel_due``; ``relabel_job.due`` gathers its inputs) and the scheduler
submits a ``relabel`` job (``relabel_job``), which runs this same step.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import structlog

from sealfleet.adapters.kube import controller, controller_restart, fleet_keys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.job_objects import JobObject
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonValue
from sealfleet.app.config import ClusterSettings, Settings
from sealfleet.app.jobs import cluster_sync, compromised_keys, key_use
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import StepOutcome
from sealfleet.app.jobs.key_use import KeyUse
from sealfleet.domain.jobs import StepState
from sealfleet.domain.keys import KEY_LABEL_COMPROMISED, KeyState
from sealfleet.domain.planning.controller_flags import ControllerFlags
from sealfleet.domain.planning.key_sync import (
    ClusterKeyState,
    DriftReason,
    FleetKeySet,
    HeldKey,
    RestartMode,
    SetKeyLabel,
    SyncPolicy,
    loads,
    plan_key_sync,
    sealing_key,
)
from sealfleet.errors import PermanentError

log = structlog.get_logger(__name__)

_SHOWN = 20   # objects named per cluster when the key is still in use


async def held_unrelabelled(store: Store, settings: Settings) -> list[str]:
    """Compromised keys some configured cluster holds under another label than
    ``compromised``, as the inventory last saw its key Secrets."""
    compromised = {r.fingerprint for r in await store.keys.list_keys()
                   if r.state == KeyState.COMPROMISED}
    holdings = await store.inventory.key_holdings_by_cluster()
    configured = {c.name for c in settings.clusters}
    return sorted({h.fingerprint for cluster, held in holdings.items() if cluster in configured
                   for h in held if h.fingerprint in compromised
                   and h.label_value != KEY_LABEL_COMPROMISED})


async def planned(ctx: JobContext) -> list[str]:
    """Compromised keys some cluster holds under another label (a step each)."""
    return await held_unrelabelled(ctx.store, ctx.settings())


def waited_for_clusters(step: JobItem) -> bool:
    """Whether a ``relabel:<fp>`` step was skipped because in-cluster SealedSecrets used
    the key or might (its detail then counts them, see :func:`relabel_step`)."""
    return step.state == StepState.SKIPPED and "in_use_count" in step.detail


async def _cluster_use(ctx: JobContext, cluster: str) -> KeyUse:
    async with ctx.connect(ctx.cluster(cluster)) as client:
        return await key_use.live_key_use(ctx, client)


async def relabel_step(ctx: JobContext, job: JobRecord, fingerprint: str) -> StepOutcome:
    step = f"relabel:{fingerprint}"
    clusters = [c.name for c in ctx.settings().clusters]
    uses = dict(zip(clusters, await asyncio.gather(
        *(_cluster_use(ctx, name) for name in clusters)), strict=True))
    in_use: dict[str, JsonValue] = {name: list(use.objects_using(fingerprint)[:_SHOWN])
                                    for name, use in uses.items()
                                    if use.objects_using(fingerprint)}
    # Reported, not waited for: Git documents on base branches keep the old ciphertext
    # until their reseal branch is merged (the hook reads the inventory).
    documents = [f"{repo}:{path}#{index}" for use in await compromised_keys.still_sealing(
        ctx.store, [fingerprint]) for repo, path, index in use.git_documents]
    git: list[JsonValue] = list(documents[:_SHOWN])
    unattributed: dict[str, JsonValue] = {name: use.unattributed
                                          for name, use in uses.items() if use.unattributed}
    if in_use or unattributed:
        count = sum(len(use.objects_using(fingerprint)) for use in uses.values())
        log.info("compromised_key_still_used", fingerprint=fingerprint, objects=count,
                 unattributed=sum(u.unattributed for u in uses.values()))
        waiting = await _waiting_for(ctx.store, fingerprint, in_use)
        return StepOutcome(StepState.SKIPPED, {
            "fingerprint": fingerprint, "in_use": in_use, "in_use_count": count,
            "unattributed_items": unattributed, "git_documents": git,
            "waiting_for": waiting,
            "reason": "SealedSecrets in the clusters are still sealed with it"
            if in_use else "some items are not attributed yet: they might be this key's"})
    journaled = {o.ref: o for o in await ctx.store.jobs.step_objects(job.id, step)}
    gate = asyncio.Semaphore(ctx.settings().fleet.restart_concurrency)

    async def one(name: str) -> JobObject:
        async with gate:
            return await _relabel_cluster(ctx, job, step, name, fingerprint,
                                          uses[name].needed, journaled.get(name))

    results = await asyncio.gather(*(one(name) for name in clusters))
    await ctx.store.jobs.update_objects(job.id, results)
    relabelled: list[JsonValue] = [r.ref for r in results if r.outcome == "relabelled"]
    blocked: dict[str, JsonValue] = {r.ref: r.error for r in results if r.state == "skipped"
                                     and r.error}
    if relabelled:
        await ctx.store.audit.record("compromised_key_relabelled", job.actor, {
            "job": job.id, "fingerprint": fingerprint, "clusters": relabelled,
            "blocked": blocked})
    log.info("compromised_key_relabelled", fingerprint=fingerprint,
             clusters=len(relabelled), blocked=len(blocked))
    return StepOutcome(StepState.DONE if relabelled else StepState.SKIPPED, {
        "fingerprint": fingerprint, "relabelled": relabelled, "blocked": blocked,
        "unchanged": [r.ref for r in results if r.outcome == "unchanged"],
        "git_documents": git})


async def _waiting_for(store: Store, fingerprint: str,
                       in_use: dict[str, JsonValue]) -> list[JsonValue]:
    """The GitOps-managed objects among *in_use* (cluster -> ``namespace/name``), each with
    the document it comes from and the pending branch that reseals it, if one does:
    "waiting for branch X to be merged and applied".  From the inventory (names only)."""
    named = {(cluster, str(ref)) for cluster, refs in in_use.items()
             if isinstance(refs, list) for ref in refs}
    records = [(r, r.managed_by) for r in await store.inventory.records_sealed_with(fingerprint)
               if (r.cluster, f"{r.namespace}/{r.name}") in named and r.managed_by is not None]
    links = await store.git.links_for([(r.ciphertext_fingerprint, r.namespace, r.name)
                                       for r, _ in records])
    documents = {(r.cluster, r.namespace, r.name): (link.repo, link.path, link.document,
                                                    r.namespace, r.name)
                 for r, _ in records
                 if (link := links.get((r.ciphertext_fingerprint, r.namespace, r.name)))}
    branches = await store.git_pending.branches_for(sorted(set(documents.values())))
    waiting: list[JsonValue] = []
    for record, managed in records[:_SHOWN]:
        entry: dict[str, JsonValue] = {
            "cluster": record.cluster, "namespace": record.namespace, "name": record.name,
            "managed_by": f"{managed.tool} {managed.name}"}
        document = documents.get((record.cluster, record.namespace, record.name))
        if document is not None:
            entry.update(repo=document[0], path=document[1], document=document[2],
                         branch=branches.get(document))
        waiting.append(entry)
    return waiting


@dataclasses.dataclass(frozen=True)
class _ClusterPlan:
    flags: ControllerFlags
    held: tuple[HeldKey, ...]
    relabels: tuple[SetKeyLabel, ...]     # of this key only
    blocked: str | None                   # why the planner would not relabel it


async def _plan_cluster(ctx: JobContext, client: KubeClient, cluster: ClusterSettings,
                        fingerprint: str, needed: frozenset[str]) -> _ClusterPlan:
    """What the key-sync planner would relabel of *fingerprint* in *cluster* now, from
    the key Secrets and controller flags read through *client*."""
    fleet, _ = await cluster_sync.fleet_key_set(ctx)
    if fingerprint in {k.fingerprint for k in fleet.master}:
        raise PermanentError(f"key {fingerprint} is compromised yet in the master set")
    wanted = FleetKeySet(master=fleet.master, compromised=frozenset({fingerprint}))
    namespace = cluster.controller_namespace
    flags = await controller.read_controller_flags(client, namespace, cluster.controller_name)
    holdings = await fleet_keys.read_key_holdings(client, namespace, key_prefix=flags.key_prefix)
    state = ClusterKeyState(cluster=cluster.name, held=holdings.held, flags=flags,
                            needed=needed, unattributed=False)
    # A compromised key goes from Secrets sealfleet did not write too (an adopted
    # cluster key): a label is all that changes, the key material stays.
    plan = plan_key_sync(wanted, state, SyncPolicy(
        restart_mode=RestartMode(cluster.restart), relabel_unmanaged=True))
    return _ClusterPlan(
        flags=flags, held=tuple(holdings.held),
        relabels=tuple(r for r in plan.relabel if r.fingerprint == fingerprint),
        blocked=next((d.detail for d in plan.drift if d.fingerprint == fingerprint
                      and d.reason is DriftReason.RETIREMENT_BLOCKED), None))


async def remaining_relabels(ctx: JobContext, name: str, fingerprint: str) -> list[str]:
    """The key Secrets of *name* that the planner would still relabel away from holding
    *fingerprint*, were nothing to need it (none once its relabel is done): what a
    relabel job checks the cluster shows."""
    cluster = ctx.cluster(name)
    async with ctx.connect(cluster) as client:
        plan = await _plan_cluster(ctx, client, cluster, fingerprint, frozenset())
    return [r.secret_name for r in plan.relabels]


async def _relabel_cluster(ctx: JobContext, job: JobRecord, step: str, name: str,
                           fingerprint: str, needed: frozenset[str],
                           journaled: JobObject | None) -> JobObject:
    cluster = ctx.cluster(name)
    namespace = cluster.controller_namespace
    async with ctx.connect(cluster) as client:
        plan = await _plan_cluster(ctx, client, cluster, fingerprint, needed)
        flags, relabels = plan.flags, plan.relabels
        held = {h.secret_name: h for h in plan.held}
        unloading = any(loads(held[r.secret_name], flags) for r in relabels)
        owed = journaled is not None and journaled.state == "written"   # a crash came first
        if not relabels and not owed:
            return JobObject(step, name, "skipped", outcome="blocked" if plan.blocked
                             else "unchanged", error=plan.blocked)
        if unloading:
            await ctx.store.jobs.update_objects(job.id, [JobObject(step, name, "written",
                                                                   outcome="relabelled")])
        for relabel in relabels:
            await fleet_keys.set_key_label(client, namespace, relabel.secret_name,
                                           relabel.label, key_prefix=flags.key_prefix)
        if unloading or owed:
            after = [dataclasses.replace(h, label=KEY_LABEL_COMPROMISED)
                     if h.fingerprint == fingerprint and h.secret_name in
                     {r.secret_name for r in relabels} else h for h in plan.held]
            await _restart(client, job, cluster, sealing_key(after, flags))
    return JobObject(step, name, "done", outcome="relabelled")


async def _restart(client: KubeClient, job: JobRecord, cluster: ClusterSettings,
                   expected: str | None) -> None:
    """The controller restarted once for this job, then serving *expected*."""
    namespace, deployment = cluster.controller_namespace, cluster.controller_name
    mode = RestartMode(cluster.restart)
    restart = await controller_restart.restart_controller(
        client, namespace, deployment, mode=mode, job_id=job.id, now=dt.datetime.now(dt.UTC))
    if expected is None or mode is RestartMode.NONE:
        return
    serving = await controller_restart.wait_until_serving(
        client, namespace, deployment, expected, cluster_sync.SERVING_TIMEOUT,
        replaced_pods=restart.replaced_pods)
    if not serving.serving:
        raise PermanentError(f"cluster {cluster.name}: the controller does not serve {expected} "
                             f"after the relabel: {serving.reason}")
