"""The scheduler syncs a drifting cluster only for drift a sync can fix, against a real
store: a controller's own renewal setting alone is reported, never synced for."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobRecord, JsonObject, KeyRecord
from sealfleet.app import config
from sealfleet.app.scheduler import Scheduler

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
MASTER = "SHA256:" + "M" * 43


class Submitted:
    def __init__(self) -> None:
        self.kinds: list[str] = []

    async def submit(self, kind: str, params: JsonObject, *, actor: str) -> JobRecord:
        self.kinds.append(kind)
        return JobRecord(id=str(len(self.kinds)), kind=kind, state="pending", params=params,
                         error=None, created_at=NOW, updated_at=NOW, items={})


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as opened:
        await opened.keys.upsert_keys([KeyRecord(MASTER, NOW - dt.timedelta(days=1),
                                                 NOW + dt.timedelta(days=900), "generated")])
        await opened.keys.set_fleet_master([MASTER])
        yield opened


def cluster(*reasons: str) -> dict[str, Any]:
    return {"name": "c1", "reachable": True, "drift": bool(reasons),
            "drift_reasons": [{"reason": r, "fingerprint": None, "detail": ""}
                              for r in reasons]}


async def test_only_drift_a_sync_can_fix_schedules_a_sync(store: Store) -> None:
    settings = config.settings_from_mapping({"fleet": {"master": True}}, base_dir=Path("."))
    report: dict[str, Any] = {"clusters": [cluster("controller_self_renewal")]}
    runner = Submitted()
    scheduler = Scheduler(runner, store, settings=lambda: settings, report=lambda: report,
                          clock=lambda: NOW)
    assert await scheduler.tick() is None
    assert runner.kinds == []
    report["clusters"] = [cluster("controller_self_renewal", "missing_adopted_key")]
    job = await scheduler.tick()
    assert job is not None
    assert runner.kinds == ["key_sync"]
