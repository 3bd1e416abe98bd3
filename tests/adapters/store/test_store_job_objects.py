"""The per-object journal: objects planned with their job, moved in batches, counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.job_objects import JobObject, progress_document
from sealfleet.errors import StoreError


async def test_objects_are_planned_with_the_job_and_survive_a_restart(db_path: Path) -> None:
    planned = [("cluster:c1", f"ns/s{i}") for i in range(4)] + [("repo:r", "a.yaml#0")]
    async with Store.open(db_path) as store:
        job_id = await store.jobs.create_job("reseal", {}, ["cluster:c1", "repo:r"],
                                             objects=planned)
        found = await store.jobs.step_objects(job_id, "cluster:c1")
        assert [(o.ref, o.state) for o in found] == [(f"ns/s{i}", "planned") for i in range(4)]
        # One batch, one transaction: written, done, skipped and failed at once.
        await store.jobs.update_objects(job_id, [
            JobObject("cluster:c1", "ns/s0", "done", outcome="resealed", generation=2,
                      conflicts=1),
            JobObject("cluster:c1", "ns/s1", "written", outcome="resealed", generation=3),
            JobObject("cluster:c1", "ns/s2", "failed", error="Synced=False: no key"),
            JobObject("repo:r", "a.yaml#0", "skipped", outcome="pending_branch")])
    async with Store.open(db_path) as store:
        by_ref = {o.ref: o for o in await store.jobs.step_objects(job_id, "cluster:c1")}
        assert by_ref["ns/s0"] == JobObject("cluster:c1", "ns/s0", "done", "resealed", 2, 1)
        assert (by_ref["ns/s1"].state, by_ref["ns/s1"].generation) == ("written", 3)
        assert by_ref["ns/s2"].error == "Synced=False: no key"
        assert by_ref["ns/s3"].state == "planned"
        counts = await store.jobs.object_counts(job_id)
        cluster = counts["cluster:c1"]
        assert (cluster.planned, cluster.done, cluster.written, cluster.failed,
                cluster.conflicts, cluster.remaining) == (4, 1, 1, 1, 1, 2)
        progress = progress_document(counts)
        assert progress["clusters"] == {"c1": {
            "planned": 4, "done": 1, "skipped": 0, "failed": 1, "conflicts": 1,
            "awaiting_synced": 1, "remaining": 2}}
        assert progress["repositories"] == {"r": {
            "planned": 1, "done": 0, "skipped": 1, "failed": 0, "conflicts": 0,
            "awaiting_synced": 0, "remaining": 0}}
        total = progress["total"]
        assert isinstance(total, dict)
        assert (total["planned"], total["remaining"]) == (5, 2)
        # A job without objects has no counts (the key jobs).
        other = await store.jobs.create_job("key_sync", {}, ["cluster:c1"])
        assert await store.jobs.object_counts(other) == {}


async def test_an_unknown_object_state_is_refused_naming_it(store: Store) -> None:
    job_id = await store.jobs.create_job("reseal", {}, ["cluster:c1"],
                                         objects=[("cluster:c1", "ns/a")])
    with pytest.raises(StoreError, match="unknown job object state 'finished'"):
        await store.jobs.update_objects(job_id, [JobObject("cluster:c1", "ns/a", "finished")])
    (kept,) = await store.jobs.step_objects(job_id, "cluster:c1")
    assert kept.state == "planned"
