"""The scheduler syncs a drifting cluster only for drift a sync can fix, against a real
store: a controller's own renewal setting alone is reported, never synced for."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import (
    GitSealedSecretRecord,
    ItemFact,
    JobRecord,
    JsonObject,
    KeyRecord,
    SealedSecretRecord,
)
from sealfleet.app import config
from sealfleet.app.scheduler import Scheduler
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

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


VICTIM = "SHA256:" + "V" * 43


def extra_active(fingerprint: str) -> dict[str, Any]:
    return {"name": "c1", "reachable": True, "drift": True,
            "drift_reasons": [{"reason": "extra_active_key", "fingerprint": fingerprint,
                               "detail": ""}]}


def sealed_with(fingerprint: str, name: str) -> SealedSecretRecord:
    return SealedSecretRecord(
        cluster="c1", namespace="apps", name=name, uid=f"uid-{name}", resource_version="1",
        generation=1, scope=Scope.STRICT, ciphertext_fingerprint=f"cf-{name}",
        items=(ItemFact("password", f"h-{name}", fingerprint),), state=SecretState.COMPROMISED,
        synced=True, synced_message=None, observed_at=NOW)


async def test_no_sync_for_a_compromised_key_kept_loaded_by_what_still_uses_it(
        store: Store, tmp_path: Path) -> None:
    """A Flux-managed object waits for its reseal branch to be merged: its cluster keeps
    the compromised key loaded (``extra_active_key``), and a sync would keep it too.
    Syncing every SYNC_SPACING for it would only fill the journal; once nothing uses the
    key, the drift is one a sync fixes again."""
    await store.keys.upsert_keys([KeyRecord(VICTIM, NOW - dt.timedelta(days=9),
                                            NOW + dt.timedelta(days=900), "cluster")])
    await store.keys.set_key_state(VICTIM, "compromised", actor="test")
    await store.inventory.upsert_cluster("c1")
    await store.inventory.upsert_sealed_secrets([sealed_with(VICTIM, "db")])
    settings = config.settings_from_mapping({
        "fleet": {"master": True},
        "clusters": [{"name": "c1", "kubeconfig": "kubeconfig", "context": "c1"}],
    }, base_dir=tmp_path)
    runner = Submitted()
    clock = [NOW]
    scheduler = Scheduler(runner, store, settings=lambda: settings,
                          report=lambda: {"clusters": [extra_active(VICTIM)]},
                          clock=lambda: clock[0])
    assert await scheduler.tick() is None
    assert runner.kinds == []

    await store.inventory.delete_sealed_secrets("c1", [("apps", "db")])
    assert await scheduler.tick() is not None
    assert runner.kinds == ["key_sync"]


async def test_a_git_document_keeps_the_key_loaded_only_in_the_clusters_its_repo_names(
        store: Store, tmp_path: Path) -> None:
    await store.keys.upsert_keys([KeyRecord(VICTIM, NOW - dt.timedelta(days=9),
                                            NOW + dt.timedelta(days=900), "cluster")])
    await store.keys.set_key_state(VICTIM, "compromised", actor="test")
    (tmp_path / "gitops").mkdir()
    await store.git.upsert_repo("gitops", path=str(tmp_path / "gitops"))
    await store.git.apply_scan("gitops", files=[], documents=[GitSealedSecretRecord(
        repo="gitops", path="apps/db.yaml", document=0, namespace="apps", name="db",
        scope=Scope.STRICT, ciphertext_fingerprint="cf-db",
        items=(ItemFact("password", "h-db", VICTIM),), clusters=("c2",),
        state=SecretState.COMPROMISED, observed_at=NOW)])
    settings = config.settings_from_mapping({
        "fleet": {"master": True},
        "clusters": [{"name": n, "kubeconfig": "kubeconfig", "context": n}
                     for n in ("c1", "c2")],
        "repos": [{"name": "gitops", "path": "gitops", "clusters": ["c2"]}],
    }, base_dir=tmp_path)
    report: dict[str, Any] = {"clusters": [{**extra_active(VICTIM), "name": "c2"}]}
    runner = Submitted()
    scheduler = Scheduler(runner, store, settings=lambda: settings, report=lambda: report,
                          clock=lambda: NOW)
    assert await scheduler.tick() is None          # c2 must still open the document
    report["clusters"] = [extra_active(VICTIM)]   # c1: nothing of it counts there
    assert await scheduler.tick() is not None
    assert runner.kinds == ["key_sync"]
