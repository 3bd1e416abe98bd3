"""End to end: the reseal job's per-object journal, its replay, and the relabel of a
compromised key once no in-cluster SealedSecret needs it.

The daemon's production code (fleet, keystore, runner, executors, kube client) against
a seeded sandbox over HTTPS, as in ``test_reseal``; what counts is what the journal, the
clusters' objects, their key Secrets and their controllers then show.
"""

from __future__ import annotations

from pathlib import Path

from e2e.test_reseal import sandbox, settings_of
from job_daemon import daemon
from polling import eventually
from sandbox_views import key_labels, opens_with, resealable, sealed_objects, synced_now, unsealed
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.job_objects import JobObject
from sealfleet.app import config
from sealfleet.domain.keys import KEY_LABEL_COMPROMISED
from sealfleet.sandbox import Sandbox

__all__ = ["sandbox"]   # the fixture, shared with test_reseal


async def test_a_replay_reads_only_what_the_journal_has_not_marked(
        sandbox: Sandbox, executor: object, tmp_path: Path) -> None:
    settings = settings_of(sandbox, master=True)
    expected = resealable(sandbox)
    slow = sandbox.names[0]
    async with daemon(settings, executor) as fleet:
        for name in sandbox.names:
            assert (await fleet.run_job("adopt", {"cluster": name})).state == "succeeded"
        renewal = await fleet.run_job("renewal")
        assert renewal.state == "succeeded", renewal.error
        target = fleet.manager.keystore.get(str(renewal.params["new_key"]))
        assert target is not None

        async def plan_is_complete() -> bool:
            return (await fleet.planned())["planned"] == len(expected)

        await eventually(plan_is_complete, within=30)
        # The slow cluster's writes take long enough for the daemon to stop mid-step.
        await sandbox.cluster(slow).api.set_faults(latency_ms=400)
        job = await fleet.runner.submit("reseal", {}, actor="test")
        step = f"cluster:{slow}"
        planned = await fleet.store.jobs.step_objects(job.id, step)
        # Journaled with the job: every planned object of the step, planned.
        assert {o.ref for o in planned} == {f"{e[1]}/{e[2]}" for e in expected
                                            if e[0] == slow}
        assert {o.state for o in planned} == {"planned"}

        async def some_marked() -> bool:
            return any(o.state != "planned"
                       for o in await fleet.store.jobs.step_objects(job.id, step))

        await eventually(some_marked, within=60)
    # The daemon stopped (its runner cancelled, as a kill leaves it: no last flush).  A
    # kill may also lose the last batch of marks: one written object is unmarked again.
    at_stop = {o.ref: o for o in await _objects(settings, job.id, step)}
    lost = sorted(ref for ref, o in at_stop.items() if o.state != "planned")[0]
    await _unmark(settings, job.id, step, lost)
    at_stop[lost] = JobObject(step, lost, "planned")
    generations = {f"{ns}/{n}": obj["metadata"]["generation"]
                   for (c, ns, n), obj in sealed_objects(sandbox).items() if c == slow}
    marked = {ref for ref, o in at_stop.items() if o.state in ("done", "skipped")}
    waiting = {ref for ref, o in at_stop.items() if o.state == "written"}
    unmarked = set(at_stop) - marked - waiting
    assert marked | waiting, "nothing was marked before the stop"
    await sandbox.cluster(slow).api.clear_faults()
    async with daemon(settings, executor) as fleet:

        async def finished() -> bool:
            found = await fleet.store.jobs.get_job(job.id)
            return found is not None and found.state in ("succeeded", "failed")

        await eventually(finished, within=90)
        done = await fleet.store.jobs.get_job(job.id)
        assert done is not None
        assert done.state == "succeeded", done.error
        steps = {s.ref: s for s in await fleet.store.jobs.job_items(job.id)}
        detail = steps[step].detail
        # Read again: only what the journal had not marked (written ones: Synced only).
        assert detail["read"] == len(unmarked)
        assert detail["from_journal"] == len(marked)
        journal = {o.ref: o for o in await fleet.store.jobs.step_objects(job.id, step)}
        assert {o.state for o in journal.values()} <= {"done", "skipped"}
        assert set(journal) == set(at_stop)
        # The unmarked object was read again, found sealed with the target: skipped.
        assert (journal[lost].state, journal[lost].outcome) == ("skipped", "already_target")
    after = sealed_objects(sandbox)
    for (cluster, namespace, name), obj in after.items():
        ref = f"{namespace}/{name}"
        if cluster != slow or ref not in at_stop:
            continue
        assert opens_with(obj, target), ref
        assert synced_now(obj), ref
        if ref in marked | waiting | {lost}:   # written before the stop, never again
            assert obj["metadata"]["generation"] == generations[ref], ref


