"""The key jobs: sync, renewal, compromise, retirement, adoption.

Each is a plan (what the journal records before anything acts) and steps, every step
idempotent:

- ``master:<fp>``: the key joins the fleet master set (the new key of a renewal, stored
  encrypted in the very transaction that journaled the job, so a replay never makes a
  second one);
- ``compromise:<fp>`` / ``retire:<fp>``: the key's state in the keystore, and out of the
  master set;
- ``adopt:<cluster>``: a cluster's keys into fleet custody;
- ``cluster:<name>``: :func:`cluster_sync.sync_cluster`, the same for every job.

Phases run in that order (``runner.phases``): a cluster is synced only once the key set
it is synced to is final.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

import structlog

from sealfleet.adapters.kube import fleet_keys
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject, JsonValue
from sealfleet.app.jobs import cluster_sync
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import Plan, StepOutcome
from sealfleet.domain import key_secrets
from sealfleet.domain.jobs import JobKind, StepState
from sealfleet.domain.keys import KeySource, KeyState, generate_sealing_key, most_recent_key
from sealfleet.errors import PermanentError, RefusedError

log = structlog.get_logger(__name__)

_SHOWN = 5   # objects named in a refusal before "and N more"


def _cluster_steps(ctx: JobContext) -> list[str]:
    return [f"cluster:{c.name}" for c in ctx.settings().clusters]


def _require_master_mode(ctx: JobContext, what: str) -> None:
    if not ctx.settings().fleet.master:
        raise RefusedError(f"{what} needs master mode ([fleet] master = true): outside it "
                           "sealfleet observes and backs up keys, it renews none itself")


# A new master key must be strictly newer than the newest one (the controller keeps the
# first of equal NotBefores); waiting for the next second costs at most a second.
_MAX_NOT_BEFORE_WAIT = 2.0


async def _after_newest_master(ctx: JobContext) -> None:
    """Wait, if need be, until a key made now has a later NotBefore (whole seconds)
    than the newest master key: else a renewal within the second of the previous one
    would make a key no controller seals with."""
    records = {r.fingerprint: r for r in await ctx.store.keys.list_keys()}
    newest = most_recent_key(records[f] for f in ctx.keystore.master if f in records)
    if newest is None:
        return
    wait = (newest.not_before + dt.timedelta(seconds=1)
            - dt.datetime.now(dt.UTC)).total_seconds()
    if wait > _MAX_NOT_BEFORE_WAIT:   # a master key dated in the future (imported): say so
        log.warning("master_key_not_before_in_future", fingerprint=newest.fingerprint,
                    seconds=round(wait, 1))
    elif wait > 0:
        await asyncio.sleep(wait)


async def _new_key_plan(ctx: JobContext, first_steps: Sequence[str], audit: JsonObject,
                        params: JsonObject) -> Plan:
    bits = ctx.settings().fleet.key_bits
    await _after_newest_master(ctx)
    key = await asyncio.to_thread(generate_sealing_key, bits=bits)   # seconds of CPU
    return Plan(steps=[*first_steps, f"master:{key.fingerprint}", *_cluster_steps(ctx)],
                params={**params, "new_key": key.fingerprint},
                audit={**audit, "new_key": key.fingerprint}, new_keys=[key])


async def _master_step(ctx: JobContext, step: str) -> StepOutcome:
    fingerprint = step.partition(":")[2]
    if fingerprint in ctx.keystore.master:
        return StepOutcome(StepState.SKIPPED, {"master": fingerprint})
    await ctx.keystore.add_master(fingerprint)
    return StepOutcome(detail={"master": fingerprint})


def _cluster_results(steps: Sequence[JobItem]) -> JsonObject:
    clusters: dict[str, JsonValue] = {}
    for step in steps:
        phase, _, name = step.ref.partition(":")
        if phase == "cluster":
            clusters[name] = {"state": step.state, "error": step.error,
                              "served": step.detail.get("served")}
    return {"clusters": clusters}


class _KeyJob:
    """What the key jobs share: the step dispatch and the fleet's restart concurrency."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    @property
    def concurrency(self) -> int:
        return self._ctx.settings().fleet.restart_concurrency

    async def run_step(self, job: JobRecord, step: str) -> StepOutcome:
        phase = step.partition(":")[0]
        if phase == "master":
            return await _master_step(self._ctx, step)
        if phase == "cluster":
            return await cluster_sync.sync_cluster(self._ctx, job, step.partition(":")[2])
        return await self.own_step(job, step)

    async def own_step(self, job: JobRecord, step: str) -> StepOutcome:
        raise PermanentError(f"unknown step {step}")

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        return _cluster_results(steps)


