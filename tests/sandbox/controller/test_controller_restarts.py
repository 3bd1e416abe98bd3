"""The other restarts: deleting the Pod (Flux, Argo CD) leaves a window without endpoints,
pod deletion is graceful, a crash-looping new Pod leaves the old one serving until the
progress deadline, Recreate stops before it starts.  Observed by ordering, never timing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path
from typing import Any

from controller_harness import CONTROLLER, NAMESPACE, SandboxHarness, start_sandbox
from rollout_harness import (
    DEPLOYMENT,
    STARTUP,
    add_key,
    condition,
    kubectl_pods,
    observing,
    pod_hash,
    pod_ready,
    pod_waiting,
)

from polling import eventually
from sealfleet.domain import keys as keys_domain


async def test_recreate_strategy_stops_the_old_pod_before_starting_the_new_one(
        sandbox: SandboxHarness) -> None:
    recreate = await sandbox.kubectl("patch", "-n", NAMESPACE, DEPLOYMENT, "-p", json.dumps(
        {"spec": {"strategy": {"type": "Recreate", "rollingUpdate": None}}}))
    assert recreate.returncode == 0, recreate.stderr
    async with observing(sandbox) as cluster:
        (old_pod,) = await cluster.pods()
        restarted = await sandbox.kubectl("rollout", "restart", "-n", NAMESPACE, DEPLOYMENT)
        assert restarted.returncode == 0, restarted.stderr
        status = asyncio.create_task(sandbox.kubectl(
            "rollout", "status", "-n", NAMESPACE, DEPLOYMENT))
        while not status.done():
            hashes = {pod_hash(p) for p in await cluster.pods()}
            assert len(hashes) <= 1, "old and new Pods at once under Recreate"
            await asyncio.sleep(0.01)
        assert (await status).returncode == 0
        (new_pod,) = await cluster.pods()
        assert pod_hash(new_pod) != pod_hash(old_pod)
        assert (await cluster.cert())[0] == 200


# ------------------------------------------------------------------ delete-pods


async def test_deleting_the_pod_leaves_no_endpoint_until_the_replacement_is_ready(
        tmp_path: Path, rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    new_key = rsa2048_keys[2]
    async with start_sandbox(tmp_path, startup_delay=STARTUP) as sandbox:
        harness = SandboxHarness(sandbox)
        async with observing(harness) as cluster:
            (old_pod,) = await cluster.pods()
            await add_key(harness, new_key, "rotated-key")
            deleted = await harness.kubectl("delete", "pod", "-n", NAMESPACE,
                                            old_pod["metadata"]["name"], "--wait=false")
            assert deleted.returncode == 0, deleted.stderr
            assert deleted.stdout.strip() == f'pod "{old_pod["metadata"]["name"]}" deleted ' \
                f"from {NAMESPACE} namespace"
            status = asyncio.create_task(harness.kubectl(
                "rollout", "status", "-n", NAMESPACE, DEPLOYMENT))
            unavailable = unavailable_condition = 0
            while True:
                before = await cluster.pods()
                code, served = await cluster.cert()
                after = await cluster.pods()
                if not any(pod_ready(p) and not p["metadata"].get("deletionTimestamp")
                           for p in before + after):
                    # No ready Pod on either side: the apiserver has nowhere to proxy to.
                    assert (code, served) == (503, None)
                    unavailable += 1
                    available = condition(await cluster.deployment(), "Available")
                    unavailable_condition += available["status"] == "False"
                    assert available["reason"] in ("MinimumReplicasAvailable",
                                                   "MinimumReplicasUnavailable")
                if code == 200:
                    break
                await asyncio.sleep(0.02)
            assert unavailable > 0
            assert unavailable_condition > 0  # the Deployment said so too (it lags a little)
            assert served == new_key.fingerprint  # the replacement loaded the new key
            finished = await status
        assert finished.returncode == 0, finished.stderr
        assert (f'Waiting for deployment "{CONTROLLER}" rollout to finish: '
                "0 of 1 updated replicas are available...") in finished.stdout.splitlines()


async def test_pod_deletion_is_graceful_on_a_node_and_immediate_off_one(
        sandbox: SandboxHarness) -> None:
    (pod,) = await kubectl_pods(sandbox)
    name = pod["metadata"]["name"]
    async with observing(sandbox) as cluster:
        marked = await cluster.delete_pod(name)
    # The apiserver answers with the Pod itself, marked, not with a Status: it is still there.
    assert marked["kind"] == "Pod"
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    assert dt.datetime.fromisoformat(marked["metadata"]["deletionTimestamp"]) > \
        dt.datetime.now(dt.UTC)
    # ``kubectl delete`` waits for the kubelet to remove the object.
    waited = await sandbox.kubectl("delete", "pod", "-n", NAMESPACE, name, "--ignore-not-found")
    assert waited.returncode == 0, waited.stderr
    gone = await sandbox.kubectl("get", "pod", "-n", NAMESPACE, name)
    assert "NotFound" in gone.stderr
    unscheduled = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "loose", "namespace": "default"},
                   "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    created = await sandbox.kubectl("apply", "-f", "-", stdin=json.dumps(unscheduled))
    assert created.returncode == 0, created.stderr
    removed = await sandbox.kubectl("delete", "pod", "-n", "default", "loose", "--wait=false")
    assert removed.returncode == 0, removed.stderr
    gone = await sandbox.kubectl("get", "pod", "-n", "default", "loose")
    assert "NotFound" in gone.stderr  # no node, no kubelet: deleted at once


# -------------------------------------------------------------------- crash loop


async def test_crash_looping_new_pod_keeps_the_old_one_serving_until_the_deadline(
        tmp_path: Path) -> None:
    async with start_sandbox(tmp_path, startup_delay=0.1) as sandbox:
        harness = SandboxHarness(sandbox)
        async with observing(harness) as cluster:
            _, old_cert = await cluster.cert()
            (old_pod,) = await cluster.pods()
            deadline = await harness.kubectl("patch", "-n", NAMESPACE, DEPLOYMENT, "-p",
                                             '{"spec":{"progressDeadlineSeconds":2}}')
            assert deadline.returncode == 0, deadline.stderr
            bad = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                   "metadata": {"name": "broken-key", "namespace": NAMESPACE, "labels": {
                       "sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
                   "data": {"tls.key": "bm90IGEga2V5", "tls.crt": "bm90IGEgY2VydA=="}}
            created = await harness.kubectl("apply", "-f", "-", stdin=json.dumps(bad))
            assert created.returncode == 0, created.stderr
            restarted = await harness.kubectl("rollout", "restart", "-n", NAMESPACE, DEPLOYMENT)
            assert restarted.returncode == 0, restarted.stderr

            async def crash_looping() -> dict[str, Any] | None:
                new = [p for p in await cluster.pods() if pod_hash(p) != pod_hash(old_pod)]
                looping = [p for p in new if pod_waiting(p) == "CrashLoopBackOff"
                           and p["status"]["containerStatuses"][0]["restartCount"] >= 2]
                return looping[0] if looping else None

            await eventually(crash_looping)
            # maxUnavailable 0: the old Pod stays and answers with the old certificate.
            assert await cluster.cert() == (200, old_cert)
            names = {p["metadata"]["name"] for p in await cluster.pods()}
            assert old_pod["metadata"]["name"] in names
            stuck = await harness.kubectl("rollout", "status", "-n", NAMESPACE, DEPLOYMENT)
            assert stuck.returncode == 1
            assert stuck.stderr.strip() == \
                f'error: deployment "{CONTROLLER}" exceeded its progress deadline'
            deployment = await cluster.deployment()
            progressing = condition(deployment, "Progressing")
            assert (progressing["status"], progressing["reason"]) == \
                ("False", "ProgressDeadlineExceeded")
            assert progressing["message"].endswith("has timed out progressing.")
            assert {k: deployment["status"].get(k, 0) for k in (
                "replicas", "updatedReplicas", "availableReplicas", "unavailableReplicas")} == \
                {"replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
                 "unavailableReplicas": 1}
            assert condition(deployment, "Available")["status"] == "True"
            assert await cluster.cert() == (200, old_cert)

            # Fixed: the next restart of the crashed container loads, the rollout resumes.
            removed = await harness.kubectl("delete", "secret", "-n", NAMESPACE, "broken-key")
            assert removed.returncode == 0, removed.stderr

            async def progressing_again() -> bool:
                progressing = condition(await cluster.deployment(), "Progressing")
                return progressing["status"] == "True"

            await eventually(progressing_again)
            waited = await harness.kubectl("rollout", "status", "-n", NAMESPACE, DEPLOYMENT)
            assert waited.returncode == 0, waited.stderr
            assert condition(await cluster.deployment(), "Progressing")["reason"] == \
                "NewReplicaSetAvailable"
