"""Restarting an emulated sealed-secrets controller over HTTPS and waiting until it serves
the key it should: rollout and delete-pods restarts, once per job; a controller that
watches for Secrets needs none; a crash loop and a timeout are results, not hangs.

Each test runs a sandbox cluster (apiserver + emulated controller, 2048-bit keys) and
drives it only through the production client code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from polling import eventually
from sealfleet.adapters import retry
from sealfleet.adapters.kube import controller, controller_restart, fleet_keys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.domain.keys import (
    KEY_LABEL,
    SealingKey,
    key_secret_manifest,
    self_signed_certificate,
)
from sealfleet.domain.planning import key_sync
from sealfleet.domain.planning.key_sync import RestartMode
from sealfleet.sandbox.cluster import SandboxCluster
from sealfleet.sandbox.controller import ControllerFlags
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.tls import CertificateAuthority

NS, NAME = "kube-system", "sealed-secrets-controller"
FAST = retry.BackoffPolicy(initial=0.05, cap=0.2)
WAIT = 30.0  # seconds: a bound for a broken test, never reached by a passing one
STARTUP_DELAY = 0.3


@dataclasses.dataclass
class Running:
    cluster: SandboxCluster
    kubeconfig: Path

    def client(self) -> AbstractAsyncContextManager[KubeClient]:
        return KubeClient.connect(str(self.kubeconfig), "admin", request_timeout=5.0)

    def deployment(self) -> dict[str, Any]:
        return self.cluster.store.get("deployments.apps", NS, NAME)

    def pod_names(self) -> list[str]:
        items, _ = self.cluster.store.list("pods", NS)
        return sorted(p["metadata"]["name"] for p in items
                      if not p["metadata"].get("deletionTimestamp"))


Start = Callable[..., AbstractAsyncContextManager[Running]]


@pytest.fixture
def start(kube_ca: CertificateAuthority, tmp_path: Path) -> Start:
    @asynccontextmanager
    async def running(**flags: Any) -> AsyncIterator[Running]:
        with ThreadPoolExecutor(2) as executor:
            # A short start-up delay: the old Pod serves while the new one starts, as on
            # a real cluster, without making every restart cost seconds.
            cluster = SandboxCluster("c1", ca=kube_ca, executor=executor,
                                     flags=ControllerFlags(key_size=2048, **flags),
                                     crash_backoff=(0.05, 0.4), bookmark_interval=0.2,
                                     startup_delay=STARTUP_DELAY)
            async with cluster:
                await cluster.wait_serving()
                kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", [KubeconfigContext(
                    "admin", cluster.url, kube_ca.cert_pem, cluster.tokens.admin)],
                    current="admin")
                yield Running(cluster, kubeconfig)
    return running


def recertified(key: SealingKey, days: int) -> SealingKey:
    """*key* with a certificate from *days* from now (NotBefore has whole seconds: a key
    made in the same second as the controller's own would tie with it)."""
    when = dt.datetime.now(dt.UTC) + dt.timedelta(days=days)
    return SealingKey(key.private_key, self_signed_certificate(key.private_key, now=when))


def newer_key(key: SealingKey) -> SealingKey:
    """Newer than any key the controller made: it seals once loaded."""
    return recertified(key, 1)


async def served(client: KubeClient) -> str:
    proxy = await controller.proxy_name(client, NS, NAME)
    return (await controller.fetch_certificate(client, NS, proxy)).fingerprint


async def test_a_rollout_restart_loads_the_new_key_and_happens_once_per_job(
        start: Start, rsa2048_keys: list[SealingKey]) -> None:
    key = newer_key(rsa2048_keys[0])
    async with start() as running, running.client() as client:
        own = await served(client)
        await fleet_keys.ensure_key_secret(client, NS, key, "job-1")
        assert await served(client) == own  # loaded at start only: not yet
        pods_before = running.pod_names()
        outcome = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.ROLLOUT, job_id="job-1")
        result = await controller_restart.wait_until_serving(
            client, NS, NAME, key.fingerprint, WAIT, replaced_pods=outcome.replaced_pods,
            policy=FAST)
        assert result == controller_restart.ServingResult(
            serving=True, served_fingerprint=key.fingerprint, rollout_complete=True,
            crash_loop=False, reason="serving")
        assert outcome.restarted
        assert outcome.replaced_pods == tuple(pods_before)
        annotations = running.deployment()["spec"]["template"]["metadata"]["annotations"]
        assert annotations["sealfleet.io/restart-job"] == "job-1"
        assert "kubectl.kubernetes.io/restartedAt" in annotations
        generation, pods_after = running.deployment()["metadata"]["generation"], \
            running.pod_names()
        assert pods_after != pods_before

        again = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.ROLLOUT, job_id="job-1")
        assert not again.restarted
        assert running.deployment()["metadata"]["generation"] == generation
        assert running.pod_names() == pods_after


