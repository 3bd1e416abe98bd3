"""End to end: the reseal job against a seeded sandbox over HTTPS.

The daemon's production code (fleet, keystore, job runner, key and reseal executors,
the kube client) talks to emulated apiservers whose controllers unseal and report
``Synced``/``observedGeneration`` as real ones do.  What counts is what the clusters
then show: the items open with the target key only, the Secret the controller writes
is the same, nothing but ciphertext changed.
"""

from __future__ import annotations

import base64
import json
import logging
import tomllib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from job_daemon import daemon
from polling import eventually
from sandbox_views import (
    SEALED,
    opens_with,
    resealable,
    sealed_objects,
    synced_now,
    unchanged_part,
    unsealed,
)
from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.store.records import JobRecord
from sealfleet.app import config
from sealfleet.app.jobs import reseal_cluster
from sealfleet.app.jobs.context import JobContext
from sealfleet.errors import RefusedError
from sealfleet.sandbox import Sandbox, SeedSpec

SPEC = SeedSpec(namespaces=2, sealed_secrets=6, keys=2, seed=11, key_bits=2048)
FLUX = "kustomize.toolkit.fluxcd.io/name"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=2, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3, crash_backoff=(0.1, 0.5),
                       startup_delay=0.2) as started:
        yield started


def settings_of(sandbox: Sandbox, *, master: bool,
                least_privilege: tuple[str, ...] = ()) -> config.Settings:
    data = tomllib.loads(sandbox.config.read_text())
    if master:
        data["fleet"] = {"master": True, "key_bits": 2048}
    for cluster in data["clusters"]:
        if cluster["name"] in least_privilege:
            cluster["read_key_secrets"] = False
    return config.settings_from_mapping(data, base_dir=sandbox.config.parent)


async def mark_flux_managed(settings: config.Settings, cluster: str, namespace: str,
                            name: str) -> None:
    where = next(c for c in settings.clusters if c.name == cluster)
    async with KubeClient.connect(str(where.kubeconfig), where.context,
                                  request_timeout=5) as client:
        await client.patch_json(controller.sealed_secret_path(namespace, name),
                                {"metadata": {"labels": {FLUX: "flux-system/apps"}}})


