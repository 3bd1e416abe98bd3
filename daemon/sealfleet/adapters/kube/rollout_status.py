"""Is a Deployment's rollout finished, and are its Pods healthy?  Read from the objects.

``kubectl rollout status`` decides "complete" from the Deployment's status alone
(observedGeneration caught up, every replica updated and available, no old replica
left).  That status is counted from ReplicaSets and lags the Pods, and a Pod being
deleted (``deletionTimestamp``) no longer serves but may still be counted, so the Pods
are checked too: the live ones (not terminating) all come from one template
(``pod-template-hash``), are Ready, are as many as the Deployment wants, and none of
them is one that had to be replaced.  Only then can an answer through the Service come
from nowhere but the new Pods.

A crash loop shows on the Pods: a container waiting in ``CrashLoopBackOff``, or a
``restartCount`` above what it was first seen with.

Pure functions over the JSON objects; :mod:`controller_restart` fetches them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from typing import Any

POD_TEMPLATE_HASH = "pod-template-hash"
CRASH_LOOP = "CrashLoopBackOff"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


@dataclasses.dataclass(frozen=True)
class PodState:
    name: str
    uid: str
    template_hash: str
    ready: bool
    terminating: bool
    restarts: int
    waiting_reason: str | None


@dataclasses.dataclass(frozen=True)
class RolloutState:
    complete: bool
    reason: str                       # what is still awaited ("complete" when done)
    failed: bool                      # the rollout gave up (progress deadline exceeded)
    live_pods: frozenset[tuple[str, str]]  # (name, uid) of the Pods that may serve


def label_selector(selector: Mapping[str, Any]) -> str:
    """A ``LabelSelector`` object as the query string (``matchLabels`` and
    ``matchExpressions`` with In, NotIn, Exists, DoesNotExist)."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(sorted(str(v) for v in expression.get("values") or []))
        if operator == "In":
            parts.append(f"{key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif operator == "Exists":
            parts.append(str(key))
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(f"unknown selector operator {operator!r}")
    if not parts:
        raise ValueError("empty selector (it would select every Pod)")
    return ",".join(parts)


def pod_state(pod: Mapping[str, Any]) -> PodState:
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or [])
    restarts, waiting = 0, None
    for container in status.get("containerStatuses") or []:
        restarts += _int(container.get("restartCount"))
        reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
        if reason and waiting != CRASH_LOOP:
            waiting = str(reason)
    return PodState(name=str(metadata.get("name") or ""), uid=str(metadata.get("uid") or ""),
                    template_hash=str((metadata.get("labels") or {}).get(POD_TEMPLATE_HASH)
                                      or ""),
                    ready=ready, terminating=bool(metadata.get("deletionTimestamp")),
                    restarts=restarts, waiting_reason=waiting)


def rollout_state(deployment: Mapping[str, Any], pods: Sequence[PodState], *,
                  replaced: Collection[str] = ()) -> RolloutState:
    """Is the rollout of *deployment* done, with only new, ready Pods serving?

    *replaced*: names of Pods a restart meant to replace; while one of them is live the
    rollout is not done, whatever the status says.
    """
    metadata = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    live = [p for p in pods if not p.terminating]
    ids = frozenset((p.name, p.uid) for p in live)

    def waiting(reason: str, failed: bool = False) -> RolloutState:
        return RolloutState(False, reason, failed, ids)

    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and \
                condition.get("reason") == PROGRESS_DEADLINE_EXCEEDED:
            return waiting(f"deployment {metadata.get('name')} exceeded its progress deadline",
                           failed=True)
    wanted = _int(spec.get("replicas"), 1)
    generation, observed = _int(metadata.get("generation")), _int(
        status.get("observedGeneration"))
    updated, total = _int(status.get("updatedReplicas")), _int(status.get("replicas"))
    available = _int(status.get("availableReplicas"))
    if observed < generation:
        return waiting("waiting for the deployment spec update to be observed")
    if wanted == 0:
        return waiting("the deployment is scaled to zero replicas")
    if updated < wanted:
        return waiting(f"{updated} of {wanted} replicas updated")
    if total > updated:
        return waiting(f"{total - updated} old replicas pending termination")
    if available < updated:
        return waiting(f"{available} of {updated} updated replicas available")
    still = sorted(p.name for p in live if p.name in replaced)
    if still:
        return waiting(f"pod {still[0]} is still running")
    if len({p.template_hash for p in live}) > 1:
        return waiting("pods of more than one template are running")
    if len(live) != wanted:
        return waiting(f"{len(live)} of {wanted} pods running")
    unready = sorted(p.name for p in live if not p.ready)
    if unready:
        return waiting(f"pod {unready[0]} is not ready")
    return RolloutState(True, "complete", False, ids)


def crash_loop(pods: Sequence[PodState], baseline: Mapping[str, int], *,
               replaced: Collection[str] = ()) -> str | None:
    """Why a live Pod (not one being replaced) is crash-looping, or None.

    *baseline*: each Pod's restart count when first seen (a Pod first seen later starts
    from zero: every restart it has is new).
    """
    for pod in pods:
        if pod.terminating or pod.name in replaced:
            continue
        if pod.waiting_reason == CRASH_LOOP:
            return f"pod {pod.name} is in {CRASH_LOOP} ({pod.restarts} restarts)"
        if pod.restarts > baseline.get(pod.name, 0):
            return f"pod {pod.name} restarted ({pod.restarts} restarts)"
    return None


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
