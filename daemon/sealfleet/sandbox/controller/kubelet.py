"""The kubelet's part: one Pod's container, from ContainerCreating to gone.

What a client can observe of a real sealed-secrets Pod, in order:

1. created: ``Pending``, the container waiting in ``ContainerCreating`` -- for the
   start-up delay (image, sandbox, network: seconds on a real node);
2. the container starts: ``Running``, not ready; the controller process loads the key
   Secrets *now* (so keys written while the Pod was being created are seen) and opens
   its HTTP port;
3. serving: ``Ready`` -- from here on the Service routes to it;
4. a process that dies (an unparseable key, a bad flag) is restarted with the kubelet's
   doubling back-off, the Pod shows ``CrashLoopBackOff`` meanwhile and is not ready;
5. deleted (``deletionTimestamp`` set): the process gets SIGTERM and stops serving at
   once (the real one shuts its servers down and exits 0), the container shows
   ``Completed``, the Pod turns ``Succeeded`` and, after the termination delay, the
   kubelet removes the object (grace 0).  ``kubectl get pods`` says ``Terminating``
   throughout, and ``kubectl delete pod`` returns only once the object is gone.

Each container start is a new :class:`ControllerProcess` with its own metrics; the
old and the new Pod of a rollout run side by side, each with the flags of its own
template.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import structlog

from sealfleet.sandbox.controller.flags import (
    CONTAINER_NAME,
    IMAGE,
    FlagError,
    flags_from_pod_spec,
)
from sealfleet.sandbox.controller.keyring import ControllerCrash
from sealfleet.sandbox.controller.metrics import ControllerMetrics
from sealfleet.sandbox.controller.process import ControllerProcess
from sealfleet.sandbox.controller.unsealing import SyncKnowledge
from sealfleet.sandbox.objects import ApiError, ObjectStore, now_rfc3339

_log = structlog.get_logger(__name__)

HOST_IP = "10.0.0.10"
IMAGE_ID = IMAGE + "@sha256:" + hashlib.sha256(IMAGE.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class PodTiming:
    """How long a node takes: to start a container, to clean one up, between restarts."""

    startup_delay: float
    termination_delay: float
    crash_backoff: tuple[float, float]  # first delay, cap (the kubelet's 10 s and 300 s)


@dataclasses.dataclass(frozen=True)
class ProcessContext:
    """What every controller process of one cluster shares."""

    store: ObjectStore
    namespace: str
    executor: Executor
    cluster: str
    knowledge: SyncKnowledge


class PodRunner:
    """The kubelet loop for one Pod; ``run`` returns once the Pod object is gone."""

    def __init__(self, pod: Mapping[str, Any], *, context: ProcessContext, timing: PodTiming,
                 pod_ip: str, on_change: Callable[[], None],
                 on_crash: Callable[[str | None], None]) -> None:
        self.name = str(pod["metadata"]["name"])
        self._spec: dict[str, Any] = dict(pod.get("spec") or {})
        self._uid = str(pod["metadata"].get("uid", ""))
        self._context = context
        self._timing = timing
        self._pod_ip = pod_ip
        self._on_change = on_change
        self._on_crash = on_crash
        self._stop = asyncio.Event()
        self._started_at = now_rfc3339()
        self._container_id = ""
        self._container_started = ""
        self.restarts = 0
        self.process: ControllerProcess | None = None  # set while Ready
        self.starts = 0

    @property
    def terminating(self) -> bool:
        return self._stop.is_set()

    def terminate(self) -> None:
        """The Pod got a ``deletionTimestamp``: SIGTERM, and out of the endpoints now."""
        if not self._stop.is_set():
            self._stop.set()
            self.process = None

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        try:
            self._write(_waiting("ContainerCreating"), phase="Pending", ready=False)
            if not await self._stopped_within(self._timing.startup_delay):
                await self._container_loop()
            await self._finish()
        finally:
            self.process = None
            self._on_change()

    async def _container_loop(self) -> None:
        first, cap = self._timing.crash_backoff
        while True:
            crash = await self._run_container()
            if self._stop.is_set():
                return
            self.restarts += 1
            backoff = min(first * 2 ** (self.restarts - 1), cap)
            # Go's exit status after a panic or a pflag error is 2.
            self._write(_waiting("CrashLoopBackOff", f"back-off {_go_duration(backoff)} "
                                 f"restarting failed container={CONTAINER_NAME} pod={self.name}_"
                                 f"{self._context.namespace}({self._uid})"),
                        ready=False, last_state=self._terminated(2, "Error", crash))
            self._on_change()
            if await self._stopped_within(backoff):
                return

    async def _run_container(self) -> str:
        """One run of the container: its crash text, or "" when it was stopped."""
        self._container_id = "containerd://" + hashlib.sha256(
            f"{self._uid}/{self.restarts}".encode()).hexdigest()
        self._container_started = now_rfc3339()
        self._write({"running": {"startedAt": self._container_started}}, ready=False)
        try:
            flags = flags_from_pod_spec(self._spec)
        except FlagError as exc:
            self._on_crash(str(exc))
            return str(exc)
        ctx = self._context
        process = ControllerProcess(store=ctx.store, namespace=ctx.namespace, flags=flags,
                                    metrics=ControllerMetrics(ctx.store),
                                    knowledge=ctx.knowledge, executor=ctx.executor,
                                    cluster=ctx.cluster)
        self.starts += 1
        task = asyncio.create_task(process.run(), name=f"{ctx.cluster}-{self.name}")
        serving = asyncio.create_task(process.serving.wait())
        stop = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, serving, stop}, return_when=asyncio.FIRST_COMPLETED)
            if process.serving.is_set() and not task.done() and not self._stop.is_set():
                self.process = process
                self._on_crash(None)
                self._write({"running": {"startedAt": self._container_started}}, ready=True)
                self._on_change()
                await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.process = None
            for waiter in (serving, stop):
                waiter.cancel()
            task.cancel()  # SIGTERM; a no-op when the process has already exited
        return await self._reap(task)

    async def _reap(self, task: asyncio.Task[None]) -> str:
        await asyncio.wait({task})  # never raises the task's exception, only our own cancel
        error = None if task.cancelled() else task.exception()
        if error is None:
            return ""
        if isinstance(error, ControllerCrash):
            crash = str(error)
            _log.warning("sandbox_controller_crashed", cluster=self._context.cluster,
                         pod=self.name, error=crash)
        else:  # an emulation bug: show it as a crash and keep the cluster going
            crash = f"internal error: {type(error).__name__}"
            _log.error("sandbox_controller_failed", cluster=self._context.cluster,
                       exc_info=(type(error), error, error.__traceback__))
        self._on_crash(crash)
        return crash

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _finish(self) -> None:
        """SIGTERM handled (exit 0), Pod terminal, then the object goes."""
        ran = bool(self._container_id)
        state = self._terminated(0, "Completed", "") if ran else _waiting("ContainerCreating")
        self._write(state, ready=False)
        self._on_change()
        await asyncio.sleep(self._timing.termination_delay)
        self._write(state, phase="Succeeded", ready=False)
        with contextlib.suppress(ApiError):
            self._context.store.delete("pods", self._context.namespace, self.name,
                                       grace_period=0)

    # ------------------------------------------------------------------ status

    def _terminated(self, code: int, reason: str, message: str) -> dict[str, Any]:
        state: dict[str, Any] = {"exitCode": code, "reason": reason,
                                 "startedAt": self._container_started or now_rfc3339(),
                                 "finishedAt": now_rfc3339(), "containerID": self._container_id}
        if message:
            state["message"] = message[:1024]
        return {"terminated": state}

    def _write(self, state: dict[str, Any], *, ready: bool, phase: str = "Running",
               last_state: dict[str, Any] | None = None) -> None:
        ctx = self._context
        try:
            pod = ctx.store.get("pods", ctx.namespace, self.name)
        except ApiError:
            return
        before = pod.get("status") or {}
        if last_state is None:  # keep the previous termination, as the kubelet does
            previous = (before.get("containerStatuses") or [{}])[0]
            last_state = previous.get("lastState") or {}
        status = pod_status(
            phase=phase, state=state, ready=ready, restarts=self.restarts,
            last_state=last_state, pod_ip=self._pod_ip if phase != "Pending" else "",
            start_time=self._started_at, container_id=self._container_id)
        # A condition whose status did not change keeps its transition time.
        was = {c.get("type"): c for c in before.get("conditions") or []}
        for condition in status["conditions"]:
            old = was.get(condition["type"])
            if old is not None and old.get("status") == condition["status"]:
                condition["lastTransitionTime"] = old.get("lastTransitionTime")
        pod["status"] = status
        with contextlib.suppress(ApiError):
            ctx.store.update("pods", ctx.namespace, self.name, pod, subresource="status")


def _go_duration(seconds: float) -> str:
    """``time.Duration.String`` for the kubelet's back-off steps: 50ms, 10s, 2m40s."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    waiting: dict[str, Any] = {"reason": reason}
    if message:
        waiting["message"] = message
    return {"waiting": waiting}


