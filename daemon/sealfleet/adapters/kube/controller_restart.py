"""Restarting the sealed-secrets controller so it loads its key Secrets, and waiting for it.

The controller reads its keys at start only (``--watch-for-secrets`` adds new ones,
nothing more), so a key sync that changed what it should load ends with a restart:

- ``rollout``: what ``kubectl rollout restart`` does, a strategic-merge patch of the pod
  template's annotations (``kubectl.kubernetes.io/restartedAt``, plus
  ``sealfleet.io/restart-job`` = the job id).  The Deployment rolls its Pods with its
  own strategy, so the old controller serves until the new one is ready;
- ``delete-pods``: delete the Deployment's Pods (their ReplicaSet makes new ones).  For
  clusters whose Deployment is reconciled by Flux or Argo CD, which would revert a
  template edit (and roll the Pods back).  The Deployment's own annotation
  ``sealfleet.io/restart-job`` records that the job did it;
- ``none``: nothing.

Both are idempotent per job: a job that restarts again after an interruption finds its
id already recorded and does not restart a second time.

:func:`wait_until_serving` then polls, with the retry helper's pace and never past its
timeout, until the controller serves the expected certificate from a finished rollout
without crash-looping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Collection
from typing import Any

import structlog

from sealfleet.adapters import retry
from sealfleet.adapters.kube import controller, rollout_status
from sealfleet.adapters.kube.client import Conflict, KubeClient, NotFound, PatchType
from sealfleet.domain.planning.key_sync import RestartMode
from sealfleet.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTART_JOB = "sealfleet.io/restart-job"
RESTARTED_AT_SEALFLEET = "sealfleet.io/restarted-at"
# Polling pace while a controller restarts: a Pod starts in seconds, a real one pulls its
# image in tens of seconds; checking every few seconds is cheap for the apiserver.
# A new Pod is usually serving within seconds: look often, never more than a second apart
# (measured in bench/keys.py: a 0.5 s start doubling to 5 s added seconds per cluster).
DEFAULT_POLL = retry.BackoffPolicy(initial=0.2, cap=1.0)
# A settled rollout serving another key this long has chosen it (a Secret watch, with
# --watch-for-secrets, picks a new key up within a second or two).
SETTLE_SECONDS = 15.0


@dataclasses.dataclass(frozen=True)
class RestartOutcome:
    mode: RestartMode
    restarted: bool                  # False: mode none, or this job had already done it
    replaced_pods: tuple[str, ...]   # Pods that were running and are to be replaced
    generation: int | None           # the Deployment's generation after the restart


@dataclasses.dataclass(frozen=True)
class ServingResult:
    serving: bool                    # the expected key, a finished rollout, no crash loop
    served_fingerprint: str | None   # what /v1/cert.pem last served from finished Pods
    rollout_complete: bool
    crash_loop: bool
    reason: str                      # "serving", or what was still wrong at the end


def _now_rfc3339(now: dt.datetime | None) -> str:
    return (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


async def restart_controller(client: KubeClient, namespace: str, name: str, *,
                             mode: RestartMode, job_id: str,
                             now: dt.datetime | None = None) -> RestartOutcome:
    """Restart the controller's Deployment *name* the *mode* way, once per *job_id*."""
    if mode is RestartMode.NONE:
        return RestartOutcome(mode, False, (), None)
    path = controller.deployment_path(namespace, name)
    deployment = await client.get_json(path)
    if mode is RestartMode.ROLLOUT:
        template = (deployment.get("spec") or {}).get("template") or {}
        if ((template.get("metadata") or {}).get("annotations") or {}).get(
                RESTART_JOB) == job_id:
            return RestartOutcome(mode, False, (), _generation(deployment))
        pods = await _pods(client, namespace, deployment)
        # No resourceVersion precondition: the status changes all the time, and an
        # annotation patch on top of someone else's edit is what kubectl does too.
        patched = await client.patch_json(path, {"spec": {"template": {"metadata": {
            "annotations": {RESTARTED_AT: _now_rfc3339(now), RESTART_JOB: job_id}}}}},
            patch_type=PatchType.STRATEGIC)
        log.info("controller_restarted", namespace=namespace, deployment=name, mode=str(mode),
                 job_id=job_id)
        return RestartOutcome(mode, True, tuple(p.name for p in pods), _generation(patched))
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    if annotations.get(RESTART_JOB) == job_id:
        return RestartOutcome(mode, False, (), _generation(deployment))
    pods = await _pods(client, namespace, deployment)
    for pod in pods:
        # Already gone, or a Pod of that name now is another one: nothing to delete.
        with contextlib.suppress(NotFound, Conflict):
            await client.delete(f"{pods_path(namespace)}/{pod.name}", uid=pod.uid)
    # Recorded after the deletions: interrupted in between, the job deletes the new
    # Pods once more (a second restart) rather than never restarting at all.
    patched = await client.patch_json(path, {"metadata": {"annotations": {
        RESTART_JOB: job_id, RESTARTED_AT_SEALFLEET: _now_rfc3339(now)}}},
        patch_type=PatchType.MERGE)
    log.info("controller_restarted", namespace=namespace, deployment=name, mode=str(mode),
             job_id=job_id, pods=len(pods))
    return RestartOutcome(mode, True, tuple(p.name for p in pods), _generation(patched))


