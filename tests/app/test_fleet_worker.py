"""FleetManager and its cluster worker against an emulated apiserver over HTTPS.

The cluster holds real key Secrets and real SealedSecrets (2048-bit keys); a small
stand-in for the controller's HTTP API answers ``/v1/cert.pem`` and ``/v1/verify``
through the apiserver's service proxy.  Every assertion reads the store, as the API does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from polling import eventually
from running_fleet import running
from sealfleet.adapters import retry
from sealfleet.adapters.rsa_pool import RsaProcessPool
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.domain import key_secrets
from sealfleet.domain.keys import KEY_LABEL, SealingKey, key_secret_manifest
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.domain.staleness import SecretState
from sealfleet.sandbox.apiserver import ApiServer
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.objects import ObjectStore
from sealfleet.sandbox.tls import CertificateAuthority

SEALED = "sealedsecrets.bitnami.com"
NS, CONTROLLER = "kube-system", "sealed-secrets-controller"
OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.3),
                        resync_interval=600, request_timeout=3, watch_timeout=1)


@dataclasses.dataclass
class Harness:
    server: ApiServer
    objects: ObjectStore
    kubeconfig: Path
    database: Path
    old: SealingKey
    new: SealingKey
    foreign: SealingKey
    executor: ThreadPoolExecutor
    verify_answers: dict[str, int] = dataclasses.field(default_factory=dict)

    def settings(self, *, read_key_secrets: bool = True) -> Any:
        return config.settings_from_mapping({"clusters": [{
            "name": "c1", "kubeconfig": str(self.kubeconfig),
            "context": "admin" if read_key_secrets else "restricted",
            "read_key_secrets": read_key_secrets}]}, base_dir=self.kubeconfig.parent)

    def seal(self, key: SealingKey, namespace: str, name: str, items: dict[str, str],
             scope: Scope = Scope.STRICT) -> dict[str, Any]:
        secret = {"metadata": {"name": name, "namespace": namespace}, "stringData": items}
        return self.objects.create(SEALED, namespace,
                                   seal_secret(secret, key.public_key, scope=scope))

    @contextlib.asynccontextmanager
    async def fleet(self, settings: Any = None, *,
                    busy_timeout: float = 10.0) -> AsyncIterator[FleetManager]:
        async with Store.open(self.database, kek=KeyEncryptionKey(b"k" * 32),
                              busy_timeout=busy_timeout) as store:
            manager = FleetManager(settings or self.settings(), store, executor=self.executor,
                                   options=OPTIONS)
            async with running(manager):
                yield manager


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
async def harness(ca: CertificateAuthority, tmp_path: Path, executor: ThreadPoolExecutor,
                  rsa2048_keys: list[SealingKey]) -> AsyncIterator[Harness]:
    objects = ObjectStore(history=60)
    old, new, foreign = rsa2048_keys
    for namespace in ("apps", "web"):
        objects.create("namespaces", None, {"metadata": {"name": namespace}})
    for key in (old, new):
        objects.create("secrets", NS, key_secret_manifest(key, namespace=NS))
    objects.create("services", NS, {"metadata": {"name": CONTROLLER},
                                    "spec": {"ports": [{"port": 8080}]}})
    deployment = objects.create("deployments.apps", NS, {"metadata": {"name": CONTROLLER},
                                                         "spec": {"replicas": 1}})
    deployment["status"] = {"readyReplicas": 1}
    objects.update("deployments.apps", NS, CONTROLLER, deployment, subresource="status")
    async with ApiServer(objects, ca.issue_server(), bookmark_interval=0.2) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", [
            KubeconfigContext("admin", server.url, server.ca_pem, server.tokens.admin),
            KubeconfigContext("restricted", server.url, server.ca_pem, server.tokens.restricted),
        ], current="admin")
        h = Harness(server, objects, kubeconfig, tmp_path / "inventory.db", old, new, foreign,
                    executor)

        async def controller(request: web.Request) -> web.StreamResponse:
            if request.path == "/v1/cert.pem":
                return web.Response(body=new.certificate.pem)
            body = json.loads(await request.read())
            return web.Response(status=h.verify_answers.get(body["metadata"]["name"], 200))

        server.register_service_handler(NS, CONTROLLER, controller)
        h.seal(new, "apps", "current", {"user": "u", "password": "p"})
        h.seal(old, "apps", "stale", {"token": "t"})
        h.seal(new, "web", "wide", {"dsn": "d"}, scope=Scope.CLUSTER_WIDE)
        h.seal(foreign, "web", "foreign", {"key": "k"})
        broken = h.seal(new, "web", "broken", {"good": "g"})
        broken["spec"]["encryptedData"]["bad"] = base64.b64encode(b"not sealed").decode()
        objects.update(SEALED, "web", "broken", broken)
        yield h


async def inventory(manager: FleetManager) -> dict[str, Any]:
    store = manager.store
    return {(r.namespace, r.name): r for r in await store.inventory.sealed_secrets_of_cluster("c1")}


def states(records: dict[Any, Any]) -> dict[str, SecretState]:
    return {name: record.state for (_, name), record in records.items()}


async def test_first_pass_attributes_every_item_and_classifies(harness: Harness) -> None:
    async with harness.fleet() as manager:
        records = await inventory(manager)
        store = manager.store
        clusters = {c.name: c for c in await store.inventory.list_clusters()}
        holdings = await store.inventory.cluster_key_holdings("c1")
    assert states(records) == {"current": SecretState.CURRENT, "stale": SecretState.STALE,
                               "wide": SecretState.CURRENT, "foreign": SecretState.UNKNOWN,
                               "broken": SecretState.UNKNOWN}
    new, old = harness.new.fingerprint, harness.old.fingerprint
    assert {i.item: i.fingerprint for i in records[("apps", "current")].items} == {
        "password": new, "user": new}
    assert [i.fingerprint for i in records[("apps", "stale")].items] == [old]
    assert [i.fingerprint for i in records[("web", "foreign")].items] == [None]
    broken = records[("web", "broken")]
    assert {i.item: i.fingerprint for i in broken.items} == {"bad": None, "good": new}
    assert broken.malformed_reason == "item 'bad': not a sealed value (too short)"
    assert clusters["c1"].reachable is True
    # Where it is reached, written with the scan's status.
    assert (clusters["c1"].server, clusters["c1"].controller_namespace,
            clusters["c1"].controller_name) == (harness.server.url, NS, CONTROLLER)
    assert clusters["c1"].sealing_key == new
    assert clusters["c1"].sealing_key_source == "cert.pem"
    assert {h.fingerprint for h in holdings} == {old, new}
    assert manager.changes > 0
    # Each of the 5 attributed items costs its one successful decrypt; failed tries on
    # other keys may be skipped for free by the modulus filter (random keys), so no more.
    assert manager.attributor.rsa_operations >= 5


async def test_watch_keeps_the_inventory_current(harness: Harness) -> None:
    async with harness.fleet() as manager:
        harness.seal(harness.old, "apps", "later", {"a": "1"})
        harness.objects.delete(SEALED, "web", "foreign")
        resealed = harness.seal(harness.new, "apps", "tmp", {"b": "2"})
        harness.objects.delete(SEALED, "apps", "tmp", uid=resealed["metadata"]["uid"])

        async def changed() -> bool:
            found = states(await inventory(manager))
            return found.get("later") is SecretState.STALE and "foreign" not in found \
                and "tmp" not in found

        await eventually(changed)


async def test_compromised_key_reclassifies_the_cluster(harness: Harness) -> None:
    async with harness.fleet() as manager:
        store = manager.store
        await store.keys.set_key_state(harness.old.fingerprint, "compromised", actor="test",
                                       reason="leaked")
        await manager.refresh_keys()

        async def compromised() -> bool:
            return states(await inventory(manager))["stale"] is SecretState.COMPROMISED

        await eventually(compromised)
        assert states(await inventory(manager))["current"] is SecretState.CURRENT


async def test_a_key_secret_relabelled_compromised_counts_at_once(harness: Harness) -> None:
    async with harness.fleet() as manager:
        secrets, _ = harness.objects.list("secrets", NS)
        (old_secret,) = [s for s in secrets
                         if key_secrets.read_key_secret(s).fingerprint == harness.old.fingerprint]
        old_secret["metadata"]["labels"][KEY_LABEL] = "compromised"
        harness.objects.update("secrets", NS, old_secret["metadata"]["name"], old_secret)

        async def compromised() -> bool:
            return states(await inventory(manager))["stale"] is SecretState.COMPROMISED

        await eventually(compromised)


async def test_a_cluster_that_never_answers_is_recorded_with_where_it_is_reached(
        harness: Harness, tmp_path: Path) -> None:
    """A first session that fails still writes the server and controller it tried."""
    kubeconfig = write_kubeconfig(tmp_path / "down-kubeconfig", [KubeconfigContext(
        "down", "https://127.0.0.1:1", harness.server.ca_pem, "token")], current="down")
    settings = config.settings_from_mapping({"clusters": [{
        "name": "down", "kubeconfig": str(kubeconfig), "controller_name": "sealer"}]},
        base_dir=tmp_path)
    async with harness.fleet(settings) as manager:
        async def recorded() -> Any:
            clusters = await manager.store.inventory.list_clusters()
            return clusters and clusters[0].reachable is False and clusters[0]

        down = await eventually(recorded)
    assert (down.name, down.server, down.controller_namespace, down.controller_name) == (
        "down", "https://127.0.0.1:1", NS, "sealer")
    assert "Connect call failed" in down.last_error


async def test_a_key_secret_with_another_keys_certificate_is_recorded_never_stored(
        harness: Harness) -> None:
    """tls.crt of one key, tls.key of another (the controller does not check): recorded as
    a malformed key with its reason, not stored as a key; a restart still loads cleanly."""
    mixed = key_secret_manifest(harness.foreign, namespace=NS, name="mixed-up")
    mixed["data"]["tls.crt"] = base64.b64encode(harness.new.certificate.pem).decode()
    harness.objects.create("secrets", NS, mixed)
    garbage = key_secret_manifest(harness.foreign, namespace=NS, name="garbage")
    garbage["data"]["tls.key"] = base64.b64encode(b"not a key").decode()
    harness.objects.create("secrets", NS, garbage)
    for _ in range(2):  # the second run starts from what the first one stored
        async with harness.fleet() as manager:
            store = manager.store
            malformed = (await store.inventory.malformed_key_secrets_by_cluster())["c1"]
            reasons = {m.secret_name: m.reason for m in malformed}
            assert set(reasons) == {"mixed-up", "garbage"}
            assert harness.new.fingerprint in reasons["mixed-up"]
            assert "tls.key" in reasons["garbage"]
            known = {r.fingerprint for r in await store.keys.list_keys()}
            assert harness.foreign.fingerprint not in known
            assert manager.workers["c1"].reachable is True
            report = await manager.store.inventory.list_clusters()
            assert [c.last_error for c in report] == [None]


async def test_a_controller_without_ready_replicas_is_reported_on_a_reachable_cluster(
        harness: Harness) -> None:
    deployment = harness.objects.get("deployments.apps", NS, CONTROLLER)
    deployment["status"] = {"readyReplicas": 0}
    harness.objects.update("deployments.apps", NS, CONTROLLER, deployment, subresource="status")
    async with harness.fleet() as manager:
        (cluster,) = await manager.store.inventory.list_clusters()
        assert cluster.reachable is True
        assert cluster.controller_error is not None
        assert "no ready replicas" in cluster.controller_error
        assert cluster.controller_state == "no_ready_replicas"


async def test_a_locked_database_is_not_blamed_on_the_cluster(harness: Harness) -> None:
    """Another process holds the database for longer than the busy timeout: the cluster
    stays reachable, the store's health says what is wrong, nothing observed is lost."""
    async with harness.fleet(busy_timeout=0.2) as manager:
        store = manager.store
        worker = manager.workers["c1"]
        blocker = sqlite3.connect(harness.database, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            harness.seal(harness.new, "apps", "during-lock", {"a": "1"})

            async def store_failing() -> bool:
                assert worker.reachable is True
                return not store.health.ok

            await eventually(store_failing)
            for _ in range(100):   # the worker meets the locked store again and again
                await asyncio.sleep(0.01)
                assert worker.reachable is True
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

        async def landed() -> bool:
            assert worker.reachable is True
            found = await inventory(manager)
            return ("apps", "during-lock") in found and store.health.ok

        await eventually(landed)
        assert states(await inventory(manager))["during-lock"] is SecretState.CURRENT


async def test_cluster_down_at_start_is_marked_then_recovers(harness: Harness) -> None:
    await harness.server.set_faults(outage=True)
    with capture_logs() as logs:
        async with harness.fleet() as manager:
            worker = manager.workers["c1"]
            assert worker.reachable is False
            store = manager.store
            (cluster,) = await store.inventory.list_clusters()
            assert cluster.reachable is False
            assert cluster.last_error
            await harness.server.set_faults(outage=False)

            async def recovered() -> bool:
                return len(await inventory(manager)) == 5 and worker.reachable is True

            await eventually(recovered)
    events = [e["event"] for e in logs]
    assert events.count("cluster_unreachable") == 1  # logged once however many retries
    assert events.count("cluster_recovered") == 1


async def test_cluster_dying_mid_watch_catches_up_after_recovery(harness: Harness) -> None:
    async with harness.fleet() as manager:
        worker = manager.workers["c1"]
        await harness.server.set_faults(outage=True)
        await eventually(lambda: _is(worker.reachable, False))
        harness.seal(harness.new, "apps", "during-outage", {"x": "1"})
        harness.objects.delete(SEALED, "apps", "stale")
        await harness.server.set_faults(outage=False)

        async def caught_up() -> bool:
            # reachable is set after the session's scan is flushed, not with it
            found = states(await inventory(manager))
            return found.get("during-outage") is SecretState.CURRENT and "stale" not in found \
                and worker.reachable is True

        await eventually(caught_up)


async def test_410_on_watch_relists_and_misses_nothing(harness: Harness) -> None:
    with capture_logs() as logs:
        async with harness.fleet() as manager:
            await harness.server.set_faults(gone_next_watch=True)
            # The first pass's watches may stream already: end them, so that the 410
            # meets a watch started from here on, whichever is first.
            harness.server.ctx.end_watches()
            harness.seal(harness.old, "apps", "after-gone", {"x": "1"})

            async def relisted() -> bool:
                found = states(await inventory(manager))
                return (found.get("after-gone") is SecretState.STALE
                        and any(e["event"] == "watch_expired" for e in logs))

            await eventually(relisted)
            assert manager.workers["c1"].reachable is True


async def test_429s_back_off_with_retry_after_and_then_succeed(harness: Harness) -> None:
    await harness.server.set_faults(error_rate=1.0, error_code=429, retry_after_seconds=0)
    async with harness.fleet() as manager:
        worker = manager.workers["c1"]
        assert worker.reachable is False
        assert "429" in (worker.last_error or "")
        await harness.server.set_faults(error_rate=0.0)

        async def recovered() -> bool:
            return worker.reachable is True and len(await inventory(manager)) == 5

        await eventually(recovered)


async def test_a_restart_resumes_the_watch_with_zero_rsa(harness: Harness) -> None:
    async with harness.fleet() as manager:
        first = states(await inventory(manager))
        assert manager.attributor.rsa_operations > 0
    harness.seal(harness.new, "apps", "while-stopped", {"y": "2"})
    with capture_logs() as logs:
        async with harness.fleet() as manager:
            async def seen() -> bool:
                return "while-stopped" in states(await inventory(manager))

            await eventually(seen)
            found = states(await inventory(manager))
            # Only the new object cost RSA (one item, sealing key first); the unknown
            # item's answer is cached for this key set too.
            assert manager.attributor.rsa_operations == 1
    assert {k: v for k, v in found.items() if k != "while-stopped"} == first
    assert any(e["event"] == "watch_resuming" for e in logs)


async def test_apply_settings_adds_and_removes_workers(harness: Harness) -> None:
    one = harness.settings()
    two = config.settings_from_mapping({"clusters": [
        {"name": name, "kubeconfig": str(harness.kubeconfig), "context": "admin"}
        for name in ("c1", "c2")]}, base_dir=harness.kubeconfig.parent)
    async with harness.fleet(one) as manager:
        store = manager.store
        await manager.apply_settings(two)

        async def both() -> bool:
            return len(await store.inventory.sealed_secrets_of_cluster("c2")) == 5

        await eventually(both)
        assert set(manager.workers) == {"c1", "c2"}
        await manager.apply_settings(config.settings_from_mapping(
            {"clusters": [{"name": "c2", "kubeconfig": str(harness.kubeconfig),
                           "context": "admin"}]}, base_dir=harness.kubeconfig.parent))

        async def removed() -> bool:
            clusters = {c.name: c for c in await store.inventory.list_clusters()}
            return bool(clusters["c1"].removed) and set(manager.workers) == {"c2"}

        await eventually(removed)


async def test_least_privilege_mode_asks_the_controller(harness: Harness) -> None:
    harness.verify_answers["foreign"] = 409
    async with harness.fleet(harness.settings(read_key_secrets=False)) as manager:
        async def verified() -> bool:
            return states(await inventory(manager))["foreign"] is SecretState.FAILING

        await eventually(verified)
        records = await inventory(manager)
        store = manager.store
        (cluster,) = await store.inventory.list_clusters()
        assert await store.inventory.cluster_key_holdings("c1") == []  # no key Secret was read
    assert cluster.sealing_key == harness.new.fingerprint
    assert cluster.sealing_key_source == "cert.pem"
    # Items no known key opens stay unattributed ("unknown but verified").
    assert states(records)["current"] is SecretState.UNKNOWN
    assert {i.item: i.fingerprint for i in records[("apps", "current")].items} == {
        "password": None, "user": None}
    assert manager.attributor.rsa_operations == 0


async def _is(value: object, expected: object) -> bool:
    return value is expected


# An RSA worker that dies on its first frame while the flag file exists.
_DIES_WHILE_FLAGGED = """
import os, sys
if os.path.exists(sys.argv[1]):
    sys.stdin.buffer.read(4)
    os._exit(7)
from sealfleet.adapters.rsa_worker import main
main()
"""


async def test_rsa_workers_dying_are_not_the_clusters_fault_and_attribution_catches_up(
        harness: Harness, tmp_path: Path) -> None:
    flag = tmp_path / "rsa-workers-die"
    flag.touch()
    command = (sys.executable, "-c", _DIES_WHILE_FLAGGED, str(flag))
    with capture_logs() as logs:
        async with RsaProcessPool(1, command=command) as pool, \
                Store.open(harness.database, kek=KeyEncryptionKey(b"k" * 32)) as store:
            manager = FleetManager(harness.settings(), store, executor=harness.executor,
                                   rsa_processes=pool, options=OPTIONS)
            task = asyncio.create_task(manager.run())
            try:
                async def failed() -> bool:
                    return any(e["event"] == "attribution_failed" for e in logs)

                await eventually(failed)
                (cluster,) = await store.inventory.list_clusters()
                assert cluster.reachable is not False      # the daemon's fault, not c1's
                assert manager.workers["c1"].reachable is not False
                assert pool.deaths >= 2
                flag.unlink()
                await asyncio.wait_for(manager.first_pass_done.wait(), 30)

                async def attributed() -> bool:
                    found = states(await inventory(manager))
                    return (found.get("current") is SecretState.CURRENT
                            and found.get("stale") is SecretState.STALE)

                await eventually(attributed)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert not any(e["event"] == "cluster_unreachable" for e in logs)
