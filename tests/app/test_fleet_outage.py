"""A fleet-wide outage, seen from both sides: the daemon's store says every cluster is
reachable again afterwards, and the sandbox's listeners saw at most a bounded number of
TLS handshakes at once (the fleet's connect gate), on the first pass and on recovery;
meanwhile the clusters' retries, failing the same way, write nothing.
The fleet's one kubeconfig (a context per cluster) is parsed once for all of it: the
first pass and every reconnect after the outage.

A failed attempt leaves nothing for the cyclic collector (in an outage of 1,000 clusters
its generation-2 collections, each a stop of the loop, came every second or two).

A stop while the store fails ends the fleet too (a failing task at the moment of the
cancellation must not turn the stop into a retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from polling import eventually
from running_fleet import running
from sealfleet.adapters import retry
from sealfleet.adapters.kube import kubeconfig
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.sandbox import Sandbox, SeedSpec
from sealfleet.sandbox.apiserver.listener import ConnectionGauge

CLUSTERS = 12
GATE = 1
# Watches longer than the test: every connection a session opens is made under its turn.
OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.5),
                        resync_interval=600, request_timeout=3, watch_timeout=300)
SPEC = SeedSpec(namespaces=1, sealed_secrets=2, keys=1, seed=5, key_bits=2048)
# A turn opens one connection: a session's (its SealedSecrets watch reuses it), or a
# key Secrets' watch's (on a background turn of its own).
HANDSHAKES_PER_TURN = 1


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "sandbox", clusters=CLUSTERS, seed=SPEC, seed_processes=0,
                       startup_delay=0, bookmark_interval=0.2) as running_sandbox:
        yield running_sandbox


@contextlib.asynccontextmanager
async def store_of(sandbox: Sandbox) -> AsyncIterator[tuple[config.Settings, Store]]:
    settings = config.load_settings(sandbox.config)
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        yield settings, store


async def all_reachable(store: Store, expected: bool) -> bool:
    clusters = await store.inventory.list_clusters()
    return len(clusters) == CLUSTERS and all(c.reachable is expected for c in clusters)


async def all_refused(store: Store) -> bool:
    """Every cluster unreachable, its last error the refused connection an outage's
    closed listener gives (not the dropped watch that came first)."""
    clusters = await store.inventory.list_clusters()
    return len(clusters) == CLUSTERS and all(
        c.reachable is False and "Connect call failed" in (c.last_error or "")
        for c in clusters)


async def reconnected(store: Store, gauge: ConnectionGauge, accepted_before: int) -> bool:
    """Every cluster reachable, and at least its two watches' connections accepted."""
    return (await all_reachable(store, True)
            and gauge.accepted - accepted_before >= 2 * CLUSTERS)


async def watches_opened(sandbox: Sandbox, expected: int) -> bool:
    return sandbox.requests()[("watch", "secrets")] == expected


async def retried(manager: FleetManager, attempts: int) -> bool:
    return manager.connect_gate.sessions >= attempts


async def test_a_fleet_wide_outage_recovers_with_bounded_concurrent_connects(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    gauge = sandbox.connections
    parses = kubeconfig.shared_cache().parses
    async with store_of(sandbox) as (settings, store):
        assert len({c.kubeconfig for c in settings.clusters}) == 1
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS,
                               connect_concurrency=GATE)
        async with running(manager):
            # Reachable once scanned; the watches (two connections) follow.
            await eventually(lambda: reconnected(store, gauge, 0))
            first_pass_peak = gauge.peak_handshaking

            await sandbox.set_faults({"outage": True})
            await eventually(lambda: all_refused(store))
            # Retries that fail the same way write nothing and move nothing in the report.
            changes, attempts = manager.changes, manager.connect_gate.sessions
            scans = manager.scans
            await eventually(lambda: retried(manager, attempts + 2 * CLUSTERS))
            assert manager.changes == changes
            # Failed attempts are no scans: the heap's refreeze counts scans, and a
            # fleet-wide outage made it due every 30 s while it lasted.
            assert manager.scans == scans
            gauge.reset_peak()
            accepted = gauge.accepted
            await sandbox.set_faults({"outage": False})
            await eventually(lambda: reconnected(store, gauge, accepted))
            recovery_peak = gauge.peak_handshaking
    # One parse of the fleet's kubeconfig for 12 contexts and 24+ sessions.
    assert kubeconfig.shared_cache().parses - parses == 1
    assert 1 <= first_pass_peak <= GATE * HANDSHAKES_PER_TURN
    assert 1 <= recovery_peak <= GATE * HANDSHAKES_PER_TURN
    # Recovery resumed every watch from its stored position: nothing was listed again.
    assert sandbox.requests()[("list", "sealedsecrets")] == CLUSTERS


