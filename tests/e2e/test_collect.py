"""End to end: the collect side against a seeded sandbox (HTTPS apiservers + controllers).

What the store reports must equal the truth the sandbox wrote to ``seed.json``: which key
sealed each item, each cluster's sealing key, and the state that follows.  Faults are
injected with the sandbox's own fault switches; the daemon code is the production code.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from polling import eventually
from running_fleet import fleet_of
from sealfleet.adapters import retry
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.domain.key_secrets import load_key_secret
from sealfleet.domain.keys import KEY_LABEL
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.domain.staleness import KeyContext, SecretState, classify
from sealfleet.sandbox import Sandbox, SeedSpec

SEALED = "sealedsecrets.bitnami.com"
OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.3),
                        resync_interval=600, request_timeout=3, watch_timeout=2)
SPEC = SeedSpec(namespaces=2, sealed_secrets=12, keys=3, seed=11, key_bits=2048, malformed=2)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=2, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3, crash_backoff=(0.1, 0.5)) as running:
        yield running


def fleet(sandbox: Sandbox, executor: ThreadPoolExecutor,
          ) -> contextlib.AbstractAsyncContextManager[FleetManager]:
    return fleet_of(sandbox.config, executor, OPTIONS)


def truth(sandbox: Sandbox) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Expected item keys and state per (cluster, namespace, name), from seed.json."""
    seed = json.loads(sandbox.seed_file.read_text())
    expected = {}
    for entry in seed["sealed_secrets"]:
        sealing_key = seed["clusters"][entry["cluster"]]["sealing_key"]
        keys = {item["name"]: item["key"] for item in entry["items"]}
        # Broken ones: the controller reports Synced=False once it has tried them...
        state = classify(list(keys.values()), KeyContext(sealing_key),
                         synced=not entry["broken"])
        # ...but one whose items are not even ciphertext is malformed: state unknown.
        if entry["broken"] and _holds_garbage(sandbox, entry):
            state = SecretState.UNKNOWN
        expected[(entry["cluster"], entry["namespace"], entry["name"])] = {
            "keys": keys, "state": state}
    return expected


async def observed(manager: FleetManager) -> dict[tuple[str, str, str], dict[str, Any]]:
    store = manager.store
    found = {}
    for cluster in ("sandbox-1", "sandbox-2"):
        for record in await store.inventory.sealed_secrets_of_cluster(cluster):
            found[(cluster, record.namespace, record.name)] = {
                "keys": {item.item: item.fingerprint for item in record.items},
                "state": record.state}
    return found


async def matches_truth(manager: FleetManager, sandbox: Sandbox) -> bool:
    return await observed(manager) == truth(sandbox)


async def settled(manager: FleetManager, sandbox: Sandbox) -> bool:
    """The truth is stored and every cluster's scan status too.

    A worker flushes a scan's records before it publishes the scan's status (reachable,
    sealing key, scan time), with store round trips in between: records matching the
    truth alone do not mean the status is there yet.
    """
    clusters = await manager.store.inventory.list_clusters()
    return all(c.last_scan_at is not None for c in clusters) \
        and await matches_truth(manager, sandbox)


def sealing_public_key(sandbox: Sandbox, cluster: str) -> Any:
    seed = json.loads(sandbox.seed_file.read_text())
    wanted = seed["clusters"][cluster]["sealing_key"]
    secrets, _ = sandbox.cluster(cluster).store.list("secrets", "kube-system")
    for secret in secrets:
        if KEY_LABEL in (secret["metadata"].get("labels") or {}):
            key = load_key_secret(secret)
            if key.fingerprint == wanted:
                return key.public_key
    raise AssertionError("sealing key not found")


def add_sealed(sandbox: Sandbox, cluster: str, name: str) -> None:
    secret = {"metadata": {"name": name, "namespace": "default"}, "stringData": {"k": "v"}}
    sealed = seal_secret(secret, sealing_public_key(sandbox, cluster))
    sandbox.cluster(cluster).store.create(SEALED, "default", sealed)


