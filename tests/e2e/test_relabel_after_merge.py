"""End to end: a compromised key that only Flux-managed objects still need is relabelled
by the daemon itself once the reseal branch is merged and Flux applied it.

The sandbox's Flux applies part of each cluster from its GitOps repository; the daemon's
production code runs (fleet, repo scanner, keystore, job runner, the scheduler's tick).
A key sealing Flux-managed objects is compromised and a reseal rewrites those objects
on a branch, not in the cluster: its relabel step is skipped, naming the branch it
waits for.  A reviewer merges the branch, Flux applies it, and the scheduler submits a
``relabel`` job on its own, once: the key Secret is labelled ``compromised`` and the
restarted controller no longer loads it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from gitops_sandbox import flux_sandbox, git, settings_of
from job_daemon import daemon
from polling import eventually
from sandbox_views import key_labels, opens_with, resealable, sealed_objects, synced_now
from sealfleet.app.scheduler import Scheduler
from sealfleet.domain.keys import KEY_LABEL_COMPROMISED
from sealfleet.sandbox import Sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with flux_sandbox(tmp_path / "sandbox") as started:
        yield started


@pytest.mark.timeout(180)   # three jobs with restarts, a merge and Flux applying it
async def test_a_key_only_flux_objects_need_is_relabelled_once_their_branch_is_applied(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    assert sandbox.gitops is not None
    remote = sandbox.gitops.remote
    settings = settings_of(sandbox)
    seed = json.loads(sandbox.seed_file.read_text())
    managed = {(e["cluster"], e["namespace"], e["name"]): e for e in seed["sealed_secrets"]
               if "git_path" in e}
    # The victim: the key sealing a Flux-managed object (the first one, in key order).
    victim = sorted({i["key"] for e in managed.values() for i in e["items"] if i["key"]})[0]
    uses = {ref for ref, e in managed.items() if any(i["key"] == victim for i in e["items"])}
    holders = sorted({cluster for cluster, _, _ in uses})
    everything = resealable(sandbox)
    async with daemon(settings, executor) as fleet:
        scheduler = Scheduler(fleet.runner, fleet.store, settings=lambda: settings,
                              report=lambda: None,   # no drift syncs: only what is due
                              attribution_backlog=lambda: fleet.manager.attribution_backlog)
        for name in sandbox.names:
            assert (await fleet.run_job("adopt", {"cluster": name})).state == "succeeded"
        assert (await fleet.run_job("key_sync")).state == "succeeded"

        async def attributed() -> bool:
            found = await fleet.store.inventory.sealed_secrets_using_key(victim)
            return uses <= set(found)

        await eventually(attributed, within=60)
        compromise = await fleet.run_job("compromise", {"fingerprint": victim})
        assert compromise.state == "succeeded", compromise.error
        target = fleet.manager.keystore.get(str(compromise.params["new_key"]))
        assert target is not None
        # Still loaded where objects need it: the compromise's sync leaves it active.
        assert await key_labels(settings, victim) == {n: {"active"} for n in holders}

        async def plan_is_complete() -> bool:
            return (await fleet.planned())["planned"] == len(everything)

        await eventually(plan_is_complete, within=60)
        reseal = await fleet.run_job("reseal")
        assert reseal.state == "succeeded", reseal.error
        steps = {s.ref: s for s in await fleet.store.jobs.job_items(reseal.id)}
        branch = str(steps["repo:gitops"].detail["branch"])
        relabel = steps[f"relabel:{victim}"]
        assert relabel.state == "skipped"      # the Flux objects still need it
        assert {(c, *ref.split("/")) for c, refs in relabel.detail["in_use"].items()
                for ref in refs} == uses
        # The report says what it waits for: the branch that reseals those objects.
        waiting = relabel.detail["waiting_for"]
        assert {(w["cluster"], w["namespace"], w["name"]) for w in waiting} == uses
        assert {w["branch"] for w in waiting} == {branch}
        assert {w["managed_by"] for w in waiting} == {"flux flux-system/apps"}
        assert reseal.result["compromised_keys"][victim]["waiting_for"] == waiting
        assert await key_labels(settings, victim) == {n: {"active"} for n in holders}
        assert await scheduler.tick() is None          # not before the merge is applied

        # A reviewer merges the branch on the remote; Flux applies it.
        reviewer = tmp_path / "reviewer"
        git("clone", "-q", str(remote), str(reviewer), cwd=tmp_path)
        git("merge", "-q", "--no-ff", "-m", f"Merge {branch}", f"origin/{branch}", cwd=reviewer)
        git("push", "-q", "origin", "main", cwd=reviewer)

        async def flux_resealed_and_synced() -> bool:
            now = sealed_objects(sandbox)
            return all(opens_with(now[ref], target) and synced_now(now[ref])
                       for ref in managed)

        await eventually(flux_resealed_and_synced, within=60)

        # Nobody asks: the scheduler's tick finds the relabel due and submits it, once.
        async def submitted() -> Any:
            return await scheduler.tick()

        job = await eventually(submitted, within=30)
        assert (job.kind, job.actor, job.params["fingerprints"]) == (
            "relabel", "scheduler", [victim])

        async def finished() -> Any:
            found = await fleet.store.jobs.get_job(job.id)
            return found if found is not None and found.state in ("succeeded", "failed") \
                else None

        done = await eventually(finished, within=90)
        assert done.state == "succeeded", done.error
        assert done.result["compromised_keys"][victim]["relabelled"] == holders
        assert await key_labels(settings, victim) == {
            n: {KEY_LABEL_COMPROMISED} for n in holders}
        entries = [e for e in await fleet.store.audit.entries(limit=1000)
                   if e.event == "compromised_key_relabelled"]
        assert [(e.details["fingerprint"], e.details["job"]) for e in entries] \
            == [(victim, job.id)]

        async def unloaded() -> bool:
            return all(r.process is not None
                       and victim not in r.process.registry.fingerprints
                       and target.fingerprint in r.process.registry.fingerprints
                       for n in holders for r in sandbox.cluster(n).workload.endpoints)

        await eventually(unloaded, within=30)
        # Once per change: nothing more is due, no second job.
        assert await scheduler.tick() is None
        kinds = [j.kind for j in await fleet.store.jobs.list_jobs(limit=100)]
        assert kinds.count("relabel") == 1
    # Nothing undecryptable: every object opens with the new key and is Synced.
    after = sealed_objects(sandbox)
    for ref in everything:
        assert opens_with(after[ref], target), ref
        assert synced_now(after[ref]), ref
