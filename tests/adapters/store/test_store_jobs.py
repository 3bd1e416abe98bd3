"""The job journal: a job and its objects survive a restart and resume where they stopped."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealfleet.adapters.store import Store
from sealfleet.errors import StoreError


async def test_job_progress_survives_reopening_and_counts_attempts(db_path: Path) -> None:
    refs = [f"c1/ns/s{i}" for i in range(5)]
    async with Store.open(db_path) as store:
        job_id = await store.jobs.create_job("reseal", {"cluster": "c1", "key": "K2"}, refs)
        await store.jobs.set_job_state(job_id, "running")
        await store.jobs.update_job_items(job_id, [(refs[0], "running", None),
                                                   (refs[1], "running", None)])
        await store.jobs.update_job_items(job_id, [(refs[0], "done", None),
                                                   (refs[1], "failed", "409 Conflict")])
    # "Restart": a new Store on the same file.
    async with Store.open(db_path) as store:
        job = await store.jobs.get_job(job_id)
        assert job is not None
        assert (job.id, job.kind, job.state, job.params, job.error) == (
            job_id, "reseal", "running", {"cluster": "c1", "key": "K2"}, None)
        assert job.items == {"done": 1, "failed": 1, "pending": 3}
        assert job.created_at <= job.updated_at
        todo = await store.jobs.job_items(job_id, states=["pending", "failed", "running"])
        assert [item.ref for item in todo] == refs[1:]
        failed = todo[0]
        assert (failed.state, failed.attempt, failed.error) == ("failed", 1, "409 Conflict")
        await store.jobs.update_job_items(job_id, [(refs[1], "running", None)])
        await store.jobs.update_job_items(job_id, [(refs[1], "done", None)]
                                          + [(ref, "skipped", None) for ref in refs[2:]])
        await store.jobs.set_job_state(job_id, "succeeded")
        (listed,) = await store.jobs.list_jobs(state="succeeded")
        assert listed.items == {"done": 2, "skipped": 3}
        assert [i.attempt for i in await store.jobs.job_items(job_id)] == [1, 2, 0, 0, 0]
        assert await store.jobs.list_jobs(state="running") == []


async def test_job_errors(store: Store) -> None:
    job_id = await store.jobs.create_job("sync", {}, ["a"], job_id="fixed")
    assert job_id == "fixed"
    with pytest.raises(StoreError, match="job fixed already exists"):
        await store.jobs.create_job("sync", {}, [], job_id="fixed")
    with pytest.raises(StoreError, match="no such job: other"):
        await store.jobs.set_job_state("other", "failed")
    with pytest.raises(StoreError, match="unknown job state"):
        await store.jobs.set_job_state(job_id, "exploded")
    with pytest.raises(StoreError, match="unknown job item state"):
        await store.jobs.update_job_items(job_id, [("a", "half-done", None)])
    assert await store.jobs.get_job("missing") is None