# The timeout is a parameter, not the caller's asyncio.timeout: running out of time is a
# result here (what was still wrong), not a cancellation.
async def wait_until_serving(client: KubeClient, namespace: str, name: str, fingerprint: str,
                             timeout: float,  # noqa: ASYNC109
                             *, replaced_pods: Collection[str] = (),
                             service: str | None = None,
                             policy: retry.BackoffPolicy = DEFAULT_POLL,
                             settle: float = SETTLE_SECONDS) -> ServingResult:
    """Poll until the controller serves *fingerprint* from a finished, healthy rollout.

    Done when ``/v1/cert.pem`` (through the Service *service*, default *name*) names
    *fingerprint* and the rollout is complete (see :mod:`rollout_status`) before and
    after that request with the same Pods, so the answer came from a new Pod.  A crash
    loop of a live Pod (other than *replaced_pods*) ends the wait at once.  Never waits
    past *timeout* seconds; the result then says what was still wrong.  Transient
    errors (503 while no Pod is ready, timeouts) are polled through; a permanent one
    (no Deployment, no Service, 403) is raised.

    A finished rollout whose Pods keep serving another key for *settle* seconds ends the
    wait too: the controller chose that key when it started (its own renewal: a
    ``--key-renew-period`` whose newest key was older than the period makes a key at
    once), and waiting on would only end in the timeout.  The result names what it serves.
    """
    watch = _Watch(client, namespace, name, fingerprint, service or name, replaced_pods,
                   settle=settle)
    backoff = retry.Backoff(policy)
    try:
        async with asyncio.timeout(timeout):
            while True:
                retry_after: float | None = None
                try:
                    result = await watch.poll()
                except TransientError as error:
                    watch.error = str(error)
                    retry_after = error.retry_after
                else:
                    if result is not None:
                        return result
                await asyncio.sleep(backoff.next_delay(retry_after))
    except TimeoutError:
        return watch.result(False, f"timed out after {timeout:g}s: {watch.reason}")


class _Watch:
    """The state of one wait: what was seen so far."""

    def __init__(self, client: KubeClient, namespace: str, name: str, fingerprint: str,
                 service: str, replaced: Collection[str], *, settle: float) -> None:
        self._client, self._namespace, self._name = client, namespace, name
        self._settle = settle
        # When a finished rollout was first seen serving another key, and its Pods.
        self._other_since: tuple[float, frozenset[tuple[str, str]]] | None = None
        self._fingerprint, self._service = fingerprint, service
        self._replaced = frozenset(replaced)
        self._proxy: str | None = None
        self._baseline: dict[str, int] | None = None
        self.served: str | None = None
        self.complete = False
        self.crash = False
        self.error: str | None = None  # the last poll's transient error
        self._rollout_reason = "not polled yet"
        self._serve_reason = "/v1/cert.pem not asked yet"

    @property
    def reason(self) -> str:
        """What was wrong at the last look (a poll cut short by the timeout keeps the
        findings of the one before)."""
        if self.error is not None:
            return self.error
        return self._serve_reason if self.complete else self._rollout_reason

    def result(self, serving: bool, reason: str) -> ServingResult:
        return ServingResult(serving, self.served, self.complete, self.crash, reason)

    async def poll(self) -> ServingResult | None:
        """One look; a final result, or None to look again later."""
        self.error = None
        before = await self._rollout()
        if before is None or not before.complete:
            return self._final(before)
        if self._proxy is None:
            self._proxy = await controller.proxy_name(self._client, self._namespace,
                                                      self._service)
        certificate = await controller.fetch_certificate(self._client, self._namespace,
                                                         self._proxy)
        after = await self._rollout()
        if after is None or not after.complete or after.live_pods != before.live_pods:
            self.complete = False
            return self._final(after)
        self.served = certificate.fingerprint
        if self.served != self._fingerprint:
            self._serve_reason = f"serving {self.served}, not {self._fingerprint}"
            pods, now = after.live_pods, time.monotonic()
            if self._other_since is None or self._other_since[1] != pods:
                self._other_since = (now, pods)
            elif now - self._other_since[0] >= self._settle:
                return self.result(False, (
                    f"{self._serve_reason} for {self._settle:g}s after the rollout "
                    "finished: the controller chose another key at start (its own "
                    "renewal: --key-renew-period) or loaded a newer active key"))
            return None
        return self.result(True, "serving")

    def _final(self, state: rollout_status.RolloutState | None) -> ServingResult | None:
        if state is None:  # a crash loop
            return self.result(False, self.reason)
        if state.failed:
            return self.result(False, state.reason)
        return None

    async def _rollout(self) -> rollout_status.RolloutState | None:
        """The rollout's state (None: a Pod crash-loops; the reason says which)."""
        deployment = await self._client.get_json(
            controller.deployment_path(self._namespace, self._name))
        pods = await _pods(self._client, self._namespace, deployment)
        if self._baseline is None:
            # After a restart every Pod but the replaced ones is new: all its restarts
            # count.  Without one, restarts from before the wait are history.
            self._baseline = {} if self._replaced else {p.name: p.restarts for p in pods}
        crash = rollout_status.crash_loop(pods, self._baseline, replaced=self._replaced)
        if crash is not None:
            self.crash, self.complete, self._rollout_reason = True, False, crash
            return None
        state = rollout_status.rollout_state(deployment, pods, replaced=self._replaced)
        self.complete = state.complete
        if not state.complete:
            self._rollout_reason = state.reason
        return state


async def _pods(client: KubeClient, namespace: str,
                deployment: dict[str, Any]) -> list[rollout_status.PodState]:
    selector = (deployment.get("spec") or {}).get("selector") or {}
    try:
        query = rollout_status.label_selector(selector)
    except ValueError as exc:
        name = (deployment.get("metadata") or {}).get("name")
        raise PermanentError(f"deployment {namespace}/{name}: selector: {exc}") from None
    pods: list[rollout_status.PodState] = []
    async for page in client.list_pages(pods_path(namespace), label_selector=query):
        pods += [rollout_status.pod_state(item) for item in page.items]
    return pods


def _generation(deployment: dict[str, Any]) -> int | None:
    value = (deployment.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) else None