class KeySync(_KeyJob):
    """Every cluster to the master set; the first master key is made when there is none,
    and a newer one when a controller's own renewal made a key newer than the newest
    master key (it would seal with its own; what it sealed stays readable: its key is
    kept where it is and in the keystore).  Each cluster also gets back the keys adopted
    from it that it lost; outside master mode that is all a sync does."""

    kind = JobKind.KEY_SYNC

    async def plan(self, params: JsonObject) -> Plan:
        ctx = self._ctx
        if not ctx.settings().fleet.master:
            return await self._restore_plan(params)
        await ctx.keystore.refresh()
        if not ctx.keystore.master:
            return await _new_key_plan(ctx, [], {"reason": "no master key yet"}, params)
        outran = await self._outran_by_a_controller()
        if outran:
            clusters: list[JsonValue] = list(outran)
            return await _new_key_plan(ctx, [], {"reason": "a controller renewed on its own",
                                                 "clusters": clusters}, params)
        return Plan(steps=_cluster_steps(ctx), params=dict(params), audit={})

    async def _restore_plan(self, params: JsonObject) -> Plan:
        """Outside master mode a sync only gives clusters back the keys adopted from
        them (``keys adopt``) that they lost: no master key, nothing unloaded."""
        ctx = self._ctx
        configured = {c.name for c in ctx.settings().clusters}
        adopted = sorted(name for name in await ctx.store.keys.adopted_keys()
                         if name in configured)
        if not adopted:
            _require_master_mode(ctx, "keys sync")
        return Plan(steps=[f"cluster:{name}" for name in adopted], params=dict(params),
                    audit={"restore_adopted_keys": list[JsonValue](adopted)})

    async def _outran_by_a_controller(self) -> list[str]:
        """Clusters whose sealing key, or a key adopted from them (it would seal once
        written back), is newer than the newest master key."""
        ctx = self._ctx
        records = {r.fingerprint: r for r in await ctx.store.keys.list_keys()}
        newest = most_recent_key(records[f] for f in ctx.keystore.master if f in records)
        if newest is None:
            return []

        def newer(fingerprint: str | None) -> bool:
            return (fingerprint is not None and fingerprint not in ctx.keystore.master
                    and fingerprint in records
                    and records[fingerprint].not_before > newest.not_before)

        adopted = await ctx.store.keys.adopted_keys()   # active ones only
        return sorted(c.name for c in await ctx.store.inventory.list_clusters()
                      if not c.removed and (newer(c.sealing_key) or any(
                          newer(fp) for fp in adopted.get(c.name, ()))))


class Renewal(_KeyJob):
    """A new master key, generated off the loop and stored with the job, then synced."""

    kind = JobKind.RENEWAL

    async def plan(self, params: JsonObject) -> Plan:
        _require_master_mode(self._ctx, "keys renew")
        return await _new_key_plan(self._ctx, [], {}, params)


class Compromise(_KeyJob):
    """Marked compromised at once, out of the master set, a new master key synced; the
    result lists every SealedSecret with an item sealed with it (its values must change:
    old ciphertexts stay readable in Git history).  Its key Secrets are relabelled
    ``compromised`` by a later sync, once nothing inventoried needs it (after a reseal)."""

    kind = JobKind.COMPROMISE

    async def plan(self, params: JsonObject) -> Plan:
        fingerprint = str(params.get("fingerprint", ""))
        if fingerprint not in {r.fingerprint for r in await self._ctx.store.keys.list_keys()}:
            raise RefusedError(f"no key {fingerprint} is known to the fleet")
        step = f"compromise:{fingerprint}"
        if not self._ctx.settings().fleet.master:
            return Plan(steps=[step], params=dict(params), audit={"fingerprint": fingerprint})
        return await _new_key_plan(self._ctx, [step], {"fingerprint": fingerprint}, params)

    async def own_step(self, job: JobRecord, step: str) -> StepOutcome:
        fingerprint = step.partition(":")[2]
        await self._ctx.keystore.mark_compromised([fingerprint])
        await self._ctx.keystore.remove_master(fingerprint)
        return StepOutcome(detail={"compromised": fingerprint})

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        fingerprint = str(job.params.get("fingerprint", ""))
        radius: list[JsonValue] = []
        for record in await self._ctx.store.inventory.records_sealed_with(fingerprint):
            items: list[JsonValue] = [i.item for i in record.items
                                      if i.fingerprint == fingerprint]
            radius.append({"source": "cluster", "cluster": record.cluster,
                           "namespace": record.namespace, "name": record.name,
                           "items": items})
        return {**_cluster_results(steps), "blast_radius": radius}