async def test_delete_pods_restarts_without_touching_the_pod_template(
        start: Start, rsa2048_keys: list[SealingKey]) -> None:
    key = newer_key(rsa2048_keys[1])
    async with start() as running, running.client() as client:
        template = running.deployment()["spec"]["template"]
        await fleet_keys.ensure_key_secret(client, NS, key, "job-7")
        pods_before = running.pod_names()
        outcome = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.DELETE_PODS, job_id="job-7")
        result = await controller_restart.wait_until_serving(
            client, NS, NAME, key.fingerprint, WAIT, replaced_pods=outcome.replaced_pods,
            policy=FAST)
        assert result.serving
        assert result.served_fingerprint == key.fingerprint
        deployment = running.deployment()
        assert deployment["spec"]["template"] == template  # nothing for GitOps to revert
        assert deployment["metadata"]["annotations"]["sealfleet.io/restart-job"] == "job-7"
        pods_after = running.pod_names()
        assert set(pods_after).isdisjoint(pods_before)

        again = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.DELETE_PODS, job_id="job-7")
        assert not again.restarted
        assert running.pod_names() == pods_after


async def test_a_controller_watching_for_secrets_serves_a_new_key_without_restart(
        start: Start, rsa2048_keys: list[SealingKey]) -> None:
    key = newer_key(rsa2048_keys[2])
    async with start(watch_for_secrets=True) as running, running.client() as client:
        pods = running.pod_names()
        flags = await controller.read_controller_flags(client, NS, NAME)
        assert flags.watch_for_secrets
        outcome = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.NONE, job_id="job-2")
        await fleet_keys.ensure_key_secret(client, NS, key, "job-2")
        result = await controller_restart.wait_until_serving(
            client, NS, NAME, key.fingerprint, WAIT, policy=FAST)
        assert not outcome.restarted
        assert result.serving
        assert running.pod_names() == pods


async def test_a_crash_loop_ends_the_wait_with_the_reason(
        start: Start, rsa2048_keys: list[SealingKey]) -> None:
    """What ensure_key_secret refuses to write: an active Secret the controller cannot read."""
    broken = key_secret_manifest(rsa2048_keys[0], name="sealed-secrets-keybroke")
    broken["data"]["tls.crt"] = ""
    async with start() as running, running.client() as client:
        running.cluster.store.create("secrets", NS, broken)
        outcome = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.ROLLOUT, job_id="job-3")
        result = await controller_restart.wait_until_serving(
            client, NS, NAME, rsa2048_keys[0].fingerprint, WAIT,
            replaced_pods=outcome.replaced_pods, policy=FAST)
    assert result.crash_loop
    assert not result.serving
    assert not result.rollout_complete
    assert "pod sealed-secrets-controller-" in result.reason


async def test_the_wait_outlasts_the_old_pod_and_times_out_saying_what_is_served(
        start: Start, rsa2048_keys: list[SealingKey]) -> None:
    """The old controller serves the same key until the new one is ready: waiting for that
    key must not end before the rollout has; a key that never seals ends in a timeout."""
    older = recertified(rsa2048_keys[0], -1)  # older than the controller's own key
    async with start() as running, running.client() as client:
        own = await served(client)
        await fleet_keys.ensure_key_secret(client, NS, older, "job-4")
        outcome = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.ROLLOUT, job_id="job-4")
        done = await controller_restart.wait_until_serving(
            client, NS, NAME, own, WAIT, replaced_pods=outcome.replaced_pods, policy=FAST)
        assert done.serving
        assert set(running.pod_names()).isdisjoint(outcome.replaced_pods)
        result = await controller_restart.wait_until_serving(
            client, NS, NAME, older.fingerprint, 1.0, policy=FAST)
    assert not result.serving
    assert result.rollout_complete
    assert result.served_fingerprint == own
    assert result.reason.startswith("timed out after 1s: serving ")