def pod_status(*, phase: str, state: dict[str, Any], ready: bool, restarts: int,
               last_state: dict[str, Any], pod_ip: str, start_time: str,
               container_id: str) -> dict[str, Any]:
    """A Pod's status as the kubelet writes it (one container, no init containers)."""
    now = now_rfc3339()
    running = "running" in state
    unready = {"reason": "ContainersNotReady",
               "message": f"containers with unready status: [{CONTAINER_NAME}]"}
    conditions = [
        {"type": "PodReadyToStartContainers", "status": "True" if pod_ip else "False"},
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "True" if ready else "False", **({} if ready else unready)},
        {"type": "ContainersReady", "status": "True" if ready else "False",
         **({} if ready else unready)},
        {"type": "PodScheduled", "status": "True"},
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME, "image": IMAGE, "imageID": IMAGE_ID if container_id else "",
        "ready": ready, "started": running, "restartCount": restarts, "state": state,
        "lastState": last_state,
    }
    if container_id:
        container["containerID"] = container_id
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": [{**c, "lastProbeTime": None, "lastTransitionTime": now}
                       for c in conditions],
        "hostIP": HOST_IP, "hostIPs": [{"ip": HOST_IP}],
        "startTime": start_time, "qosClass": "BestEffort",
        "containerStatuses": [container],
    }
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status
