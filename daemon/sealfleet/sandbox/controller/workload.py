"""The controller's Deployment, its ReplicaSets and Pods, and the Service in front of them.

One loop per cluster plays the deployment controller (``deployment``, with the arithmetic
in ``rollout``) and the ReplicaSet controller (here); a
:class:`~sealfleet.sandbox.controller.kubelet.PodRunner` per Pod plays the kubelet.  What
that gives a client, as on a real cluster:

- a change of the pod template (``kubectl rollout restart`` sets
  ``kubectl.kubernetes.io/restartedAt``; ``kubectl set env``, a new image or args)
  bumps ``metadata.generation`` and starts a RollingUpdate: a new ReplicaSet (new
  ``pod-template-hash``) gets a Pod, which starts its controller process after the
  start-up delay and is Ready once that serves; all the while the *old* Pod's process
  (old keys, old ``/v1/cert.pem``) answers the Service.  Only then is the old Pod
  deleted: Terminating, then gone.  With one replica and 25 %/25 % that is surge 1,
  unavailable 0, and ``kubectl rollout status`` prints "1 old replicas are pending
  termination..." until it is over;
- a new Pod that crash-loops never becomes available, so the old one keeps serving and
  ``Progressing`` turns False/ProgressDeadlineExceeded after ``progressDeadlineSeconds``;
- deleting the Pod (how Flux- or Argo-CD-managed installs are restarted) gets a
  replacement at once, but it too needs the start-up delay: meanwhile the Service has
  no ready endpoint and the service proxy answers 503, as the real apiserver does.

The first Pods, made when the sandbox starts, start at once: the install predates the
sandbox's clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from sealfleet.sandbox.controller import manifests, rollout
from sealfleet.sandbox.controller.deployment import (
    DeploymentController,
    active,
    pod_hash,
    ready,
)
from sealfleet.sandbox.controller.flags import ControllerFlags
from sealfleet.sandbox.controller.http_api import Reply
from sealfleet.sandbox.controller.kubelet import PodRunner, PodTiming, ProcessContext
from sealfleet.sandbox.controller.process import ControllerProcess
from sealfleet.sandbox.controller.rollout import ReplicaSet
from sealfleet.sandbox.controller.unsealing import SyncKnowledge
from sealfleet.sandbox.objects import ApiError, ObjectStore

DEFAULT_NAMESPACE = "kube-system"
DEFAULT_NAME = "sealed-secrets-controller"
# Pod created -> controller process started: image present, sandbox and network set up.
DEFAULT_STARTUP_DELAY = 2.5
# SIGTERM -> Pod object gone: the process exits at once, the kubelet tidies up.
DEFAULT_TERMINATION_DELAY = 1.0


class ControllerWorkload:
    """One cluster's sealed-secrets install and the controllers that keep it running."""

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
        startup_delay: float = DEFAULT_STARTUP_DELAY,
        termination_delay: float | None = None,
        progress_deadline_seconds: int = manifests.DEFAULT_PROGRESS_DEADLINE,
        rng: random.Random | None = None,
    ) -> None:
        if startup_delay < 0 or (termination_delay is not None and termination_delay < 0):
            raise ValueError("start-up and termination delays cannot be negative")
        self.store = store
        self.namespace = namespace
        self.name = name
        self.cluster = cluster
        self._initial_flags = flags or ControllerFlags()
        self._progress_deadline = progress_deadline_seconds
        # A node that starts containers at once also cleans them up at once.
        termination = (min(DEFAULT_TERMINATION_DELAY, startup_delay)
                       if termination_delay is None else termination_delay)
        self._timing = PodTiming(startup_delay, termination, crash_backoff)
        self._rng = rng or random.Random()
        self.knowledge = SyncKnowledge()
        self._context = ProcessContext(store, namespace, executor, cluster, self.knowledge)
        self._deployments = DeploymentController(store, namespace, name)
        self._runners: dict[str, PodRunner] = {}  # by Pod name
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._served = False
        self._pod_serial = 0
        self.last_crash: str | None = None
        self._finished_starts = 0

    # ------------------------------------------------------------ observation

    @property
    def starts(self) -> int:
        """How many controller processes were started (tests wait on it)."""
        return self._finished_starts + sum(r.starts for r in self._runners.values())

    @property
    def endpoints(self) -> list[PodRunner]:
        """The Service's ready endpoints: Ready Pods not being deleted."""
        return [r for r in self._runners.values() if r.process is not None and not r.terminating]

    @property
    def process(self) -> ControllerProcess | None:
        """A process the Service routes to, or None while it has no ready endpoint."""
        ready = self.endpoints
        return ready[0].process if ready else None

    # ------------------------------------------------------------------ install

    def install(self) -> None:
        """Create CRD, Deployment and Services (idempotent)."""
        with contextlib.suppress(ApiError):
            self.store.create(
                "customresourcedefinitions.apiextensions.k8s.io", None, manifests.crd()
            )
        deployment = manifests.deployment(self.name, self.namespace, self._initial_flags,
                                          progress_deadline_seconds=self._progress_deadline)
        for resource, obj in (
            ("deployments.apps", deployment),
            ("services", manifests.service(self.name, self.namespace)),
            ("services", manifests.metrics_service(self.name, self.namespace)),
        ):
            with contextlib.suppress(ApiError):
                self.store.create(resource, self.namespace, obj)

    # ------------------------------------------------------------- the loop

    async def run(self) -> None:
        """Reconcile Deployment -> ReplicaSets -> Pods until cancelled."""
        self.store.add_listener(self._on_store_event)
        try:
            while True:
                await asyncio.sleep(0)  # a pass whose writes wake it again never starves the loop
                self._wake.clear()
                recheck = self._sync()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), recheck)
        finally:
            self.store.remove_listener(self._on_store_event)
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._runners.clear()
            self._tasks.clear()

    def _sync(self) -> float | None:
        """One pass of both controllers; seconds until a progress check is due."""
        deployment = self._deployment()
        if deployment is None:  # the garbage collector took its Pods
            self._deployments.forget()
            return None
        now = dt.datetime.now(dt.UTC)
        pods = self._pods(deployment)
        self._deployments.sync(deployment, pods, now)
        self._scale_pods(deployment, pods)
        current = self._deployment()
        return rollout.progress_check_in(current, now) if current else None

    def _scale_pods(self, deployment: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        """The ReplicaSet controller: as many active Pods per ReplicaSet as it wants."""
        for rs in list(self._deployments.replica_sets.values()):
            live = [p for p in pods if pod_hash(p) == rs.pod_hash and active(p)]
            missing = rs.replicas - len(live)
            for _ in range(missing):
                self._create_pod(deployment, rs)
            # Surplus: not-ready Pods go first, then the youngest.
            live.sort(key=lambda p: str(p["metadata"].get("creationTimestamp", "")),
                      reverse=True)
            live.sort(key=ready)
            for pod in live[: max(-missing, 0)]:
                with contextlib.suppress(ApiError):
                    self.store.delete("pods", self.namespace, pod["metadata"]["name"])

    def _create_pod(self, deployment: dict[str, Any], rs: ReplicaSet) -> None:
        created = self.store.create(
            "pods", self.namespace, manifests.pod(deployment, rs.template, rs.pod_hash, self._rng))
        timing = self._timing
        if not self._served:  # the install predates the sandbox: already started
            timing = PodTiming(0.0, timing.termination_delay, timing.crash_backoff)
        runner = PodRunner(created, context=self._context, timing=timing,
                           pod_ip=self._next_pod_ip(),
                           on_change=self._on_runner_change, on_crash=self._on_crash)
        self._runners[runner.name] = runner
        self._tasks[runner.name] = asyncio.create_task(
            self._run_pod(runner), name=f"{self.cluster}-kubelet-{runner.name}")

    def _next_pod_ip(self) -> str:
        self._pod_serial += 1
        return f"10.244.0.{10 + (self._pod_serial - 1) % 240}"

    async def _run_pod(self, runner: PodRunner) -> None:
        try:
            await runner.run()
        finally:
            self._finished_starts += runner.starts
            self._runners.pop(runner.name, None)
            self._tasks.pop(runner.name, None)
            self._wake.set()

    # ------------------------------------------------------------ reading/writing

    def _deployment(self) -> dict[str, Any] | None:
        try:
            return self.store.get("deployments.apps", self.namespace, self.name)
        except ApiError:
            return None

    def _pods(self, deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
        uid = deployment["metadata"]["uid"]
        pods, _ = self.store.list("pods", self.namespace)
        return [p for p in pods
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]

    # ------------------------------------------------------------- notifications

    def _on_runner_change(self) -> None:
        if self.endpoints:
            self._served = True
        self._wake.set()

    def _on_crash(self, crash: str | None) -> None:
        self.last_crash = crash

    def _on_store_event(self, event_type: str, resource: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        if metadata.get("namespace") != self.namespace:
            return
        if resource == "pods":
            runner = self._runners.get(str(metadata.get("name")))
            if runner is not None and event_type == "DELETED":
                task = self._tasks.get(runner.name)
                if task is not None and not runner.terminating:
                    task.cancel()  # gone without the kubelet: a forced or cascading delete
                runner.terminate()
            elif runner is not None and metadata.get("deletionTimestamp"):
                runner.terminate()
            self._wake.set()
        elif resource == "deployments.apps" and metadata.get("name") == self.name:
            self._wake.set()

    # ------------------------------------------------------------ service proxy

    async def proxy(
        self, service: str, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """What one of the Service's ready endpoints answers; 503 while it has none."""
        ready = self.endpoints
        process = self._rng.choice(ready).process if ready else None
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
