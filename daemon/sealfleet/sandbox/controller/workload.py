"""The controller's Deployment, Pod and Services, and the kubelet loop that runs it.

What a real cluster's deployment controller and kubelet do for sealed-secrets, reduced
to what clients can observe:

- deleting the Pod starts a new Pod (new name, restartCount 0) and a new controller
  process; so does a change of the Deployment's pod template (``kubectl rollout
  restart`` sets ``kubectl.kubernetes.io/restartedAt``), new Pod first, then the old
  one is deleted;
- a process that dies (an unparseable key Secret, a bad flag) is restarted with the
  kubelet's doubling back-off; meanwhile the Pod shows ``CrashLoopBackOff``, its
  ``restartCount`` grows, and the Service has no endpoints, so the service proxy
  answers 503 as the real apiserver does;
- the Deployment's status (replicas, ready, updated, observedGeneration) follows, so
  ``kubectl rollout status`` finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import structlog

from sealfleet.sandbox.controller import manifests
from sealfleet.sandbox.controller.flags import (
    CONTAINER_NAME,
    IMAGE,
    ControllerFlags,
    FlagError,
    flags_from_deployment,
)
from sealfleet.sandbox.controller.http_api import Reply
from sealfleet.sandbox.controller.keyring import ControllerCrash
from sealfleet.sandbox.controller.metrics import ControllerMetrics
from sealfleet.sandbox.controller.process import ControllerProcess
from sealfleet.sandbox.controller.unsealing import SyncKnowledge
from sealfleet.sandbox.objects import ApiError, ObjectStore, now_rfc3339

_log = structlog.get_logger(__name__)

DEFAULT_NAMESPACE = "kube-system"
DEFAULT_NAME = "sealed-secrets-controller"


class ControllerWorkload:
    """One cluster's sealed-secrets install and the loop that keeps its Pod running."""

    def __init__(
        self,
        store: ObjectStore,
        *,
        executor: Executor,
        cluster: str,
        flags: ControllerFlags | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        name: str = DEFAULT_NAME,
        crash_backoff: tuple[float, float] = (10.0, 300.0),
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.namespace = namespace
        self.name = name
        self.cluster = cluster
        self._initial_flags = flags or ControllerFlags()
        self._executor = executor
        self._crash_backoff = crash_backoff
        self._rng = rng or random.Random()
        self.metrics = ControllerMetrics(store)
        self.knowledge = SyncKnowledge()
        self.process: ControllerProcess | None = None
        self.pod_name: str | None = None
        self._template: str | None = None
        self._restart = asyncio.Event()
        self._rollout = False
        self.last_crash: str | None = None
        self.starts = 0  # how many controller processes were started (tests wait on it)

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Create CRD, Deployment and Services (idempotent)."""
        with contextlib.suppress(ApiError):
            self.store.create(
                "customresourcedefinitions.apiextensions.k8s.io", None, manifests.crd()
            )
        for resource, obj in (
            (
                "deployments.apps",
                manifests.deployment(self.name, self.namespace, self._initial_flags),
            ),
            ("services", manifests.service(self.name, self.namespace)),
            ("services", manifests.metrics_service(self.name, self.namespace)),
        ):
            with contextlib.suppress(ApiError):
                self.store.create(resource, self.namespace, obj)

    # ------------------------------------------------------------- kubelet loop

    async def run(self) -> None:
        """Keep one controller process running until cancelled."""
        self.store.add_listener(self._on_store_event)
        restarts = 0
        try:
            while True:
                self._restart.clear()
                deployment = self._deployment()
                if deployment is None:
                    self._stop_serving()
                    await self._restart.wait()  # a new Deployment will wake us
                    continue
                if self._rollout or self.pod_name is None or not self._pod_exists():
                    self._rollout = False
                    self._new_pod(deployment)
                    restarts = 0
                crashed = await self._run_process(deployment, restarts)
                if crashed is None:
                    continue  # restart requested: new Pod already there or coming
                restarts += 1
                self._set_pod_waiting(crashed, restarts)
                backoff = min(self._crash_backoff[0] * 2 ** (restarts - 1), self._crash_backoff[1])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._restart.wait(), backoff)
        finally:
            self.store.remove_listener(self._on_store_event)
            self._stop_serving()

    async def _run_process(self, deployment: Mapping[str, Any], restarts: int) -> str | None:
        """Run one process; the crash text if it died, None if a restart was asked for."""
        try:
            flags = flags_from_deployment(deployment)
        except FlagError as exc:
            self.last_crash = str(exc)
            return str(exc)
        process = ControllerProcess(
            store=self.store,
            namespace=self.namespace,
            flags=flags,
            metrics=self.metrics,
            knowledge=self.knowledge,
            executor=self._executor,
            cluster=self.cluster,
        )
        self.metrics.reset()
        self.starts += 1
        task = asyncio.create_task(process.run(), name=f"{self.cluster}-controller")
        serving = asyncio.create_task(process.serving.wait())
        restart = asyncio.create_task(self._restart.wait())
        try:
            await asyncio.wait({task, serving, restart}, return_when=asyncio.FIRST_COMPLETED)
            if process.serving.is_set() and not task.done():
                self.process = process
                self.last_crash = None
                self._set_pod_running(restarts)
                await asyncio.wait({task, restart}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stop_serving()
            for waiter in (serving, restart):
                waiter.cancel()
            task.cancel()  # no-op when it has already exited
        return await self._reap(task)

    async def _reap(self, task: asyncio.Task[None]) -> str | None:
        """Wait for the process task to end; its crash text, or None if it was stopped."""
        await asyncio.wait({task})  # never raises the task's exception, only our own cancel
        if task.cancelled():
            return None
        error = task.exception()
        if error is None:
            return None
        if isinstance(error, ControllerCrash):
            self.last_crash = str(error)
            _log.warning("sandbox_controller_crashed", cluster=self.cluster, error=str(error))
        else:  # an emulation bug: show it as a crash and keep the cluster going
            self.last_crash = f"internal error: {type(error).__name__}"
            _log.error("sandbox_controller_failed", cluster=self.cluster,
                       exc_info=(type(error), error, error.__traceback__))
        return self.last_crash

    def _stop_serving(self) -> None:
        self.process = None
        self._update_deployment_status(ready=False)

    # --------------------------------------------------------------- pod state

    def _deployment(self) -> dict[str, Any] | None:
        try:
            return self.store.get("deployments.apps", self.namespace, self.name)
        except ApiError:
            return None

    def _pod_exists(self) -> bool:
        try:
            self.store.get("pods", self.namespace, self.pod_name or "")
        except ApiError:
            return False
        return True

    def _new_pod(self, deployment: Mapping[str, Any]) -> None:
        old = self.pod_name
        created = self.store.create("pods", self.namespace, manifests.pod(deployment, self._rng))
        self.pod_name = str(created["metadata"]["name"])
        self._template = json.dumps(deployment["spec"]["template"], sort_keys=True)
        if old is not None:
            with contextlib.suppress(ApiError):
                self.store.delete("pods", self.namespace, old)

    def _pod_status(
        self,
        state: dict[str, Any],
        ready: bool,
        restarts: int,
        last_state: dict[str, Any] | None = None,
    ) -> None:
        if self.pod_name is None:
            return
        try:
            pod = self.store.get("pods", self.namespace, self.pod_name)
        except ApiError:
            return
        now = now_rfc3339()
        ready_text = "True" if ready else "False"
        pod["status"] = {
            "phase": "Running",
            "conditions": [
                {"type": t, "status": s, "lastTransitionTime": now}
                for t, s in (
                    ("Initialized", "True"),
                    ("Ready", ready_text),
                    ("ContainersReady", ready_text),
                    ("PodScheduled", "True"),
                )
            ],
            "hostIP": "10.0.0.10",
            "podIP": "10.244.0.10",
            "startTime": pod["metadata"].get("creationTimestamp", now),
            "qosClass": "BestEffort",
            "containerStatuses": [
                {
                    "name": CONTAINER_NAME,
                    "image": IMAGE,
                    "imageID": IMAGE,
                    "ready": ready,
                    "started": ready,
                    "restartCount": restarts,
                    "state": state,
                    "lastState": last_state or {},
                }
            ],
        }
        with contextlib.suppress(ApiError):
            self.store.update("pods", self.namespace, self.pod_name, pod, subresource="status")

    def _set_pod_running(self, restarts: int) -> None:
        self._pod_status({"running": {"startedAt": now_rfc3339()}}, True, restarts)
        self._update_deployment_status(ready=True)

    def _set_pod_waiting(self, error: str, restarts: int) -> None:
        now = now_rfc3339()
        self._pod_status(
            {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off restarting failed container {CONTAINER_NAME}",
                }
            },
            False,
            restarts,
            {
                "terminated": {
                    "exitCode": 2,
                    "reason": "Error",
                    "message": error[:1024],
                    "startedAt": now,
                    "finishedAt": now,
                }
            },
        )

    def _update_deployment_status(self, *, ready: bool) -> None:
        deployment = self._deployment()
        if deployment is None:
            return
        count = 1 if ready else 0
        now = now_rfc3339()
        deployment["status"] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": 1,
            "updatedReplicas": 1,
            "readyReplicas": count,
            "availableReplicas": count,
            "unavailableReplicas": 1 - count,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if ready else "False",
                    "reason": "MinimumReplicasAvailable" if ready else "MinimumReplicasUnavailable",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                },
                {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "lastUpdateTime": now,
                    "lastTransitionTime": now,
                },
            ],
        }
        if not ready:
            del deployment["status"]["readyReplicas"]
            del deployment["status"]["availableReplicas"]
        with contextlib.suppress(ApiError):
            self.store.update(
                "deployments.apps", self.namespace, self.name, deployment, subresource="status"
            )

    # --------------------------------------------------------- store listener

    def _on_store_event(self, event_type: str, resource: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        if metadata.get("namespace") != self.namespace:
            return
        if resource == "pods" and event_type == "DELETED" and metadata.get("name") == self.pod_name:
            self.pod_name = None
            self._restart.set()
        elif resource == "deployments.apps" and metadata.get("name") == self.name:
            if event_type == "DELETED":
                self._restart.set()
                return
            template = json.dumps((obj.get("spec") or {}).get("template"), sort_keys=True)
            if event_type == "ADDED" or template != self._template:
                # A new pod template means a new ReplicaSet: roll the Pod.
                self._rollout = True
                self._restart.set()

    # ------------------------------------------------------------ service proxy

    async def proxy(
        self, service: str, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """What the Service's endpoint answers; 503 while no Pod is ready."""
        process = self.process
        if process is None:
            return _no_endpoints(service)
        if service.endswith("-metrics"):
            return await process.http.handle_metrics(method, path)
        return await process.http.handle_main(method, path, headers, body)


def _no_endpoints(service: str) -> Reply:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'no endpoints available for service "{service}"',
        "reason": "ServiceUnavailable",
        "code": 503,
    }
    return Reply(503, json.dumps(status).encode(), {"Content-Type": "application/json"})