class Retire(_KeyJob):
    """Vault's trim: refused while anything inventoried needs the key; otherwise out of the
    master set, relabelled away from ``active`` everywhere, controllers restarted and
    verified; kept encrypted in the keystore for recovery unless ``purge``."""

    kind = JobKind.RETIRE

    async def plan(self, params: JsonObject) -> Plan:
        fingerprint = str(params.get("fingerprint", ""))
        ctx = self._ctx
        if fingerprint not in {r.fingerprint for r in await ctx.store.keys.list_keys()}:
            raise RefusedError(f"no key {fingerprint} is known to the fleet")
        users = await ctx.store.inventory.sealed_secrets_using_key(fingerprint)
        # Git documents too: a key retired under them would not open them once applied.
        users += [(f"repo:{link.repo}", link.path, f"document {link.document}")
                  for link in await ctx.store.git.sealed_secrets_using_key(fingerprint)]
        if users:
            shown = ", ".join("/".join(ref) for ref in users[:_SHOWN])
            more = f" and {len(users) - _SHOWN} more" if len(users) > _SHOWN else ""
            raise RefusedError(f"key {fingerprint} still seals {len(users)} SealedSecrets "
                               f"({shown}{more}): reseal them first")
        return Plan(steps=[f"retire:{fingerprint}", *_cluster_steps(ctx)], params=dict(params),
                    audit={"fingerprint": fingerprint, "purge": bool(params.get("purge"))})

    async def own_step(self, job: JobRecord, step: str) -> StepOutcome:
        fingerprint = step.partition(":")[2]
        await self._ctx.keystore.remove_master(fingerprint)
        await self._ctx.store.keys.set_key_state(fingerprint, KeyState.RETIRED, actor=job.actor,
                                                 reason=f"retired by job {job.id}")
        return StepOutcome(detail={"retired": fingerprint})

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        result = _cluster_results(steps)
        if job.params.get("purge") and all(s.state != StepState.FAILED for s in steps):
            await self._ctx.store.keys.purge_private_key(str(job.params["fingerprint"]),
                                                         actor=job.actor)
            return {**result, "purged": True}
        return result


class Adopt(_KeyJob):
    """A cluster's keys into fleet custody (stored encrypted, backed up); with ``share``
    also into the master set, so every cluster holds them (for repositories that apply
    the same SealedSecret to several clusters)."""

    kind = JobKind.ADOPT

    async def plan(self, params: JsonObject) -> Plan:
        name = str(params.get("cluster", ""))
        self._ctx.cluster(name)     # refuses an unknown cluster
        steps = [f"adopt:{name}"]
        if params.get("share"):
            _require_master_mode(self._ctx, "keys adopt --share")
            steps += _cluster_steps(self._ctx)
        return Plan(steps=steps, params=dict(params), audit={"cluster": name,
                                                             "share": bool(params.get("share"))})

    async def own_step(self, job: JobRecord, step: str) -> StepOutcome:
        ctx = self._ctx
        cluster = ctx.cluster(step.partition(":")[2])
        async with ctx.connect(cluster) as client:
            secrets = await fleet_keys.read_key_secrets(client, cluster.controller_namespace)
        found = []
        for secret in secrets:
            seen = key_secrets.read_key_secret(secret)
            if seen.problem is None:
                found.append(await asyncio.to_thread(seen.load))
        await ctx.keystore.adopt(found, source=KeySource.CLUSTER)
        # Custody: written back to this cluster by every sync if it loses them.
        await ctx.store.keys.record_adoption(cluster.name, [k.fingerprint for k in found],
                                             job_id=job.id)
        if job.params.get("share"):
            for key in found:
                await ctx.keystore.add_master(key.fingerprint)
        adopted: list[JsonValue] = [k.fingerprint for k in sorted(found,
                                                                  key=lambda k: k.fingerprint)]
        return StepOutcome(detail={"adopted": adopted,
                                   "at": dt.datetime.now(dt.UTC).isoformat()})


def build(ctx: JobContext) -> list[KeySync | Renewal | Compromise | Retire | Adopt]:
    return [KeySync(ctx), Renewal(ctx), Compromise(ctx), Retire(ctx), Adopt(ctx)]