async def test_failed_attempts_leave_nothing_for_the_cyclic_collector(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    """A failed connection's exceptions and frames refer to each other (aiohttp's error
    lists are locals of frames in their tracebacks): about 100 objects per attempt were
    left to the cyclic collector.  The worker drops the tracebacks of an error it retries."""
    async with store_of(sandbox) as (settings, store):
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS,
                               connect_concurrency=GATE)
        async with running(manager):
            await eventually(lambda: all_reachable(store, True))
            await sandbox.set_faults({"outage": True})
            await eventually(lambda: all_refused(store))
            gc.collect()
            gc.disable()
            try:
                attempts = manager.connect_gate.sessions
                await eventually(lambda: retried(manager, attempts + 3 * CLUSTERS))
                attempts = manager.connect_gate.sessions - attempts
                garbage = gc.collect()
            finally:
                gc.enable()
    assert garbage < 10 * attempts, (garbage, attempts)


async def test_key_watches_open_once_no_cluster_waits_to_scan(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    """A key Secrets' watch waits for a background turn: with one turn and twelve
    clusters, none opens before the last cluster has listed its SealedSecrets (and that
    cluster has its scan, its store write and its own watch still to do); then all do.
    Those are no sessions: counted as such, they made the heap's full collection (a
    250 ms stop of the loop at 1,000 clusters) due right after every first pass."""
    async def key_watches_when_the_last_list_arrives() -> int:
        # Polled at every turn of the loop (no event to wait for): nothing slips past.
        while sandbox.requests()[("list", "sealedsecrets")] < CLUSTERS:  # noqa: ASYNC110
            await asyncio.sleep(0)
        return sandbox.requests()[("watch", "secrets")]

    async with store_of(sandbox) as (settings, store):
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS,
                               connect_concurrency=GATE)
        watcher = asyncio.create_task(key_watches_when_the_last_list_arrives())
        async with running(manager):
            at_last_list = await asyncio.wait_for(watcher, 60)
            await eventually(lambda: watches_opened(sandbox, CLUSTERS))
            sessions, scans = manager.connect_gate.sessions, manager.scans
    assert at_last_list == 0
    assert sessions == scans == CLUSTERS
    assert sandbox.requests()[("watch", "sealedsecrets")] == CLUSTERS


async def test_without_a_gate_the_same_fleet_connects_all_at_once(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    """What the bound above is a bound of: with a gate as wide as the fleet, the first
    pass's handshakes pile up at the listeners well beyond it."""
    async with store_of(sandbox) as (settings, store):
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS,
                               connect_concurrency=CLUSTERS)
        async with running(manager):
            await eventually(lambda: all_reachable(store, True))
    assert sandbox.connections.peak_handshaking > GATE * HANDSHAKES_PER_TURN


async def test_a_stop_while_the_store_fails_ends_the_fleet(
        sandbox: Sandbox, executor: ThreadPoolExecutor) -> None:
    async with store_of(sandbox) as (settings, store):
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS,
                               connect_concurrency=GATE)
        task = asyncio.create_task(manager.run())
        await manager.first_pass_done.wait()
        # Bookmarks arrive; their watch positions wait in each cluster's write-behind.
        await asyncio.sleep(1.0)
    # The store is closed under the running fleet: every write fails from now on, the
    # final flush of each session included.  The stop must still stop it.
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=20)  # a guard against a hang, no measure
    assert task in done
    assert task.cancelled()
