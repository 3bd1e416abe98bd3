"""Restarting the controller as a real cluster does it: a RollingUpdate whose new Pod needs
seconds to start while the old one keeps serving, a deleted Pod's window without endpoints,
a crash-looping new Pod that leaves the old one in place -- observed through the service
proxy, the real kubectl and the Deployment's status, by ordering, never by timing."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from controller_harness import CONTROLLER, NAMESPACE, PROXY, SandboxHarness, start_sandbox
from kubernetes_asyncio import client as k8s_client

from polling import eventually
from sealfleet.domain import keys as keys_domain
from sealfleet.sandbox.controller import rollout

# Long enough that a poll loop sees the window many times over; not a measured quantity.
STARTUP = 2.0
DEPLOYMENT = f"deployment/{CONTROLLER}"


def _hash(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"]["pod-template-hash"])


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _waiting(pod: dict[str, Any]) -> str | None:
    (container,) = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return ((container.get("state") or {}).get("waiting") or {}).get("reason")


def _condition(deployment: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in deployment["status"]["conditions"] if c["type"] == kind)


class Cluster:
    """One kubernetes-asyncio client, as the daemon holds one, for tight observation."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self._api = api

    async def _get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        response = await self._api.call_api(path, method, header_params={"Accept": "*/*"},
                                            auth_settings=["BearerToken"],
                                            _preload_content=False)
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def pods(self) -> list[dict[str, Any]]:
        _, body = await self._get(f"/api/v1/namespaces/{NAMESPACE}/pods")
        items: list[dict[str, Any]] = json.loads(body)["items"]
        return items

    async def deployment(self) -> dict[str, Any]:
        _, body = await self._get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/"
                                  f"{CONTROLLER}")
        found: dict[str, Any] = json.loads(body)
        return found

    async def delete_pod(self, name: str) -> dict[str, Any]:
        _, body = await self._get(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}", "DELETE")
        answer: dict[str, Any] = json.loads(body)
        return answer

    async def cert(self) -> tuple[int, str | None]:
        """cert.pem through the service proxy: the status and the fingerprint served."""
        status, body = await self._get(f"{PROXY}/v1/cert.pem")
        if status != 200:
            return status, None
        return status, keys_domain.load_certificate(body).fingerprint


@contextlib.asynccontextmanager
async def observing(harness: SandboxHarness) -> AsyncIterator[Cluster]:
    async with harness.api_client() as api:
        yield Cluster(api)


async def _add_key(harness: SandboxHarness, key: keys_domain.SealingKey, name: str) -> None:
    manifest = json.dumps(keys_domain.key_secret_manifest(key, name=name))
    created = await harness.kubectl("apply", "-f", "-", stdin=manifest)
    assert created.returncode == 0, created.stderr


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
            await _add_key(harness, new_key, "rotated-key")
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
                new = [p for p in before + after if _hash(p) != _hash(old_pod)]
                if new and not any(_ready(p) for p in new):
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
            assert [p for p in pods if _hash(p) != _hash(old_pod) and _ready(p)]
            assert all(p["metadata"].get("deletionTimestamp")
                       for p in pods if _hash(p) == _hash(old_pod))
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
                return next((p for p in await cluster.pods() if _hash(p) != _hash(old_pod)
                             and _waiting(p) == "ContainerCreating"), None)

            new_pod = await eventually(creating)
            await _add_key(harness, new_key, "late-key")
            (still,) = [p for p in await cluster.pods()
                        if p["metadata"]["name"] == new_pod["metadata"]["name"]]
            assert _waiting(still) == "ContainerCreating", "the process started before the key"
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
        step = (counts, _condition(deployment, "Progressing")["reason"],
                _condition(deployment, "Available")["status"])
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
    (pod,) = await cluster_pods(sandbox)
    progressing = _condition(final, "Progressing")
    assert progressing["status"] == "True"
    assert progressing["message"] == \
        f'ReplicaSet "{CONTROLLER}-{_hash(pod)}" has successfully progressed.'
    assert _condition(final, "Available")["message"] == "Deployment has minimum availability."
    listed = await sandbox.kubectl_json("get", "events", "-n", NAMESPACE)
    scaling = [e["message"] for e in listed["items"]
               if e["involvedObject"]["kind"] == "Deployment"
               and e["source"]["component"] == "deployment-controller"]
    new_rs = f"{CONTROLLER}-{_hash(pod)}"
    assert scaling[-2:] == [f"Scaled up replica set {new_rs} from 0 to 1",
                            f"Scaled down replica set {scaling[0].split()[4]} from 1 to 0"]
    assert scaling[0].split()[4] != new_rs  # the install's ReplicaSet


