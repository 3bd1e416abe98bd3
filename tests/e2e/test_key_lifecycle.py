"""End to end: the key jobs against a seeded sandbox whose controllers renew on their own.

The daemon's production code (fleet, keystore, job runner, key executors) talks to
emulated apiservers over HTTPS; the controllers restart as real ones do (the old Pod
serves until the new one is ready).  What counts is what the clusters then show.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tomllib
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from polling import eventually
from running_fleet import running
from sealfleet.adapters import retry
from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobRecord
from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.app.jobs import key_jobs
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.runner import JobRunner
from sealfleet.errors import RefusedError
from sealfleet.sandbox import Sandbox, SeedSpec

OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.3),
                        resync_interval=600, request_timeout=5, watch_timeout=2)
SPEC = SeedSpec(namespaces=2, sealed_secrets=4, keys=2, seed=5, key_bits=2048)
SEALED = "sealedsecrets.bitnami.com"


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    # Controllers with their own renewal on (the upstream default, 720h).
    async with Sandbox(tmp_path / "sandbox", clusters=5, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3, crash_backoff=(0.1, 0.5),
                       startup_delay=0.3) as started:
        yield started


@dataclass
class Daemon:
    manager: FleetManager
    runner: JobRunner
    store: Store
    settings: config.Settings

    async def run_job(self, kind: str, params: dict[str, Any] | None = None) -> JobRecord:
        job = await self.runner.submit(kind, params or {}, actor="test")

        async def finished() -> JobRecord | None:
            found = await self.store.jobs.get_job(job.id)
            return found if found is not None and found.state in ("succeeded", "failed") \
                else None

        done: JobRecord = await eventually(finished, within=60)
        return done


def master_settings(sandbox: Sandbox) -> config.Settings:
    data = tomllib.loads(sandbox.config.read_text())
    data["fleet"] = {"master": True, "key_bits": 2048}
    return config.settings_from_mapping(data, base_dir=sandbox.config.parent)


@contextlib.asynccontextmanager
async def daemon(sandbox: Sandbox, executor: ThreadPoolExecutor) -> AsyncIterator[Daemon]:
    settings = master_settings(sandbox)
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS)
        runner = JobRunner(store, key_jobs.build(JobContext(store, manager.keystore,
                                                            lambda: settings)))
        async with running(manager):
            jobs = asyncio.create_task(runner.run())
            try:
                yield Daemon(manager, runner, store, settings)
            finally:
                jobs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await jobs


async def served(settings: config.Settings, name: str) -> str:
    cluster = next(c for c in settings.clusters if c.name == name)
    async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                  request_timeout=5) as client:
        proxy = await controller.proxy_name(client, cluster.controller_namespace,
                                            cluster.controller_name)
        certificate = await controller.fetch_certificate(client, cluster.controller_namespace,
                                                         proxy)
    return certificate.fingerprint


def secrets_of(sandbox: Sandbox) -> dict[tuple[str, str, str], Any]:
    """Every SealedSecret's Synced condition and its Secret's data, per cluster."""
    found = {}
    for name, cluster in sandbox.clusters.items():
        sealed, _ = cluster.store.list(SEALED, None)
        for obj in sealed:
            meta = obj["metadata"]
            conditions = (obj.get("status") or {}).get("conditions") or []
            synced = next((c["status"] for c in conditions if c["type"] == "Synced"), None)
            try:
                secret = cluster.store.get("secrets", meta["namespace"], meta["name"])
            except Exception:
                secret = None
            found[(name, meta["namespace"], meta["name"])] = (
                synced, json.dumps((secret or {}).get("data"), sort_keys=True))
    return found


async def test_sync_gives_every_cluster_one_master_key_and_nothing_sealed_is_lost(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    before = secrets_of(sandbox)
    assert before
    assert all(synced == "True" for synced, _ in before.values())
    async with daemon(sandbox, executor) as fleet:
        for name in sandbox.names:      # each cluster's own keys into fleet custody first
            adopted = await fleet.run_job("adopt", {"cluster": name})
            assert adopted.state == "succeeded", adopted.error
            (step,) = await fleet.store.jobs.job_items(adopted.id)
            assert isinstance(step.detail["adopted"], list)
            assert len(step.detail["adopted"]) == SPEC.keys, name
        job = await fleet.run_job("key_sync")
        assert job.state == "succeeded", job.error
        master = job.params["new_key"]
        for name in sandbox.names:
            assert await served(fleet.settings, name) == master
        # A second sync finds nothing to do: no new key, no restart.
        again = await fleet.run_job("key_sync")
        assert again.state == "succeeded", again.error
        assert "new_key" not in again.params
        steps = await fleet.store.jobs.job_items(again.id)
        assert {s.state for s in steps} == {"skipped"}
    # Every SealedSecret that existed still unseals, and its Secret is unchanged.

    async def settled() -> bool:
        after = secrets_of(sandbox)
        return all(after.get(ref) == value for ref, value in before.items())

    await eventually(settled)


async def test_renewal_with_a_cluster_down_catches_up_when_it_returns(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    async with daemon(sandbox, executor) as fleet:
        first = await fleet.run_job("key_sync")
        assert first.state == "succeeded", first.error
        down = sandbox.cluster("sandbox-3")
        await down.api.set_faults(outage=True)
        renewal = await fleet.run_job("renewal")
        assert renewal.state == "failed"
        assert "cluster:sandbox-3" in (renewal.error or "")
        new = renewal.params["new_key"]
        for name in ("sandbox-1", "sandbox-2"):
            assert await served(fleet.settings, name) == new
        await down.api.set_faults(outage=False)
        catch_up = await fleet.run_job("key_sync")
        assert catch_up.state == "succeeded", catch_up.error
        assert "new_key" not in catch_up.params       # the same key, not another one
        assert await served(fleet.settings, "sandbox-3") == new


async def test_compromise_lists_exactly_what_the_key_sealed_and_retire_is_refused(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    seed = json.loads(sandbox.seed_file.read_text())
    victim = seed["clusters"]["sandbox-1"]["sealing_key"]
    expected = sorted(
        (entry["cluster"], entry["namespace"], entry["name"]) for entry in seed["sealed_secrets"]
        if any(item["key"] == victim for item in entry["items"]))
    assert expected
    async with daemon(sandbox, executor) as fleet:
        async def attributed() -> bool:
            return sorted(await fleet.store.inventory.sealed_secrets_using_key(victim)) \
                == expected

        await eventually(attributed)
        with pytest.raises(RefusedError, match="still seals"):
            await fleet.runner.submit("retire", {"fingerprint": victim}, actor="test")
        job = await fleet.run_job("compromise", {"fingerprint": victim})
        radius = job.result["blast_radius"]
        assert isinstance(radius, list)
        assert sorted((r["cluster"], r["namespace"], r["name"]) for r in radius) == expected
        assert victim in fleet.manager.keystore.compromised
        assert victim not in fleet.manager.keystore.master
