"""A restart relists nothing that has not changed: every SealedSecret watch resumes from
its stored resourceVersion, the sandbox serves not one SealedSecret list, what changed
while the daemon was down arrives as watch events (and costs RSA for it alone), and the
unchanged records are not even rewritten.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from polling import eventually
from running_fleet import fleet_of
from sealfleet.adapters import retry
from sealfleet.adapters.store.records import SealedSecretRecord
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.domain.key_secrets import load_key_secret
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.sandbox import Sandbox, SeedSpec

SEALED = "sealedsecrets.bitnami.com"
OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.3),
                        resync_interval=600, request_timeout=3, watch_timeout=300)
SPEC = SeedSpec(namespaces=2, sealed_secrets=6, keys=2, seed=7, key_bits=2048)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=2, seed=SPEC, seed_processes=0,
                       startup_delay=0, bookmark_interval=0.2) as running_sandbox:
        yield running_sandbox


def fleet(sandbox: Sandbox, executor: ThreadPoolExecutor,
          ) -> contextlib.AbstractAsyncContextManager[FleetManager]:
    return fleet_of(sandbox.config, executor, OPTIONS)


async def records(manager: FleetManager) -> dict[tuple[str, str, str], SealedSecretRecord]:
    found = {}
    for cluster in ("sandbox-1", "sandbox-2"):
        for record in await manager.store.inventory.sealed_secrets_of_cluster(cluster):
            found[(cluster, record.namespace, record.name)] = record
    return found


def resealed(sandbox: Sandbox, cluster: str, namespace: str, name: str) -> dict[str, Any]:
    """The object sealed anew, with the cluster's sealing key, as a user's update."""
    seed = json.loads(sandbox.seed_file.read_text())
    sealing = seed["clusters"][cluster]["sealing_key"]
    secrets, _ = sandbox.cluster(cluster).store.list("secrets", "kube-system")
    key = next(k for k in map(load_key_secret, (s for s in secrets
                                                if "tls.key" in (s.get("data") or {})))
               if k.fingerprint == sealing)
    current = sandbox.cluster(cluster).store.get(SEALED, namespace, name)
    fresh = seal_secret({"metadata": {"name": name, "namespace": namespace},
                         "stringData": {"rotated": "value"}}, key.public_key)
    current["spec"] = fresh["spec"]
    return current


async def test_a_restart_relists_nothing_unchanged(sandbox: Sandbox,
                                                  executor: ThreadPoolExecutor) -> None:
    async with fleet(sandbox, executor) as manager:
        before = await records(manager)
        assert len(before) == 12
    lists = sandbox.requests()[("list", "sealedsecrets")]
    assert lists == 2  # the first pass: one list per cluster

    # While the daemon is down: one object updated, one deleted.
    changed, gone = sorted(k for k in before if k[0] == "sandbox-1")[:2]
    sandbox.cluster("sandbox-1").store.update(SEALED, changed[1], changed[2],
                                              resealed(sandbox, *changed))
    sandbox.cluster("sandbox-1").store.delete(SEALED, gone[1], gone[2])
    watches = sandbox.requests()[("watch", "sealedsecrets")]

    async with fleet(sandbox, executor) as manager:
        async def caught_up() -> dict[tuple[str, str, str], SealedSecretRecord] | None:
            now = await records(manager)
            return now if gone not in now and now[changed].items[0].item == "rotated" \
                else None

        after = await eventually(caught_up)
        rsa = manager.attributor.rsa_operations
    assert sandbox.requests()[("list", "sealedsecrets")] == lists   # no list at all
    assert sandbox.requests()[("watch", "sealedsecrets")] > watches  # resumed watches
    assert rsa == 1                           # the one new item, with the sealing key
    assert after[changed].items[0].fingerprint is not None
    unchanged = set(before) - {changed, gone}
    assert set(after) == unchanged | {changed}
    for key in unchanged:
        assert after[key] == before[key]      # not rewritten: same record, same observed_at
