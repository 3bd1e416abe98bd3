"""Restarting the controller with a RollingUpdate as a real cluster does it: the new Pod
needs seconds to start while the old one keeps serving the old keys; the Deployment's
status and ``kubectl rollout status`` move as the deployment controller moves them.
Observed through the service proxy, the real kubectl and the API, by ordering, never by
timing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from controller_harness import CONTROLLER, NAMESPACE, SandboxHarness, start_sandbox
from kubernetes_asyncio import client as k8s_client
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
from sealfleet.sandbox.controller import rollout

# ------------------------------------------------------------- the arithmetic


def test_fenceposts_and_surge_follow_the_deployment_controller() -> None:
    def deployment(replicas: int, surge: object, unavailable: object) -> dict[str, Any]:
        return {"metadata": {"name": "d", "generation": 1},
                "spec": {"replicas": replicas, "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}}

    # One replica, 25 %/25 %: surge rounds up to a second Pod, unavailable down to none.
    assert rollout.resolve_fenceposts(deployment(1, "25%", "25%")) == (1, 0)
    assert rollout.max_unavailable(deployment(1, "25%", "25%")) == 0
    # Upstream's TestResolveFenceposts cases.
    assert rollout.resolve_fenceposts(deployment(10, "39%", "39%")) == (4, 3)
    assert rollout.resolve_fenceposts(deployment(0, "0%", "0%")) == (0, 1)
    one = deployment(1, "25%", "25%")
    old = rollout.ReplicaSet("d-old", "old", {}, 1, 1, 1)
    new = rollout.ReplicaSet("d-new", "new", {}, 2, 0, 2)
    assert rollout.new_rs_new_replicas(one, [old, new], new) == 1
    # Already at replicas + surge (a stuck new ReplicaSet): a newer one starts at zero.
    newer = rollout.ReplicaSet("d-newer", "newer", {}, 3, 0, 3)
    new.replicas = 1
    assert rollout.new_rs_new_replicas(one, [old, new, newer], newer) == 0


# -------------------------------------------------------------- rolling update


async def test_rollout_serves_the_old_certificate_until_the_new_pod_is_ready(
        tmp_path: Path, rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    new_key = rsa2048_keys[2]  # NotBefore now: newer than every seeded key
    async with start_sandbox(tmp_path, startup_delay=STARTUP) as sandbox:
        harness = SandboxHarness(sandbox)
        async with observing(harness) as cluster:
            _, old_cert = await cluster.cert()
            (old_pod,) = await cluster.pods()
            await add_key(harness, new_key, "rotated-key")
            # The running process loaded its keys at start: still the old certificate.
            assert await cluster.cert() == (200, old_cert)

            restarted = await harness.kubectl("rollout", "restart", "-n", NAMESPACE, DEPLOYMENT)
            assert restarted.returncode == 0, restarted.stderr
            status = asyncio.create_task(harness.kubectl(
                "rollout", "status", "-n", NAMESPACE, DEPLOYMENT))
            served_old_while_starting = 0
            while True:
                before = await cluster.pods()
                code, served = await cluster.cert()
                after = await cluster.pods()
                new = [p for p in before + after if pod_hash(p) != pod_hash(old_pod)]
                if new and not any(pod_ready(p) for p in new):
                    # The new Pod exists and was not Ready on either side of the request:
                    # the old process answered, and the rollout is not over.
                    assert (code, served) == (200, old_cert)
                    assert not status.done(), "rollout status returned before the Pod was Ready"
                    served_old_while_starting += 1
                if served == new_key.fingerprint:
                    break
                assert code == 200, "the Service lost its endpoint during a RollingUpdate"
                await asyncio.sleep(0.02)
            assert served_old_while_starting > 0
            finished = await status
            # Rolled out: the old Pod is Terminating or gone, only the new one serves.
            assert await cluster.cert() == (200, new_key.fingerprint)
            pods = await cluster.pods()
            assert [p for p in pods if pod_hash(p) != pod_hash(old_pod) and pod_ready(p)]
            assert all(p["metadata"].get("deletionTimestamp")
                       for p in pods if pod_hash(p) == pod_hash(old_pod))
        assert finished.returncode == 0, finished.stderr
        lines = finished.stdout.splitlines()
        waiting = (f'Waiting for deployment "{CONTROLLER}" rollout to finish: '
                   "1 old replicas are pending termination...")
        assert waiting in lines
        assert lines[-1] == f'deployment "{CONTROLLER}" successfully rolled out'


async def test_a_key_written_while_the_new_pod_starts_is_loaded(
        tmp_path: Path, rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    """Keys are read when the new process starts, not when the rollout was asked for."""
    new_key = rsa2048_keys[2]
    async with start_sandbox(tmp_path, startup_delay=STARTUP) as sandbox:
        harness = SandboxHarness(sandbox)
        async with observing(harness) as cluster:
            (old_pod,) = await cluster.pods()
            restarted = await harness.kubectl("rollout", "restart", "-n", NAMESPACE, DEPLOYMENT)
            assert restarted.returncode == 0, restarted.stderr

            async def creating() -> dict[str, Any] | None:
                return next((p for p in await cluster.pods() if pod_hash(p) != pod_hash(old_pod)
                             and pod_waiting(p) == "ContainerCreating"), None)

            new_pod = await eventually(creating)
            await add_key(harness, new_key, "late-key")
            (still,) = [p for p in await cluster.pods()
                        if p["metadata"]["name"] == new_pod["metadata"]["name"]]
            assert pod_waiting(still) == "ContainerCreating", "the process started before the key"
            waited = await harness.kubectl("rollout", "status", "-n", NAMESPACE, DEPLOYMENT)
            assert waited.returncode == 0, waited.stderr
            assert await cluster.cert() == (200, new_key.fingerprint)


async def test_status_fields_move_as_the_deployment_controller_moves_them(
        sandbox: SandboxHarness) -> None:
    async with observing(sandbox) as cluster, sandbox.api_client() as api:
        start = (await cluster.deployment())["metadata"]["resourceVersion"]
        restarted = await sandbox.kubectl("rollout", "restart", "-n", NAMESPACE, DEPLOYMENT)
        assert restarted.returncode == 0, restarted.stderr
        waited = await sandbox.kubectl("rollout", "status", "-n", NAMESPACE, DEPLOYMENT)
        assert waited.returncode == 0, waited.stderr

        async def old_pod_gone() -> bool:
            return len(await cluster.pods()) == 1

        await eventually(old_pod_gone)
        response = await k8s_client.AppsV1Api(api).list_namespaced_deployment(
            NAMESPACE, field_selector=f"metadata.name={CONTROLLER}", watch=True,
            resource_version=start, timeout_seconds=1, _preload_content=False)
        async with response:
            events = [json.loads(line) for line in (await response.read()).splitlines()]
    deployments = [e["object"] for e in events if e["type"] == "MODIFIED"]
    assert deployments[0]["metadata"]["generation"] == 2  # the template change itself
    seen = []
    for deployment in deployments:
        status = deployment["status"]
        counts = tuple(status.get(k, 0) for k in (
            "observedGeneration", "replicas", "updatedReplicas", "readyReplicas",
            "availableReplicas", "unavailableReplicas", "terminatingReplicas"))
        step = (counts, condition(deployment, "Progressing")["reason"],
                condition(deployment, "Available")["status"])
        if not seen or seen[-1] != step:
            seen.append(step)
    # (observedGeneration, replicas, updated, ready, available, unavailable, terminating)
    assert seen == [
        ((1, 1, 1, 1, 1, 0, 0), "NewReplicaSetAvailable", "True"),  # spec not yet observed
        ((1, 1, 1, 1, 1, 0, 0), "NewReplicaSetCreated", "True"),
        ((2, 1, 0, 1, 1, 1, 0), "NewReplicaSetCreated", "True"),
        ((2, 2, 1, 1, 1, 1, 0), "ReplicaSetUpdated", "True"),  # surge: the new Pod starting
        ((2, 2, 1, 2, 2, 0, 0), "ReplicaSetUpdated", "True"),  # new Pod ready
        ((2, 1, 1, 1, 1, 0, 1), "NewReplicaSetAvailable", "True"),  # old Pod Terminating
        ((2, 1, 1, 1, 1, 0, 0), "NewReplicaSetAvailable", "True"),
    ]
    final = deployments[-1]
    (pod,) = await kubectl_pods(sandbox)
    progressing = condition(final, "Progressing")
    assert progressing["status"] == "True"
    assert progressing["message"] == \
        f'ReplicaSet "{CONTROLLER}-{pod_hash(pod)}" has successfully progressed.'
    assert condition(final, "Available")["message"] == "Deployment has minimum availability."
    listed = await sandbox.kubectl_json("get", "events", "-n", NAMESPACE)
    scaling = [e["message"] for e in listed["items"]
               if e["involvedObject"]["kind"] == "Deployment"
               and e["source"]["component"] == "deployment-controller"]
    new_rs = f"{CONTROLLER}-{pod_hash(pod)}"
    assert scaling[-2:] == [f"Scaled up replica set {new_rs} from 0 to 1",
                            f"Scaled down replica set {scaling[0].split()[4]} from 1 to 0"]
    assert scaling[0].split()[4] != new_rs  # the install's ReplicaSet


async def test_removing_restarted_at_again_rolls_back_to_the_first_replica_set(
        sandbox: SandboxHarness) -> None:
    """What Flux does after ``rollout restart``: the annotation goes, the template is the
    first one again, and its ReplicaSet (same pod-template-hash) is scaled up again."""
    (first,) = await kubectl_pods(sandbox)
    restarted = await sandbox.kubectl("rollout", "restart", "-n", NAMESPACE, DEPLOYMENT)
    assert restarted.returncode == 0, restarted.stderr
    waited = await sandbox.kubectl("rollout", "status", "-n", NAMESPACE, DEPLOYMENT)
    assert waited.returncode == 0, waited.stderr
    patch = json.dumps([{"op": "remove", "path": "/spec/template/metadata/annotations/"
                         "kubectl.kubernetes.io~1restartedAt"}])
    reverted = await sandbox.kubectl("patch", "-n", NAMESPACE, DEPLOYMENT, "--type=json",
                                     "-p", patch)
    assert reverted.returncode == 0, reverted.stderr
    waited = await sandbox.kubectl("rollout", "status", "-n", NAMESPACE, DEPLOYMENT)
    assert waited.returncode == 0, waited.stderr

    async def back_on_first_hash() -> list[dict[str, Any]] | None:
        pods = await kubectl_pods(sandbox)
        return pods if [pod_hash(p) for p in pods] == [pod_hash(first)] else None

    (pod,) = await eventually(back_on_first_hash)
    assert pod["metadata"]["name"] != first["metadata"]["name"]  # a new Pod all the same
    deployment = await sandbox.kubectl_json("get", "-n", NAMESPACE, DEPLOYMENT)
    assert deployment["metadata"]["generation"] == 3