async def test_the_store_reports_the_seed_truth(sandbox: Sandbox,
                                                executor: ThreadPoolExecutor) -> None:
    seed = json.loads(sandbox.seed_file.read_text())
    async with fleet(sandbox, executor) as manager:
        await eventually(lambda: settled(manager, sandbox))
        store = manager.store
        clusters = {c.name: c for c in await store.inventory.list_clusters()}
        records = await store.inventory.sealed_secrets_of_cluster("sandbox-1")
    for name, cluster in clusters.items():
        assert cluster.reachable is True
        assert cluster.sealing_key == seed["clusters"][name]["sealing_key"]
        assert cluster.sealing_key_source == "cert.pem"
    states = {r.state for r in records}
    assert {SecretState.CURRENT, SecretState.STALE} <= states
    malformed = [r for r in records if r.malformed_reason]
    assert malformed
    assert all(r.state is SecretState.UNKNOWN for r in malformed)


async def test_a_restart_resumes_from_stored_resource_versions_with_zero_rsa(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    async with fleet(sandbox, executor) as manager:
        await eventually(lambda: matches_truth(manager, sandbox))
        assert manager.attributor.rsa_operations > 0
    with capture_logs() as logs:
        async with fleet(sandbox, executor) as manager:
            await eventually(lambda: matches_truth(manager, sandbox))
            assert manager.attributor.rsa_operations == 0
    resumed = [e for e in logs if e["event"] == "watch_resuming"]
    assert len(resumed) == 2  # both clusters resumed their SealedSecret watch


async def test_down_at_start_and_429s_recover_to_the_truth(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    await sandbox.cluster("sandbox-2").api.set_faults(outage=True)
    await sandbox.cluster("sandbox-1").api.set_faults(error_rate=0.3, error_code=429,
                                                       retry_after_seconds=0)
    async with fleet(sandbox, executor) as manager:
        worker = manager.workers["sandbox-2"]
        assert worker.reachable is False
        await sandbox.cluster("sandbox-2").api.set_faults(outage=False)

        async def recovered() -> bool:
            # The worker marks itself reachable after it flushed what it scanned.
            return await matches_truth(manager, sandbox) and worker.reachable is True

        await eventually(recovered)
        await sandbox.cluster("sandbox-1").api.clear_faults()


async def test_dying_mid_watch_and_410_leave_the_worker_correct(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    async with fleet(sandbox, executor) as manager:
        await eventually(lambda: matches_truth(manager, sandbox))
        api = sandbox.cluster("sandbox-1").api
        await api.set_faults(outage=True)
        await eventually(lambda: _false(manager.workers["sandbox-1"].reachable))
        add_sealed(sandbox, "sandbox-1", "during-outage")
        await api.set_faults(outage=False)
        await sandbox.cluster("sandbox-2").api.set_faults(gone_next_watch=True)
        add_sealed(sandbox, "sandbox-2", "after-gone")

        async def both_seen() -> bool:
            if manager.workers["sandbox-1"].reachable is not True:  # set after its flush
                return False
            found = await observed(manager)
            return found.get(("sandbox-1", "default", "during-outage"), {}).get("state") \
                is SecretState.CURRENT and found.get(
                    ("sandbox-2", "default", "after-gone"), {}).get("state") \
                is SecretState.CURRENT

        await eventually(both_seen)
        found = await observed(manager)
    expected = truth(sandbox)
    assert {k: v for k, v in found.items() if k[2] not in ("during-outage", "after-gone")} \
        == expected


async def _false(value: object) -> bool:
    return value is False


def _holds_garbage(sandbox: Sandbox, entry: dict[str, Any]) -> bool:
    """Does the live object have an item too short to be a 2048-bit sealed value?"""
    obj = sandbox.cluster(entry["cluster"]).store.get(SEALED, entry["namespace"], entry["name"])
    return any(len(base64.b64decode(value)) < 2 + 256 + 16
               for value in obj["spec"]["encryptedData"].values())
