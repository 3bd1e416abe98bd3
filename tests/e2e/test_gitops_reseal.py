"""End to end through Git: a sandbox whose Flux applies part of each cluster from its
GitOps repository, the daemon's production code (fleet, repo scanner, keystore, jobs,
the Git reseal step), a master-key renewal, a reseal job, then a reviewer merging the
reseal branch on the remote and the emulated Flux applying it.

What counts is what the clusters and the report then show: the Flux-managed objects
were never written by sealfleet, the merge reached them through Flux, the controllers
unsealed the new ciphertext, and (once the user's checkout pulled the merge, as
sealfleet reads the configured working tree) nothing is stale, in Git or in a cluster.
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
from sandbox_views import opens_with, resealable, sealed_objects, synced_now
from sealfleet.adapters.http_api import InventoryView
from sealfleet.app.service import policy_of
from sealfleet.sandbox import Sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with flux_sandbox(tmp_path / "sandbox") as started:
        yield started


def flux_managed(sandbox: Sandbox) -> dict[tuple[str, str, str], str]:
    seed = json.loads(sandbox.seed_file.read_text())
    return {(e["cluster"], e["namespace"], e["name"]): e["git_path"]
            for e in seed["sealed_secrets"] if "git_path" in e}


async def test_a_reseal_through_git_reaches_the_clusters_once_merged(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path) -> None:
    assert sandbox.gitops is not None
    remote = sandbox.gitops.remote
    settings = settings_of(sandbox)
    (repo,) = settings.repos
    assert (repo.name, repo.remote, repo.push, repo.base_branch) == ("gitops", "origin", True,
                                                                    "main")
    managed = flux_managed(sandbox)
    everything = resealable(sandbox)
    assert managed
    assert set(managed) < everything
    in_cluster = everything - set(managed)
    async with daemon(settings, executor) as fleet:
        for name in sandbox.names:
            assert (await fleet.run_job("adopt", {"cluster": name})).state == "succeeded"
        assert (await fleet.run_job("key_sync")).state == "succeeded"
        renewal = await fleet.run_job("renewal")
        assert renewal.state == "succeeded", renewal.error
        target = fleet.manager.keystore.get(str(renewal.params["new_key"]))
        assert target is not None

        async def plan_is_complete() -> dict[str, Any] | None:
            plan = await fleet.planned()
            return plan if plan["planned"] == len(everything) else None

        # Each Flux-managed object is planned once, as its Git document (provenance by
        # ciphertext fingerprint), never in its cluster.
        plan = await eventually(plan_is_complete, within=60)
        assert plan["not_resealable"] == []
        assert plan["by_repository"] == {"gitops": len(managed)}
        assert sum(plan["by_cluster"].values()) == len(in_cluster)
        assert {r["path"] for r in plan["reseals"] if r["source"] == "git"} \
            == set(managed.values())
        before = sealed_objects(sandbox)

        job = await fleet.run_job("reseal")
        assert job.state == "succeeded", job.error
        steps = {s.ref: s for s in await fleet.store.jobs.job_items(job.id)}
        assert set(steps) == {"repo:gitops", *(f"cluster:{c}" for c in sandbox.names)}
        detail = steps["repo:gitops"].detail
        assert detail["pushed"] is True
        assert detail["documents_resealed"] == len(managed)
        branch = str(detail["branch"])
        assert branch.startswith("sealfleet/reseal-")
        assert git("for-each-ref", "--format=%(refname:short)", "refs/heads/sealfleet/",
                   cwd=remote).split() == [branch]
        assert git("rev-list", "--count", f"main..{branch}", cwd=remote).strip() == "1"
        after_job = sealed_objects(sandbox)
        for ref in managed:      # sealfleet wrote none of them; Flux had nothing new
            assert after_job[ref]["metadata"]["resourceVersion"] \
                == before[ref]["metadata"]["resourceVersion"], ref
            assert not opens_with(after_job[ref], target) or opens_with(before[ref], target)
        for ref in in_cluster:
            assert opens_with(after_job[ref], target), ref

        # A reviewer merges the branch on the remote; Flux applies the merge.
        reviewer = tmp_path / "reviewer"
        git("clone", "-q", str(remote), str(reviewer), cwd=tmp_path)
        git("merge", "-q", "--no-ff", "-m", f"Merge {branch}", f"origin/{branch}", cwd=reviewer)
        git("push", "-q", "origin", "main", cwd=reviewer)
        merged = git("rev-parse", "HEAD", cwd=reviewer).strip()

        async def applied_everywhere() -> bool:
            return all(c.flux is not None
                       and c.flux.last_applied_revision() == f"main@sha1:{merged}"
                       for c in sandbox.clusters.values())

        await eventually(applied_everywhere, within=30)

        async def flux_resealed_and_synced() -> bool:
            now = sealed_objects(sandbox)
            return all(opens_with(now[ref], target) and synced_now(now[ref])
                       for ref in managed)

        await eventually(flux_resealed_and_synced, within=30)
        now = sealed_objects(sandbox)
        for ref, path in managed.items():
            (doc_spec,) = [json.loads(json.dumps(d["spec"])) for d in _documents(
                git("show", f"main:{path}", cwd=remote))]
            assert now[ref]["spec"] == doc_spec, ref        # what Git says, byte for byte

        # The user's checkout pulls the merge (sealfleet reads that working tree), and the
        # same daemon reports what it sees: it learned the renewed sealing key while the
        # controllers restarted (the probe settles in seconds, not at the next minute).
        git("pull", "-q", "--ff-only", cwd=sandbox.gitops.clone)
        view = InventoryView(fleet.store, policy=policy_of(settings))

        async def nothing_stale() -> dict[str, Any] | None:
            report: dict[str, Any] = (await view.rebuild()).report
            counts = report["fleet"]
            (repo_report,) = report["repos"]
            done = (repo_report["head_commit"] == merged
                    and counts["git_sealed_secrets"]["current"] == len(managed)
                    and counts["sealed_secrets"]["stale"] == 0)
            return report if done else None

        report = await eventually(nothing_stale, within=30)
        assert report["fleet"]["git_sealed_secrets"]["stale"] == 0
        assert report["fleet"]["sealed_secrets"]["current"] >= len(everything)
        (repo_report,) = report["repos"]
        assert repo_report["pending_branches"] == []
        assert (await fleet.planned())["planned"] == 0


def _documents(text: str) -> list[dict[str, Any]]:
    from sealfleet.domain import documents

    return documents.parse_documents(text)