async def test_plan_apply_and_replan_against_a_live_controller(
        start: Start, rsa2048_keys: list[SealingKey]) -> None:
    """The key sync executor in miniature: observe, plan, write, restart, wait, observe."""
    key = newer_key(rsa2048_keys[1])
    async with start(key_renew_period=dt.timedelta(0)) as running, running.client() as client:

        async def observe() -> key_sync.ClusterKeyState:
            flags = await controller.read_controller_flags(client, NS, NAME)
            holdings = await fleet_keys.read_key_holdings(client, NS, key_prefix=flags.key_prefix)
            return key_sync.ClusterKeyState("c1", holdings.held, flags, await served(client))

        before = await observe()
        (own,) = before.held
        fleet = key_sync.FleetKeySet(
            (key_sync.FleetKey(key.fingerprint, key.not_before),), retired=frozenset(
                {own.fingerprint}))
        policy = key_sync.SyncPolicy(RestartMode.ROLLOUT, relabel_unmanaged=True)
        plan = key_sync.plan_key_sync(fleet, before, policy)
        assert [c.fingerprint for c in plan.create] == [key.fingerprint]
        assert [(r.secret_name, r.label) for r in plan.relabel] == [(own.secret_name,
                                                                     "retired")]
        for create in plan.create:
            ensured = await fleet_keys.ensure_key_secret(client, NS, key, "job-5")
            assert ensured.name == create.secret_name
        for relabel in plan.relabel:
            await fleet_keys.set_key_label(client, NS, relabel.secret_name, relabel.label)
        outcome = await controller_restart.restart_controller(
            client, NS, NAME, mode=plan.restart, job_id="job-5")
        assert plan.expected_sealing_key == key.fingerprint
        result = await controller_restart.wait_until_serving(
            client, NS, NAME, plan.expected_sealing_key, WAIT,
            replaced_pods=outcome.replaced_pods, policy=FAST)
        assert result.serving

        after = await observe()
        assert not key_sync.plan_key_sync(fleet, after, policy).has_actions
        labels = {h.secret_name: h.label for h in after.held}
        assert labels[own.secret_name] == "retired"
        stored = running.cluster.store.get("secrets", NS, own.secret_name)
        assert stored["metadata"]["labels"][KEY_LABEL] == "retired"


async def test_a_controller_that_renews_its_own_key_at_start_ends_the_wait_early(
        start: Start, rsa2048_keys: list[SealingKey]) -> None:
    """Upstream's default renewal on: a controller whose newest key is older than its
    --key-renew-period makes a key as it starts, so the key it was restarted for never
    seals.  The wait says so once the rollout has settled, not at its timeout."""
    async with start(key_renew_period=dt.timedelta(hours=1)) as running, \
            running.client() as client:
        for held in (await fleet_keys.read_key_holdings(client, NS)).held:
            await client.delete(f"/api/v1/namespaces/{NS}/secrets/{held.secret_name}")
        day_old = recertified(rsa2048_keys[0], -1)     # older than the renewal period
        await fleet_keys.ensure_key_secret(client, NS, day_old, "job-7")
        # The controller counts a key's age from its Secret's creationTimestamp, which no
        # client can set: the Secret goes back into the store as a day-old one.
        (held,) = (await fleet_keys.read_key_holdings(client, NS)).held
        secret = running.cluster.store.get("secrets", NS, held.secret_name)
        await client.delete(f"/api/v1/namespaces/{NS}/secrets/{held.secret_name}")
        metadata = {k: v for k, v in secret["metadata"].items()
                    if k not in ("uid", "resourceVersion", "creationTimestamp")}
        yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        running.cluster.store.load("secrets", [{**secret, "metadata": metadata}],
                                   created_at=yesterday.strftime("%Y-%m-%dT%H:%M:%SZ"))
        outcome = await controller_restart.restart_controller(
            client, NS, NAME, mode=RestartMode.ROLLOUT, job_id="job-7")

        async def renewed_at_start() -> bool:
            # As upstream, the renewal runs beside the server: for a moment the new Pod
            # may serve the old key.  The wait below starts once the key is made.
            held = (await fleet_keys.read_key_holdings(client, NS)).held
            return len(held) == 2

        await eventually(renewed_at_start, within=WAIT)
        result = await controller_restart.wait_until_serving(
            client, NS, NAME, day_old.fingerprint, WAIT,
            replaced_pods=outcome.replaced_pods, policy=FAST, settle=1.0)
        renewed = {h.fingerprint for h in (await fleet_keys.read_key_holdings(client, NS)).held}
    assert not result.serving
    assert result.rollout_complete
    assert result.served_fingerprint not in (None, day_old.fingerprint)
    assert result.served_fingerprint in renewed              # the key it made at start
    assert "after the rollout finished" in result.reason
    assert not result.reason.startswith("timed out")
