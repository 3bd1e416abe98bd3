"""End to end: the key jobs against a seeded sandbox whose controllers renew on their own.

The daemon's production code (fleet, keystore, job runner, key executors) talks to
emulated apiservers over HTTPS; the controllers restart as real ones do (the old Pod
serves until the new one is ready).  What counts is what the clusters then show.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tomllib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import job_daemon
from polling import eventually
from sealfleet.adapters.http_api.snapshot import InventoryView
from sealfleet.adapters.kube import controller, fleet_keys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.app import config
from sealfleet.app.jobs import compromised_keys
from sealfleet.domain import documents, key_secrets
from sealfleet.domain.keys import KEY_LABEL, KeySource, SealingKey
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.domain.staleness import StalenessPolicy
from sealfleet.errors import RefusedError
from sealfleet.sandbox import Sandbox, SeedSpec

SPEC = SeedSpec(namespaces=2, sealed_secrets=4, keys=2, seed=5, key_bits=2048)
SEALED = "sealedsecrets.bitnami.com"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    # Controllers with their own renewal on (the upstream default, 720h).
    async with Sandbox(tmp_path / "sandbox", clusters=5, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3, crash_backoff=(0.1, 0.5),
                       startup_delay=0.3) as started:
        yield started


def master_settings(sandbox: Sandbox, repos: list[dict[str, Any]] | None = None,
                    ) -> config.Settings:
    data = tomllib.loads(sandbox.config.read_text())
    data["fleet"] = {"master": True, "key_bits": 2048}
    if repos:
        data["repos"] = repos
    return config.settings_from_mapping(data, base_dir=sandbox.config.parent)


def daemon(sandbox: Sandbox, executor: ThreadPoolExecutor,
           repos: list[dict[str, Any]] | None = None,
           ) -> contextlib.AbstractAsyncContextManager[job_daemon.Daemon]:
    return job_daemon.daemon(master_settings(sandbox, repos), executor)


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
        # The reseal hook: the compromised key still seals exactly those, so no sync
        # may relabel it yet.
        (use,) = await compromised_keys.still_sealing(fleet.store)
        assert use.fingerprint == victim
        assert use.in_use
        assert sorted(use.cluster_objects) == expected
        assert use.git_documents == ()


def key_fingerprints(sandbox: Sandbox, name: str) -> dict[str, str]:
    """fingerprint -> label of every key Secret the cluster holds now."""
    secrets, _ = sandbox.cluster(name).store.list("secrets", "kube-system")
    found = {}
    for secret in secrets:
        if KEY_LABEL in ((secret.get("metadata") or {}).get("labels") or {}):
            seen = key_secrets.read_key_secret(secret)
            found[seen.fingerprint] = seen.label
    return found


async def delete_key_secret(settings: config.Settings, name: str, fingerprint: str,
                            sandbox: Sandbox) -> None:
    """As a user would, through the apiserver: the Secret holding *fingerprint* goes."""
    secrets, _ = sandbox.cluster(name).store.list("secrets", "kube-system")
    (secret,) = [s for s in secrets if KEY_LABEL in (
        s["metadata"].get("labels") or {}) and key_secrets.read_key_secret(s).fingerprint
        == fingerprint]
    cluster = next(c for c in settings.clusters if c.name == name)
    async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                  request_timeout=5) as client:
        await client.delete(f"/api/v1/namespaces/kube-system/secrets/"
                            f"{secret['metadata']['name']}")


@pytest.fixture
async def two_clusters(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=2, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3, crash_backoff=(0.1, 0.5),
                       startup_delay=0.3) as started:
        yield started


async def test_an_adopted_key_lost_by_its_cluster_is_written_back_there_only(
        two_clusters: Sandbox, executor: ThreadPoolExecutor) -> None:
    """sandbox-1's keys adopted (not shared), sandbox-2's shared: each cluster that loses
    a key Secret of its own gets it back from the keystore at the next sync; sandbox-1's
    keys never reach sandbox-2, sandbox-2's reach sandbox-1 (shared).  The report's fleet
    view then shows both in step, save their controllers' own renewal."""
    sandbox = two_clusters
    own = {name: set(key_fingerprints(sandbox, name)) for name in sandbox.names}
    before = secrets_of(sandbox)
    async with daemon(sandbox, executor) as fleet:
        kept = await fleet.run_job("adopt", {"cluster": "sandbox-1"})
        assert kept.state == "succeeded", kept.error
        first = await fleet.run_job("key_sync")
        assert first.state == "succeeded", first.error
        master = first.params["new_key"]
        # Shared once a fresh master key seals: a restart then gives the self-renewing
        # controllers no reason to make a key of their own.
        shared = await fleet.run_job("adopt", {"cluster": "sandbox-2", "share": True})
        assert shared.state == "succeeded", shared.error
        assert set(key_fingerprints(sandbox, "sandbox-1")) == own["sandbox-1"] | own[
            "sandbox-2"] | {master}
        assert set(key_fingerprints(sandbox, "sandbox-2")) == own["sandbox-2"] | {master}

        lost = {name: sorted(own[name])[0] for name in sandbox.names}
        for name, fingerprint in lost.items():
            await delete_key_secret(fleet.settings, name, fingerprint, sandbox)
            assert fingerprint not in key_fingerprints(sandbox, name)
        again = await fleet.run_job("key_sync")
        assert again.state == "succeeded", again.error
        assert "new_key" not in again.params
        steps = {s.ref: s for s in await fleet.store.jobs.job_items(again.id)}
        for name, fingerprint in lost.items():
            assert steps[f"cluster:{name}"].detail["created"] == [fingerprint]
            assert key_fingerprints(sandbox, name)[fingerprint] == "active"
            assert await served(fleet.settings, name) == master
        assert not own["sandbox-1"] & set(key_fingerprints(sandbox, "sandbox-2"))

        view = InventoryView(fleet.store, policy=StalenessPolicy(
            key_renew_period=dt.timedelta(days=30), cert_expiry_warning=dt.timedelta(days=7)))

        async def in_step() -> dict[str, Any] | None:
            report = (await view.rebuild()).report
            reasons = {c["name"]: [r["reason"] for r in c["drift_reasons"]]
                       for c in report["clusters"]}
            # The sandbox's controllers renew on their own (720h): that alone remains.
            wanted = {name: ["controller_self_renewal"] for name in sandbox.names}
            return report if reasons == wanted else None

        report = await eventually(in_step)
        assert report["fleet"]["master_key"]["fingerprint"] == master
        assert report["fleet"]["in_sync"] == 0
        assert report["fleet"]["drifting_clusters"] == sandbox.names
        detail = report["clusters"][0]["drift_reasons"][0]["detail"]
        assert detail == "--key-renew-period=2592000s"

    async def settled() -> bool:
        after = secrets_of(sandbox)
        return all(after.get(ref) == value for ref, value in before.items())

    await eventually(settled)


