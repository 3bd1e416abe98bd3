"""One cluster brought to the fleet's keys: the step every key job ends with.

Read what the cluster holds (its key Secrets, its controller's flags, what
``/v1/cert.pem`` serves), plan (``domain/planning/key_sync``: pure), write the missing
key Secrets, relabel the unwanted ones, restart the controller when what it loads
changed, and wait until it serves the key the plan says it will, from a finished
rollout, without crash-looping.  Everything is recomputed from the cluster on a replay:
a Secret written before a crash is found and not written again, a restart this job
already made is not made twice (``controller_restart`` records the job id).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import structlog

from sealfleet.adapters.kube import controller, controller_restart, fleet_keys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.store.records import JobRecord, JsonObject
from sealfleet.app.config import ClusterSettings, RepoSettings
from sealfleet.app.jobs import key_use
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import StepOutcome
from sealfleet.domain.jobs import StepState
from sealfleet.domain.keys import KeyState, SealingKey
from sealfleet.domain.planning.key_sync import (
    ClusterKeyState,
    FleetKey,
    FleetKeySet,
    RestartMode,
    SyncPolicy,
    plan_key_sync,
)
from sealfleet.errors import FleetError, PermanentError

log = structlog.get_logger(__name__)

# How long a controller may take to come back serving the new key: image pull, start,
# readiness.  Generous on purpose: running out is a failed step, retried by the next sync.
SERVING_TIMEOUT = 300.0


async def fleet_key_set(ctx: JobContext) -> tuple[FleetKeySet, dict[str, SealingKey]]:
    """The keys every cluster must load (the master set, private halves loaded) and those
    to unload (retired, compromised).  The keystore is refreshed first: a renewal's key
    was stored with its job, behind the keystore's back.  Outside master mode the set is
    empty and nothing is unloaded: a sync then only gives clusters back their own
    adopted keys (:func:`custody_keys`)."""
    await ctx.keystore.refresh()
    await ctx.keystore.materialize()
    if not ctx.settings().fleet.master:
        return FleetKeySet(master=()), {}
    keys: dict[str, SealingKey] = {}
    for fingerprint in sorted(ctx.keystore.master):
        key = ctx.keystore.get(fingerprint)
        if key is None:
            raise PermanentError(f"master key {fingerprint} has no private key in the keystore")
        keys[fingerprint] = key
    records = await ctx.store.keys.list_keys()
    retired = frozenset(r.fingerprint for r in records
                        if r.state == KeyState.RETIRED and r.fingerprint not in keys)
    compromised = frozenset(r.fingerprint for r in records
                            if r.state == KeyState.COMPROMISED and r.fingerprint not in keys)
    master = tuple(FleetKey(k.fingerprint, k.not_before)
                   for k in sorted(keys.values(), key=lambda k: k.not_before))
    return FleetKeySet(master=master, retired=retired, compromised=compromised), keys


async def custody_keys(ctx: JobContext, cluster: str,
                       fleet: FleetKeySet) -> dict[str, SealingKey]:
    """The keys adopted from *cluster*, still active and not in the master set, with
    their private halves: the cluster gets them back if it lost them (no other does)."""
    master = {k.fingerprint for k in fleet.master}
    custody: dict[str, SealingKey] = {}
    for fingerprint in (await ctx.store.keys.adopted_keys()).get(cluster, []):
        if fingerprint in master or fleet.unwanted_label(fingerprint) is not None:
            continue
        key = ctx.keystore.get(fingerprint)
        if key is None:   # never written without its private key (it would not load)
            log.warning("adopted_key_not_in_keystore", cluster=cluster,
                        fingerprint=fingerprint)
            continue
        custody[fingerprint] = key
    return custody


def repo_counts_for(repo: RepoSettings, cluster: str) -> bool:
    """Whether the repository's documents count as the cluster's: it names the cluster
    in its ``clusters`` or in any rule's (more than the rules may send there, never
    less)."""
    return cluster in repo.clusters or any(cluster in rule.clusters for rule in repo.rules)


async def _needed(ctx: JobContext, cluster: str) -> tuple[frozenset[str], bool]:
    """Keys the cluster's inventoried SealedSecrets are sealed with, and whether any of
    them opens with no known key (then no key may be unloaded: it might be that one).
    The Git documents of every ``[[repos]]`` entry that names the cluster (in its
    ``clusters`` or any rule's: more than the rules may send here, never less) count
    too: once applied, the controller must open them."""
    items = [item for record in await ctx.store.inventory.sealed_secrets_of_cluster(cluster)
             for item in record.items]
    for repo in ctx.settings().repos:
        if repo_counts_for(repo, cluster):
            items += [item for document in await ctx.store.git.sealed_secrets_of_repo(repo.name)
                      for item in document.items]
    needed = frozenset(item.fingerprint for item in items if item.fingerprint is not None)
    return needed, any(item.fingerprint is None for item in items)


async def _served(client: KubeClient, cluster: ClusterSettings) -> str | None:
    try:
        proxy = await controller.proxy_name(client, cluster.controller_namespace,
                                            cluster.controller_name)
        certificate = await controller.fetch_certificate(client, cluster.controller_namespace,
                                                         proxy)
    except FleetError:
        return None   # not serving now: the plan then goes by the key Secrets alone
    return certificate.fingerprint


async def sync_cluster(ctx: JobContext, job: JobRecord, name: str) -> StepOutcome:
    cluster = ctx.cluster(name)
    namespace, deployment = cluster.controller_namespace, cluster.controller_name
    fleet, keys = await fleet_key_set(ctx)
    custody = await custody_keys(ctx, name, fleet)
    keys = {**keys, **custody}
    needed, unattributed = await _needed(ctx, name)
    async with ctx.connect(cluster) as client:
        flags = await controller.read_controller_flags(client, namespace, deployment)
        holdings = await fleet_keys.read_key_holdings(client, namespace,
                                                      key_prefix=flags.key_prefix)
        state = ClusterKeyState(cluster=name, held=holdings.held, flags=flags,
                                served_fingerprint=await _served(client, cluster),
                                needed=needed, unattributed=unattributed,
                                custody=tuple(FleetKey(k.fingerprint, k.not_before)
                                              for k in custody.values()))
        policy = SyncPolicy(restart_mode=RestartMode(cluster.restart))
        plan = plan_key_sync(fleet, state, policy)
        if plan.relabel:
            # About to unload keys: the inventory may not have seen the latest writes
            # (a reseal a moment ago), so what the cluster shows now must agree.
            use = await key_use.live_key_use(ctx, client, none_is_unattributed=True)
            state = dataclasses.replace(state, needed=state.needed | use.needed,
                                        unattributed=state.unattributed
                                        or use.unattributed > 0)
            plan = plan_key_sync(fleet, state, policy)
        for create in plan.create:
            await fleet_keys.ensure_key_secret(client, namespace, keys[create.fingerprint],
                                               job.id, key_prefix=flags.key_prefix)
        for relabel in plan.relabel:
            await fleet_keys.set_key_label(client, namespace, relabel.secret_name,
                                           relabel.label, key_prefix=flags.key_prefix)
        restart = await controller_restart.restart_controller(
            client, namespace, deployment, mode=plan.restart, job_id=job.id,
            now=dt.datetime.now(dt.UTC))
        detail: JsonObject = {
            "created": [c.fingerprint for c in plan.create],
            "relabelled": [{"secret": r.secret_name, "label": r.label} for r in plan.relabel],
            "restart": str(plan.restart) if plan.restart is not RestartMode.NONE else None,
            "restart_reasons": list(plan.restart_reasons),
            "drift": [str(d.reason) for d in plan.drift],
            "expected_sealing_key": plan.expected_sealing_key,
        }
        if plan.expected_sealing_key is not None:
            serving = await controller_restart.wait_until_serving(
                client, namespace, deployment, plan.expected_sealing_key, SERVING_TIMEOUT,
                replaced_pods=restart.replaced_pods)
            detail = {**detail, "served": serving.served_fingerprint,
                      "crash_loop": serving.crash_loop}
            if not serving.serving:
                raise PermanentError(f"cluster {name}: the controller does not serve "
                                     f"{plan.expected_sealing_key}: {serving.reason}")
    log.info("cluster_keys_synced", cluster=name, created=len(plan.create),
             relabelled=len(plan.relabel), restarted=restart.restarted)
    return StepOutcome(StepState.DONE if plan.has_actions else StepState.SKIPPED, detail)
