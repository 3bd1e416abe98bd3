"""The scheduler submits a compromised key's deferred relabel against a real store: only
after a reseal skipped it for in-cluster objects, only once none is left, once per such
skip (an automatic attempt is retried only after a full relist), never with
``auto_relabel`` off."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobRecord, JsonObject, KeyHolding, KeyRecord
from sealfleet.app import config
from sealfleet.app.scheduler import Scheduler

NOW = dt.datetime.now(dt.UTC)
MASTER = "SHA256:" + "M" * 43
VICTIM = "SHA256:" + "V" * 43
IN_USE: JsonObject = {"fingerprint": VICTIM, "in_use": {"c1": ["apps/db"]}, "in_use_count": 1,
                      "unattributed_items": {}, "git_documents": [], "waiting_for": []}


class Submitted:
    def __init__(self) -> None:
        self.jobs: list[tuple[str, JsonObject]] = []

    async def submit(self, kind: str, params: JsonObject, *, actor: str) -> JobRecord:
        self.jobs.append((kind, params))
        return JobRecord(id=str(len(self.jobs)), kind=kind, state="pending", params=params,
                         error=None, created_at=NOW, updated_at=NOW, items={}, actor=actor)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as opened:
        await opened.keys.upsert_keys([
            KeyRecord(MASTER, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=900),
                      "generated"),
            KeyRecord(VICTIM, NOW - dt.timedelta(days=9), NOW + dt.timedelta(days=900),
                      "cluster")])
        await opened.keys.set_fleet_master([MASTER])
        await opened.keys.set_key_state(VICTIM, "compromised", actor="test")
        await opened.inventory.upsert_cluster("c1")
        await opened.inventory.replace_cluster_keys("c1", [
            KeyHolding(VICTIM, "sealed-secrets-keyabc", "active", "1", None, NOW)])
        yield opened


def settings_of(tmp_path: Path, **fleet: object) -> config.Settings:
    return config.settings_from_mapping({
        "fleet": {"master": True, **fleet},
        "clusters": [{"name": "c1", "kubeconfig": "kubeconfig", "context": "c1"}],
    }, base_dir=tmp_path)


async def journal(store: Store, kind: str, detail: JsonObject, state: str = "skipped") -> str:
    """A finished job whose ``relabel:VICTIM`` step ended in *state* with *detail*."""
    job = await store.jobs.create_job(kind, {}, [f"relabel:{VICTIM}"], actor="test")
    await store.jobs.update_job_items(job, [(f"relabel:{VICTIM}", state, None, detail)])
    await store.jobs.set_job_state(job, "succeeded")
    return job


async def test_a_relabel_skipped_for_cluster_objects_is_submitted_once_none_is_left(
        store: Store, tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    runner = Submitted()
    clock = [NOW]
    scheduler = Scheduler(runner, store, settings=lambda: settings, report=lambda: None,
                          clock=lambda: clock[0])
    assert await scheduler.tick() is None          # no reseal asked for it yet
    await journal(store, "reseal", IN_USE)
    job = await scheduler.tick()
    assert job is not None
    assert runner.jobs == [("relabel", {"fingerprints": [VICTIM]})]
    assert job.actor == "scheduler"

    # The relabel job found objects live (the inventory lagged): not again every tick,
    # only once a full relist has had its time.
    attempt = await journal(store, "relabel", IN_USE)
    (step,) = await store.jobs.job_items(attempt)
    clock[0] = step.updated_at + settings.fleet.resync_interval - dt.timedelta(seconds=1)
    assert await scheduler.tick() is None
    clock[0] = step.updated_at + settings.fleet.resync_interval
    assert await scheduler.tick() is not None
    assert len(runner.jobs) == 2


async def test_objects_still_attributing_hold_it_back(store: Store, tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    runner = Submitted()
    backlog = [4]
    scheduler = Scheduler(runner, store, settings=lambda: settings, report=lambda: None,
                          attribution_backlog=lambda: backlog[0], clock=lambda: NOW)
    await journal(store, "reseal", IN_USE)
    assert await scheduler.tick() is None
    backlog[0] = 0
    assert await scheduler.tick() is not None


@pytest.mark.parametrize("detail", [
    # The step relabelled what it could; a guard kept the rest: a human's to look at.
    {"fingerprint": VICTIM, "relabelled": [], "blocked": {"c1": "the controller's last key"},
     "unchanged": [], "git_documents": []},
])
async def test_a_skip_for_another_reason_is_not_retried(store: Store, tmp_path: Path,
                                                        detail: JsonObject) -> None:
    settings = settings_of(tmp_path)
    runner = Submitted()
    scheduler = Scheduler(runner, store, settings=lambda: settings, report=lambda: None,
                          clock=lambda: NOW)
    await journal(store, "reseal", detail)
    assert await scheduler.tick() is None
    assert runner.jobs == []


async def test_auto_relabel_off_submits_nothing(store: Store, tmp_path: Path) -> None:
    settings = settings_of(tmp_path, auto_relabel=False)
    runner = Submitted()
    scheduler = Scheduler(runner, store, settings=lambda: settings, report=lambda: None,
                          clock=lambda: NOW)
    await journal(store, "reseal", IN_USE)
    assert await scheduler.tick() is None
    assert runner.jobs == []


async def test_not_while_a_reseal_runs(store: Store, tmp_path: Path) -> None:
    settings = settings_of(tmp_path)
    runner = Submitted()
    scheduler = Scheduler(runner, store, settings=lambda: settings, report=lambda: None,
                          clock=lambda: NOW)
    await journal(store, "reseal", IN_USE)
    await store.jobs.create_job("reseal", {}, [f"relabel:{VICTIM}"], actor="test")
    assert await scheduler.tick() is None