async def test_renewal_then_reseal_leaves_everything_sealed_with_the_new_key(
        sandbox: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_of(sandbox, master=True)
    expected = resealable(sandbox)
    managed = sorted(expected)[0]
    await mark_flux_managed(settings, *managed)
    before = sealed_objects(sandbox)
    plaintexts_before = unsealed(sandbox)
    known_plaintext = next(iter(
        sandbox.cluster(managed[0]).store.get("secrets", managed[1], managed[2])["data"]
        .values()))
    async with daemon(settings, executor) as fleet:
        for name in sandbox.names:
            assert (await fleet.run_job("adopt", {"cluster": name})).state == "succeeded"
        assert (await fleet.run_job("key_sync")).state == "succeeded"
        renewal = await fleet.run_job("renewal")
        assert renewal.state == "succeeded", renewal.error
        new_key = str(renewal.params["new_key"])
        target = fleet.manager.keystore.get(new_key)
        assert target is not None

        async def plan_is_complete() -> dict[str, Any] | None:
            plan = await fleet.planned()
            return plan if plan["planned"] == len(expected) - 1 else None

        plan = await eventually(plan_is_complete, within=30)
        # The dry run journals nothing, and routes the Flux-managed object to Git.
        assert await fleet.store.jobs.list_jobs(state="pending") == []
        kinds = [j.kind for j in await fleet.store.jobs.list_jobs()]
        assert "reseal" not in kinds
        assert plan["by_cluster"] == {c: sum(1 for e in expected if e[0] == c
                                            and e != managed) for c in sandbox.names}
        assert {r["target_key"] for r in plan["reseals"]} == {new_key}
        assert [n["ref"] for n in plan["not_resealable"]] == ["/".join(managed)]
        assert "managed by Flux flux-system/apps" in plan["not_resealable"][0]["reason"]

        job = await fleet.run_job("reseal")
        assert job.state == "succeeded", job.error
        steps = {s.ref: s for s in await fleet.store.jobs.job_items(job.id)}
        assert set(steps) == {f"cluster:{c}" for c in sandbox.names}
        totals = job.result["totals"]
        assert isinstance(totals, dict)
        assert totals["resealed"] == len(expected) - 1
        assert totals["failed"] == 0
        assert job.params["target_keys"] == [new_key]

        # A replay of the same plan finds the work done in the per-object journal: no
        # object is read, nothing is written again, the counts are the journal's.
        first = sandbox.names[0]
        again = await fleet.resealer.run_step(job, f"cluster:{first}")
        assert again.detail["read"] == 0
        assert again.detail["from_journal"] == plan["by_cluster"][first]
        assert again.detail["resealed"] == steps[f"cluster:{first}"].detail["resealed"]
        journal = await fleet.store.jobs.step_objects(job.id, f"cluster:{first}")
        assert {o.ref for o in journal} == {f"{e[1]}/{e[2]}" for e in expected
                                            if e[0] == first and e != managed}
        assert {(o.state, o.outcome) for o in journal} == {("done", "resealed")}
        assert all(o.generation is not None and o.error is None for o in journal)
        counts = await fleet.store.jobs.object_counts(job.id)
        assert counts[f"cluster:{first}"].done == plan["by_cluster"][first]
        assert counts[f"cluster:{first}"].remaining == 0
        # Nothing is left to reseal but the Flux-managed object (once the inventory has
        # seen the new ciphertexts): refused, with why.
        async def caught_up() -> bool:
            return (await fleet.planned())["planned"] == 0

        await eventually(caught_up)
        with pytest.raises(RefusedError, match="managed by Flux"):
            await fleet.runner.submit("reseal", {}, actor="test")

    after = sealed_objects(sandbox)
    for ref in expected:
        obj = after[ref]
        assert unchanged_part(obj) == unchanged_part(before[ref]), ref
        if ref == managed:
            assert obj["metadata"]["resourceVersion"] \
                == before[ref]["metadata"]["resourceVersion"]
            continue
        assert opens_with(obj, target), ref
        assert obj["metadata"]["generation"] == before[ref]["metadata"]["generation"] + 1
        assert synced_now(obj), ref

    async def same_plaintext() -> bool:
        now = unsealed(sandbox)
        return all(now.get(ref) == digest for ref, digest in plaintexts_before.items())

    await eventually(same_plaintext)
    # No plaintext in the database, the job documents or the logs.
    raw = settings.store.database.read_bytes()
    for suffix in ("-wal", "-shm"):
        wal = settings.store.database.with_name(settings.store.database.name + suffix)
        if wal.exists():
            raw += wal.read_bytes()
    secret_value = base64.b64decode(known_plaintext)
    assert len(secret_value) >= 8
    captured = capfd.readouterr()
    logs = caplog.text + captured.out + captured.err
    for needle in (secret_value, known_plaintext.encode()):
        assert needle not in raw
        assert needle.decode() not in logs
        assert needle.decode() not in json.dumps(job.result) + json.dumps(job.params)


async def test_a_conflicting_write_is_read_again_and_resealed_on_top_of_it(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    settings = settings_of(sandbox, master=False)
    expected = sorted(resealable(sandbox))
    async with daemon(settings, executor) as fleet:
        async def stale_one() -> dict[str, Any] | None:
            plan = await fleet.planned()
            return plan["reseals"][0] if plan["reseals"] else None

        entry = await eventually(stale_one, within=30)
        cluster = next(c for c in settings.clusters if c.name == entry["cluster"])
        ref = f"{entry['namespace']}/{entry['name']}"
        path = controller.sealed_secret_path(entry["namespace"], entry["name"])
        context = JobContext(fleet.store, fleet.manager.keystore, lambda: settings)
        async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                      request_timeout=5) as client:
            read = await client.get_json(path)
            # Another writer changes the object after we read it.
            await client.patch_json(path, {"metadata": {"annotations": {"team": "bumped"}}})
            resealer = reseal_cluster.ClusterResealer(context, executor, cluster,
                                                      entry["target_key"])
            outcome = await resealer.run([ref], snapshot={ref: read})
        assert outcome.detail["conflicts_replanned"] == 1, outcome.detail
        assert outcome.detail["resealed"] == 1
        assert outcome.detail["failed"] == 0
        obj = sandbox.cluster(entry["cluster"]).store.get(SEALED, entry["namespace"],
                                                         entry["name"])
        assert obj["metadata"]["annotations"]["team"] == "bumped"     # kept: read again
        key = fleet.manager.keystore.get(entry["target_key"])
        assert key is not None
        assert opens_with(obj, key)
        assert synced_now(obj)
    assert expected


async def test_a_cluster_without_the_old_private_keys_reseals_through_v1_rotate(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    victim = sandbox.names[1]
    settings = settings_of(sandbox, master=False)
    expected = {r for r in resealable(sandbox) if r[0] == victim}
    async with daemon(settings, executor) as fleet:
        async def planned() -> dict[str, Any] | None:
            plan = await fleet.planned(clusters=[victim])
            return plan if plan["planned"] else None

        plan = await eventually(planned, within=30)
        target = plan["reseals"][0]["target_key"]
        old = {k for r in plan["reseals"] for k in r["old_keys"]}
        for fingerprint in old:    # sealfleet loses the old private keys for good
            await fleet.store.keys.purge_private_key(fingerprint, actor="test")
    # The cluster no longer shows sealfleet its key Secrets: it cannot learn them back.
    settings = settings_of(sandbox, master=False, least_privilege=(victim,))
    async with daemon(settings, executor) as fleet:
        assert old
        assert not old & fleet.manager.keystore.fingerprints()
        plan = await eventually(planned, within=30)
        job = await fleet.run_job("reseal", {"clusters": [victim]})
        assert job.state == "succeeded", job.error
        (step,) = await fleet.store.jobs.job_items(job.id)
        assert step.detail["rotated_via_controller"] == plan["planned"]
        assert step.detail["resealed"] == 0
        key = fleet.manager.keystore.get(target)
        assert key is not None
    after = sealed_objects(sandbox)
    rotated = {(victim, *r["ref"].split("/")[1:]) for r in plan["reseals"]}
    assert rotated <= expected
    for ref in rotated:
        assert opens_with(after[ref], key), ref
        assert synced_now(after[ref]), ref


async def test_auto_reseal_after_a_renewal(sandbox: Sandbox,
                                           executor: ThreadPoolExecutor) -> None:
    data = tomllib.loads(sandbox.config.read_text())
    data["fleet"] = {"master": True, "key_bits": 2048, "auto_reseal": True}
    settings = config.settings_from_mapping(data, base_dir=sandbox.config.parent)
    # One object carries only app.kubernetes.io/instance (Argo CD's older tracking, but
    # Helm sets it too): the automatic reseal, which never takes such hinted objects,
    # leaves it; a reseal asked with include_hinted would write it.
    everything = sorted(resealable(sandbox))
    hinted, unhinted = everything[0], everything[1:]
    where = next(c for c in settings.clusters if c.name == hinted[0])
    async with KubeClient.connect(str(where.kubeconfig), where.context,
                                  request_timeout=5) as client:
        await client.patch_json(controller.sealed_secret_path(*hinted[1:]), {
            "metadata": {"labels": {"app.kubernetes.io/instance": "web"}}})
    async with daemon(settings, executor) as fleet:
        for name in sandbox.names:
            assert (await fleet.run_job("adopt", {"cluster": name})).state == "succeeded"
        sync = await fleet.run_job("key_sync")
        assert sync.state == "succeeded"
        assert "auto_reseal" not in sync.result          # only after a renewal/compromise

        async def attributed() -> bool:
            # The plan needs the inventory to know what sealed each item first.
            plan = await fleet.resealer.dry_run({})
            return plan["planned"] == len(unhinted)

        await eventually(attributed, within=30)
        plan = await fleet.resealer.dry_run({})
        assert [n["ref"] for n in plan["not_resealable"]] == ["/".join(hinted)]
        assert "possibly managed by Argo CD" in str(plan["not_resealable"])
        assert (await fleet.resealer.dry_run({"include_hinted": True}))["planned"] \
            == len(everything)
        renewal = await fleet.run_job("renewal")
        assert renewal.state == "succeeded", renewal.error
        reseal_id = renewal.result["auto_reseal"]
        assert isinstance(reseal_id, str), renewal.result

        async def reseal_done() -> JobRecord | None:
            found = await fleet.store.jobs.get_job(reseal_id)
            return found if found is not None and found.state in ("succeeded", "failed") \
                else None

        reseal_job: JobRecord = await eventually(reseal_done, within=60)
        assert reseal_job.state == "succeeded", reseal_job.error
        assert reseal_job.actor == "auto_reseal"
        assert reseal_job.params["after_job"] == renewal.id
        assert reseal_job.params["by_cluster"] == {
            name: sum(1 for r in unhinted if r[0] == name) for name in sandbox.names}
        entries = await fleet.store.audit.entries(limit=500)
        requested = [e for e in entries if e.event == "reseal_requested"]
        assert [e.actor for e in requested] == ["auto_reseal"]
        assert requested[0].details["target_keys"] == [renewal.params["new_key"]]
    key = fleet.manager.keystore.get(str(renewal.params["new_key"]))
    assert key is not None
    after = sealed_objects(sandbox)
    for ref in unhinted:
        assert opens_with(after[ref], key), ref
    assert not opens_with(after[hinted], key)


async def test_an_unreachable_cluster_pauses_its_part_while_the_rest_goes_on(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    settings = settings_of(sandbox, master=False)
    first, down = sandbox.names
    async with daemon(settings, executor) as fleet:
        async def both_planned() -> dict[str, Any] | None:
            plan = await fleet.planned()
            return plan if set(plan["by_cluster"]) == {first, down} else None

        plan = await eventually(both_planned, within=30)
        await sandbox.cluster(down).api.set_faults(outage=True)
        try:
            job = await fleet.runner.submit("reseal", {}, actor="test")

            async def first_done_while_down_waits() -> bool:
                steps = {s.ref: s.state for s in await fleet.store.jobs.job_items(job.id)}
                return steps == {f"cluster:{first}": "done", f"cluster:{down}": "running"}

            await eventually(first_done_while_down_waits, within=60)
        finally:
            await sandbox.cluster(down).api.set_faults(outage=False)

        async def finished() -> JobRecord | None:
            found = await fleet.store.jobs.get_job(job.id)
            return found if found is not None and found.state in ("succeeded", "failed") \
                else None

        done: JobRecord = await eventually(finished, within=60)
        assert done.state == "succeeded", done.error
        clusters = done.result["clusters"]
        assert isinstance(clusters, dict)
        assert clusters[down]["resealed"] == plan["by_cluster"][down]  # type: ignore[index]
        assert clusters[first]["resealed"] == plan["by_cluster"][first]  # type: ignore[index]