async def _objects(settings: config.Settings, job_id: str, step: str) -> list[JobObject]:
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        return await store.jobs.step_objects(job_id, step)


async def _unmark(settings: config.Settings, job_id: str, step: str, ref: str) -> None:
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        await store.jobs.update_objects(job_id, [JobObject(step, ref, "planned")])


async def test_a_compromised_key_is_relabelled_everywhere_once_the_reseal_is_done(
        sandbox: Sandbox, executor: object) -> None:
    settings = settings_of(sandbox, master=True)
    expected = resealable(sandbox)
    plaintexts_before = unsealed(sandbox)
    async with daemon(settings, executor) as fleet:
        # A first master key, every SealedSecret resealed with it: every cluster loads
        # it and needs it.  Then it is compromised (a new master key is made and synced;
        # the old one stays loaded while SealedSecrets are sealed with it).
        for name in sandbox.names:
            assert (await fleet.run_job("adopt", {"cluster": name})).state == "succeeded"
        synced = await fleet.run_job("key_sync")
        assert synced.state == "succeeded", synced.error
        compromised = str(synced.params["new_key"])

        async def plan_is_complete() -> bool:
            return (await fleet.planned())["planned"] == len(expected)

        await eventually(plan_is_complete, within=30)
        first_reseal = await fleet.run_job("reseal")
        assert first_reseal.state == "succeeded", first_reseal.error
        assert not [s for s in await fleet.store.jobs.job_items(first_reseal.id)
                    if s.ref.startswith("relabel:")]          # nothing compromised yet
        job = await fleet.run_job("compromise", {"fingerprint": compromised})
        assert job.state == "succeeded", job.error
        new_key = str(job.params["new_key"])
        target = fleet.manager.keystore.get(new_key)
        assert target is not None
        # Still loaded: SealedSecrets need it (the compromise job's sync leaves it).
        assert await key_labels(settings, compromised) == {n: {"active"} for n in sandbox.names}
        await eventually(plan_is_complete, within=30)
        reseal = await fleet.run_job("reseal")
        assert reseal.state == "succeeded", reseal.error
        steps = {s.ref: s for s in await fleet.store.jobs.job_items(reseal.id)}
        assert f"relabel:{compromised}" in steps
        relabelled = reseal.result["compromised_keys"]
        assert isinstance(relabelled, dict)
        assert relabelled[compromised]["relabelled"] == sandbox.names
        # The blast radius stays in the result: what the key sealed, by object.
        radius = reseal.result["blast_radius"]
        assert isinstance(radius, dict)
        assert {(r["cluster"], r["namespace"], r["name"]) for r in radius[compromised]} \
            == expected
        assert await key_labels(settings, compromised) == {
            n: {KEY_LABEL_COMPROMISED} for n in sandbox.names}
        entries = [e for e in await fleet.store.audit.entries(limit=1000)
                   if e.event == "compromised_key_relabelled"]
        assert [e.details["fingerprint"] for e in entries] == [compromised]

        async def unloaded() -> bool:
            return all(
                r.process is not None
                and compromised not in r.process.registry.fingerprints
                and new_key in r.process.registry.fingerprints
                for n in sandbox.names for r in sandbox.cluster(n).workload.endpoints)

        await eventually(unloaded, within=30)
        # Idempotent: the step again finds nothing to relabel and restarts nothing.
        starts = {n: sandbox.cluster(n).workload.starts for n in sandbox.names}
        again = await fleet.resealer.run_step(reseal, f"relabel:{compromised}")
        assert again.state == "skipped"
        assert again.detail["unchanged"] == sorted(sandbox.names)
        assert {n: sandbox.cluster(n).workload.starts for n in sandbox.names} == starts
    # Nothing undecryptable: every object opens with the new key, Synced by the
    # controllers that no longer load the compromised key, the same Secrets unsealed.
    after = sealed_objects(sandbox)
    for ref in expected:
        assert opens_with(after[ref], target), ref
        assert synced_now(after[ref]), ref
    unsealed_after = unsealed(sandbox)
    assert {k: v for k, v in unsealed_after.items() if k in expected} == \
        {k: v for k, v in plaintexts_before.items() if k in expected}