async def cluster_pods(harness: SandboxHarness) -> list[dict[str, Any]]:
    listed = await harness.kubectl_json("get", "pods", "-n", NAMESPACE)
    items: list[dict[str, Any]] = listed["items"]
    return items


async def test_removing_restarted_at_again_rolls_back_to_the_first_replica_set(
        sandbox: SandboxHarness) -> None:
    """What Flux does after ``rollout restart``: the annotation goes, the template is the
    first one again, and its ReplicaSet (same pod-template-hash) is scaled up again."""
    (first,) = await cluster_pods(sandbox)
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
        pods = await cluster_pods(sandbox)
        return pods if [_hash(p) for p in pods] == [_hash(first)] else None

    (pod,) = await eventually(back_on_first_hash)
    assert pod["metadata"]["name"] != first["metadata"]["name"]  # a new Pod all the same
    deployment = await sandbox.kubectl_json("get", "-n", NAMESPACE, DEPLOYMENT)
    assert deployment["metadata"]["generation"] == 3


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
            hashes = {_hash(p) for p in await cluster.pods()}
            assert len(hashes) <= 1, "old and new Pods at once under Recreate"
            await asyncio.sleep(0.01)
        assert (await status).returncode == 0
        (new_pod,) = await cluster.pods()
        assert _hash(new_pod) != _hash(old_pod)
        assert (await cluster.cert())[0] == 200


# ------------------------------------------------------------------ delete-pods


async def test_deleting_the_pod_leaves_no_endpoint_until_the_replacement_is_ready(
        tmp_path: Path, rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    new_key = rsa2048_keys[2]
    async with start_sandbox(tmp_path, startup_delay=STARTUP) as sandbox:
        harness = SandboxHarness(sandbox)
        async with observing(harness) as cluster:
            (old_pod,) = await cluster.pods()
            await _add_key(harness, new_key, "rotated-key")
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
                if not any(_ready(p) and not p["metadata"].get("deletionTimestamp")
                           for p in before + after):
                    # No ready Pod on either side: the apiserver has nowhere to proxy to.
                    assert (code, served) == (503, None)
                    unavailable += 1
                    available = _condition(await cluster.deployment(), "Available")
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
    (pod,) = await cluster_pods(sandbox)
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
                new = [p for p in await cluster.pods() if _hash(p) != _hash(old_pod)]
                looping = [p for p in new if _waiting(p) == "CrashLoopBackOff"
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
            progressing = _condition(deployment, "Progressing")
            assert (progressing["status"], progressing["reason"]) == \
                ("False", "ProgressDeadlineExceeded")
            assert progressing["message"].endswith("has timed out progressing.")
            assert {k: deployment["status"].get(k, 0) for k in (
                "replicas", "updatedReplicas", "availableReplicas", "unavailableReplicas")} == \
                {"replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
                 "unavailableReplicas": 1}
            assert _condition(deployment, "Available")["status"] == "True"
            assert await cluster.cert() == (200, old_cert)

            # Fixed: the next restart of the crashed container loads, the rollout resumes.
            removed = await harness.kubectl("delete", "secret", "-n", NAMESPACE, "broken-key")
            assert removed.returncode == 0, removed.stderr

            async def progressing_again() -> bool:
                condition = _condition(await cluster.deployment(), "Progressing")
                return condition["status"] == "True"

            await eventually(progressing_again)
            waited = await harness.kubectl("rollout", "status", "-n", NAMESPACE, DEPLOYMENT)
            assert waited.returncode == 0, waited.stderr
            assert _condition(await cluster.deployment(), "Progressing")["reason"] == \
                "NewReplicaSetAvailable"
