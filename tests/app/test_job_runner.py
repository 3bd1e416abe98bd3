"""The job runner journals before anything acts and resumes what a crash interrupted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from polling import eventually
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobItem, JobRecord, JsonObject
from sealfleet.app.jobs.executor import Plan, StepOutcome
from sealfleet.app.jobs.runner import JobRunner, phases
from sealfleet.domain.jobs import JobKind, StepState
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import PermanentError, RefusedError


@dataclass
class Recorder:
    """An executor whose steps record what they did; a step can be held or made to fail."""

    steps: Sequence[str] = ("a", "b", "c")
    held: set[str] = field(default_factory=set)
    failing: set[str] = field(default_factory=set)
    ran: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    new_keys: Sequence[SealingKey] = ()
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def kind(self) -> JobKind:
        return JobKind.KEY_SYNC

    @property
    def concurrency(self) -> int:
        return 1

    async def plan(self, params: JsonObject) -> Plan:
        if params.get("refuse"):
            raise RefusedError("asked to refuse")
        return Plan(steps=self.steps, params=params, audit={"why": "test"},
                    new_keys=self.new_keys)

    async def run_step(self, job: JobRecord, step: str) -> StepOutcome:
        self.ran.append(step)
        if step in self.held:
            await self.release.wait()
        if step in self.failing:
            raise PermanentError(f"step {step} broke")
        return StepOutcome(detail={"did": step})

    async def finish(self, job: JobRecord, steps: Sequence[JobItem]) -> JsonObject:
        self.finished.append(job.id)
        return {"steps": len(steps)}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as opened:
        yield opened


async def _state(store: Store, job_id: str) -> str:
    job = await store.jobs.get_job(job_id)
    assert job is not None
    return job.state


async def test_a_job_is_journaled_with_all_its_steps_before_any_acts(store: Store) -> None:
    recorder = Recorder()
    runner = JobRunner(store, [recorder])          # not running: nothing may act
    job = await runner.submit("key_sync", {"x": 1}, actor="local:alice")
    assert recorder.ran == []
    assert [s.ref for s in await store.jobs.job_items(job.id)] == ["a", "b", "c"]
    assert {s.state for s in await store.jobs.job_items(job.id)} == {"pending"}
    (entry,) = await store.audit.entries()
    assert (entry.event, entry.actor, entry.details["job"]) == (
        "key_sync_requested", "local:alice", job.id)


async def test_a_refused_job_leaves_no_trace(store: Store) -> None:
    runner = JobRunner(store, [Recorder()])
    with pytest.raises(RefusedError, match="asked to refuse"):
        await runner.submit("key_sync", {"refuse": True}, actor="t")
    with pytest.raises(RefusedError, match="no such job kind"):
        await runner.submit("teleport", {}, actor="t")
    assert await store.jobs.list_jobs() == []
    assert await store.audit.entries() == []


async def test_an_interrupted_job_resumes_where_it_stopped(store: Store) -> None:
    first = Recorder(held={"b"})
    runner = JobRunner(store, [first])
    job = await runner.submit("key_sync", {}, actor="t")
    running = asyncio.create_task(runner.run())
    async def b_started() -> bool:
        return first.ran == ["a", "b"]

    await eventually(b_started)
    running.cancel()                               # the daemon dies while b is running
    with pytest.raises(asyncio.CancelledError):
        await running
    states = {s.ref: s.state for s in await store.jobs.job_items(job.id)}
    assert states == {"a": "done", "b": "running", "c": "pending"}

    second = Recorder()                            # the next start
    resumed = asyncio.create_task(JobRunner(store, [second]).run())
    try:
        async def finished() -> bool:
            return await _state(store, job.id) == "succeeded"

        await eventually(finished)
    finally:
        resumed.cancel()
    assert second.ran == ["b", "c"]                # a is never done twice
    assert second.finished == [job.id]
    steps = await store.jobs.job_items(job.id)
    assert [(s.ref, s.state, s.attempt) for s in steps] == [
        ("a", "done", 1), ("b", "done", 2), ("c", "done", 1)]
    assert steps[1].detail == {"did": "b"}
    events = [e.event for e in await store.audit.entries()]
    assert events == ["key_sync_requested", "key_sync_finished"]


async def test_a_failed_step_fails_the_job_and_names_the_step(store: Store) -> None:
    recorder = Recorder(failing={"b"})
    runner = JobRunner(store, [recorder])
    job = await runner.submit("key_sync", {}, actor="t")
    running = asyncio.create_task(runner.run())
    try:
        async def ended() -> bool:
            return await _state(store, job.id) == "failed"

        await eventually(ended)
    finally:
        running.cancel()
    final = await store.jobs.get_job(job.id)
    assert final is not None
    assert final.error is not None
    assert "1 of 3 steps failed: b" in final.error
    assert recorder.ran == ["a", "b", "c"]         # the others still ran
    failed = [s for s in await store.jobs.job_items(job.id) if s.state == StepState.FAILED]
    assert [(s.ref, s.error) for s in failed] == [("b", "step b broke")]


async def test_a_new_key_is_stored_with_its_job_and_only_then(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    runner = JobRunner(store, [Recorder(new_keys=[key])])
    await runner.submit("key_sync", {}, actor="t")
    loaded = await store.keys.load_private_keys()
    assert [k.fingerprint for k in loaded.keys] == [key.fingerprint]


def test_steps_run_phase_by_phase_in_the_order_planned() -> None:
    assert phases(["master:k1", "cluster:a", "cluster:b", "verify:all"]) == [
        ["master:k1"], ["cluster:a", "cluster:b"], ["verify:all"]]
    assert phases(["a", "b"]) == [["a"], ["b"]]