async def test_a_key_only_git_still_needs_is_neither_retired_nor_relabelled(
        two_clusters: Sandbox, executor: ThreadPoolExecutor, tmp_path: Path,
        rsa2048_keys: list[SealingKey]) -> None:
    """A key no cluster object uses, but a Git document meant for sandbox-1 does: retire
    is refused naming the document, and a sync does not unload it from sandbox-1 even
    once the keystore says retired (the controller must open that document once
    applied)."""
    sandbox = two_clusters
    key = rsa2048_keys[2]
    tree = tmp_path / "gitops"
    tree.mkdir()
    secret = {"metadata": {"name": "from-git", "namespace": "default"},
              "stringData": {"password": "only-in-git"}}
    (tree / "db.yaml").write_text(documents.dump_yaml(seal_secret(secret, key.public_key)))
    repos = [{"name": "gitops", "path": str(tree), "clusters": ["sandbox-1"]}]
    async with daemon(sandbox, executor, repos) as fleet:
        first = await fleet.run_job("key_sync")
        assert first.state == "succeeded", first.error
        await fleet.manager.keystore.adopt([key], source=KeySource.IMPORTED)
        cluster = next(c for c in fleet.settings.clusters if c.name == "sandbox-1")
        async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                      request_timeout=5) as client:
            await fleet_keys.ensure_key_secret(client, "kube-system", key, "test")

        async def attributed() -> bool:
            links = await fleet.store.git.sealed_secrets_using_key(key.fingerprint)
            return [(link.repo, link.path) for link in links] == [("gitops", "db.yaml")]

        await eventually(attributed)
        with pytest.raises(RefusedError, match=r"repo:gitops/db\.yaml"):
            await fleet.runner.submit("retire", {"fingerprint": key.fingerprint},
                                      actor="test")
        await fleet.store.keys.set_key_state(key.fingerprint, "retired", actor="test")
        sync = await fleet.run_job("key_sync")
        assert sync.state == "succeeded", sync.error
        steps = {s.ref: s for s in await fleet.store.jobs.job_items(sync.id)}
        assert "retirement_blocked" in steps["cluster:sandbox-1"].detail["drift"]
        assert key_fingerprints(sandbox, "sandbox-1")[key.fingerprint] == "active"
