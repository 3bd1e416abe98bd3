"""A key change wakes only the clusters it concerns, in a fleet against the sandbox.

Of a fleet of clusters, only one holds a SealedSecret no known key opens.  A new key
wakes that cluster's worker alone (the keystore's count of workers woken), and its
items get attributed; a compromised mark on one cluster's key wakes that cluster alone,
and its SealedSecrets turn compromised.  The other clusters pay nothing for either.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from polling import eventually
from running_fleet import running
from sealfleet.adapters import retry
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.domain.keys import KeySource, SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.domain.staleness import SecretState
from sealfleet.sandbox import Sandbox, SeedSpec

CLUSTERS = 6
SEALED = "sealedsecrets.bitnami.com"
OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.5),
                        resync_interval=600, request_timeout=3, watch_timeout=300)
SPEC = SeedSpec(namespaces=1, sealed_secrets=2, keys=1, seed=7, key_bits=2048)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=CLUSTERS, seed=SPEC, seed_processes=0,
                       startup_delay=0, bookmark_interval=0.2) as running_sandbox:
        yield running_sandbox


async def items_of(store: Store, cluster: str, name: str) -> list[str | None] | None:
    for record in await store.inventory.sealed_secrets_of_cluster(cluster):
        if record.name == name:
            return [item.fingerprint for item in record.items]
    return None


async def test_a_new_key_wakes_only_the_cluster_with_unattributed_items(
        sandbox: Sandbox, executor: ThreadPoolExecutor, rsa2048_keys: list[SealingKey]) -> None:
    settings = config.load_settings(sandbox.config)
    lonely, marked = settings.clusters[0].name, settings.clusters[1].name
    late = rsa2048_keys[0]   # a key no cluster holds: the fleet learns it by an import
    sandbox.cluster(lonely).store.create(SEALED, "apps", seal_secret(
        {"metadata": {"name": "orphan", "namespace": "apps"},
         "stringData": {"a": "1", "b": "2"}}, late.public_key, scope=Scope.STRICT))
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS)
        async with running(manager):
            keystore = manager.keystore
            await eventually(lambda: _orphan_is(store, lonely, [None, None]))
            # The first pass learnt a key per cluster; only one worker wanted them.
            assert keystore.worker_wakeups <= CLUSTERS
            woken = keystore.worker_wakeups
            assert await keystore.adopt([late], source=KeySource.IMPORTED)
            assert keystore.worker_wakeups - woken == 1
            await eventually(lambda: _orphan_is(store, lonely, [late.fingerprint] * 2))

            holdings = await store.inventory.cluster_key_holdings(marked)
            woken = keystore.worker_wakeups
            assert await keystore.mark_compromised(h.fingerprint for h in holdings)
            assert keystore.worker_wakeups - woken == 1
            await eventually(lambda: _all_compromised(store, marked))
            others = await store.inventory.sealed_secrets_of_cluster(settings.clusters[2].name)
            assert others
            assert all(r.state is not SecretState.COMPROMISED for r in others)


async def _orphan_is(store: Store, cluster: str, expected: list[str | None]) -> bool:
    return await items_of(store, cluster, "orphan") == expected


async def _all_compromised(store: Store, cluster: str) -> bool:
    records = await store.inventory.sealed_secrets_of_cluster(cluster)
    return bool(records) and all(r.state is SecretState.COMPROMISED for r in records)
