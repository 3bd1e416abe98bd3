"""The deployment controller's arithmetic, as ``pkg/controller/deployment`` does it.

Pure functions over the Deployment object and an in-memory view of its ReplicaSets
(the sandbox serves no ReplicaSet objects; their names, hashes, revisions and replica
counts live here).  What they reproduce, from ``rolling.go``, ``recreate.go``,
``progress.go``, ``sync.go`` and ``util/deployment_util.go``:

- ``maxSurge`` rounds up and ``maxUnavailable`` rounds down (``ResolveFenceposts``), so
  one replica with the default 25 %/25 % surges to two pods and never drops below one;
- a new ReplicaSet is scaled up only within ``replicas + maxSurge`` (counting the old
  ReplicaSets' *desired* replicas), old ones are scaled down only once the new pods are
  available, unhealthy old replicas first;
- the status is counted from the ReplicaSets' *status* (pods), which lags their spec:
  ``replicas`` is 2 during a surge, ``unavailableReplicas`` counts desired minus
  available, ``terminatingReplicas`` the pods being deleted (beta, on since 1.35);
- ``Progressing`` moves NewReplicaSetCreated -> ReplicaSetUpdated (on any progress:
  more updated, ready or available pods, fewer old ones) -> NewReplicaSetAvailable, or
  to False/ProgressDeadlineExceeded when no progress was seen for
  ``progressDeadlineSeconds`` (checked again a second after the deadline, as
  ``requeueStuckDeployment`` does); ``Available`` follows ``replicas - maxUnavailable``.

Simplified away: ``minReadySeconds`` (available = ready), pausing, rollback
annotations, the ``deployment.kubernetes.io/revision`` annotation (the sandbox's
status subresource writes status only), proportional scaling of several active
ReplicaSets.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

PROGRESSING = "Progressing"
AVAILABLE = "Available"
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
MIN_AVAILABLE = "MinimumReplicasAvailable"
MIN_UNAVAILABLE = "MinimumReplicasUnavailable"
_NO_DEADLINE = 2**31 - 1  # math.MaxInt32: "no progress deadline"


@dataclasses.dataclass
class ReplicaSet:
    """One ReplicaSet of the Deployment: its template and desired replicas."""

    name: str
    pod_hash: str
    template: dict[str, Any]
    revision: int
    replicas: int  # spec.replicas
    order: int  # creation order, for ReplicaSetsByCreationTimestamp


@dataclasses.dataclass(frozen=True)
class ReplicaCounts:
    """A ReplicaSet's status, as its controller counts the pods it owns."""

    replicas: int = 0  # active: not being deleted
    ready: int = 0
    available: int = 0
    terminating: int = 0


Counter = Callable[[ReplicaSet], ReplicaCounts]


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return None


# ------------------------------------------------------------------ spec reading


def desired_replicas(deployment: Mapping[str, Any]) -> int:
    return int((deployment.get("spec") or {}).get("replicas", 1))


def is_rolling(deployment: Mapping[str, Any]) -> bool:
    strategy = (deployment.get("spec") or {}).get("strategy") or {}
    return bool(strategy.get("type", "RollingUpdate") == "RollingUpdate")


def _scaled(value: object, total: int, round_up: bool) -> int:
    """``intstr.GetScaledValueFromIntOrPercent``."""
    if isinstance(value, str) and value.endswith("%"):
        fraction = float(value[:-1]) * total / 100
        return math.ceil(fraction) if round_up else math.floor(fraction)
    return int(str(value)) if value is not None else 0


def resolve_fenceposts(deployment: Mapping[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) in pods; both 0 would deadlock, so unavailable is 1."""
    strategy = (deployment.get("spec") or {}).get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    desired = desired_replicas(deployment)
    surge = _scaled(rolling.get("maxSurge", "25%"), desired, True)
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def max_unavailable(deployment: Mapping[str, Any]) -> int:
    desired = desired_replicas(deployment)
    if not is_rolling(deployment) or desired == 0:
        return 0
    return min(resolve_fenceposts(deployment)[1], desired)


def progress_deadline(deployment: Mapping[str, Any]) -> int | None:
    value = (deployment.get("spec") or {}).get("progressDeadlineSeconds")
    if value is None or int(value) == _NO_DEADLINE:
        return None
    return int(value)


# -------------------------------------------------------------------- scaling


def new_rs_new_replicas(deployment: Mapping[str, Any], all_rs: Sequence[ReplicaSet],
                        new_rs: ReplicaSet) -> int:
    """``NewRSNewReplicas``: how far the new ReplicaSet may grow right now."""
    desired = desired_replicas(deployment)
    if not is_rolling(deployment):
        return desired
    max_total = desired + resolve_fenceposts(deployment)[0]
    current = sum(rs.replicas for rs in all_rs)
    if current >= max_total:
        return new_rs.replicas
    return new_rs.replicas + min(max_total - current, desired - new_rs.replicas)


def scale_down_old(deployment: Mapping[str, Any], all_rs: Sequence[ReplicaSet],
                   old_rs: Sequence[ReplicaSet], new_rs: ReplicaSet, counts: Counter) -> bool:
    """``reconcileOldReplicaSets``: scale old ReplicaSets down (in place) as far as
    availability allows; True when anything was scaled."""
    old_active = sorted((rs for rs in old_rs if rs.replicas > 0), key=lambda rs: rs.order)
    if not old_active:
        return False
    min_available = desired_replicas(deployment) - max_unavailable(deployment)
    new_unavailable = new_rs.replicas - counts(new_rs).available
    budget = sum(rs.replicas for rs in all_rs) - min_available - new_unavailable
    if budget <= 0:
        return False
    scaled = 0
    # Unhealthy old replicas first: removing them costs no availability (#16737).
    for rs in old_active:
        if scaled >= budget:
            break
        unhealthy = rs.replicas - counts(rs).available
        if unhealthy > 0:
            step = min(budget - scaled, unhealthy)
            rs.replicas -= step
            scaled += step
    available = sum(counts(rs).available for rs in all_rs)
    # What may go now: available pods beyond the minimum (counted before this pass).
    allowed = available - min_available
    taken = 0
    for rs in old_active:
        if taken >= allowed:
            break
        if rs.replicas == 0:
            continue
        step = min(rs.replicas, allowed - taken)
        rs.replicas -= step
        taken += step
    return scaled + taken > 0


# --------------------------------------------------------------------- status


def get_condition(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind:
            return dict(condition)
    return None


def new_condition(kind: str, state: str, reason: str, message: str,
                  now: dt.datetime) -> dict[str, Any]:
    stamp = rfc3339(now)
    return {"type": kind, "status": state, "lastUpdateTime": stamp,
            "lastTransitionTime": stamp, "reason": reason, "message": message}


def set_condition(status: dict[str, Any], condition: dict[str, Any]) -> None:
    """``SetDeploymentCondition``: same status and reason changes nothing; the same
    status keeps its transition time; the condition moves to the end of the list."""
    current = get_condition(status, condition["type"])
    if current and current["status"] == condition["status"] \
            and current.get("reason") == condition["reason"]:
        return
    if current and current["status"] == condition["status"]:
        condition = {**condition, "lastTransitionTime": current["lastTransitionTime"]}
    remove_condition(status, condition["type"])
    status.setdefault("conditions", []).append(condition)


def remove_condition(status: dict[str, Any], kind: str) -> None:
    kept = [c for c in status.get("conditions") or [] if c.get("type") != kind]
    if kept:
        status["conditions"] = kept
    else:
        status.pop("conditions", None)


def calculate_status(deployment: Mapping[str, Any], all_rs: Sequence[ReplicaSet],
                     new_rs: ReplicaSet | None, counts: Counter,
                     now: dt.datetime) -> dict[str, Any]:
    """``calculateStatus``; zero counts are left out as Go's ``omitempty`` does."""
    old_status = deployment.get("status") or {}
    per_rs = [counts(rs) for rs in all_rs]
    available = sum(c.available for c in per_rs)
    unavailable = max(sum(rs.replicas for rs in all_rs) - available, 0)
    numbers = {
        "observedGeneration": int(deployment["metadata"].get("generation", 1)),
        "replicas": sum(c.replicas for c in per_rs),
        "updatedReplicas": counts(new_rs).replicas if new_rs is not None else 0,
        "readyReplicas": sum(c.ready for c in per_rs),
        "availableReplicas": available,
        "unavailableReplicas": unavailable,
    }
    status: dict[str, Any] = {k: v for k, v in numbers.items() if v}
    status["terminatingReplicas"] = sum(c.terminating for c in per_rs)  # *int32: 0 is sent
    if old_status.get("conditions"):
        status["conditions"] = [dict(c) for c in old_status["conditions"]]
    if "collisionCount" in old_status:
        status["collisionCount"] = old_status["collisionCount"]
    if available >= desired_replicas(deployment) - max_unavailable(deployment):
        set_condition(status, new_condition(AVAILABLE, "True", MIN_AVAILABLE,
                                            "Deployment has minimum availability.", now))
    else:
        set_condition(status, new_condition(AVAILABLE, "False", MIN_UNAVAILABLE,
                                            "Deployment does not have minimum availability.",
                                            now))
    return status


def _complete(deployment: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    desired = desired_replicas(deployment)
    return bool(status.get("updatedReplicas", 0) == desired
            and status.get("replicas", 0) == desired
            and status.get("availableReplicas", 0) == desired
            and status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1))


def _progressed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """``DeploymentProgressing``: more updated/ready/available pods, or fewer old ones."""
    def get(status: Mapping[str, Any], key: str) -> int:
        return int(status.get(key, 0))

    old_old = get(old, "replicas") - get(old, "updatedReplicas")
    new_old = get(new, "replicas") - get(new, "updatedReplicas")
    return (get(new, "updatedReplicas") > get(old, "updatedReplicas") or new_old < old_old
            or get(new, "readyReplicas") > get(old, "readyReplicas")
            or get(new, "availableReplicas") > get(old, "availableReplicas"))


def _timed_out(deployment: Mapping[str, Any], status: Mapping[str, Any],
               now: dt.datetime) -> bool:
    deadline = progress_deadline(deployment)
    condition = get_condition(status, PROGRESSING)
    if deadline is None or condition is None or condition.get("reason") == NEW_RS_AVAILABLE:
        return False
    if condition.get("reason") == TIMED_OUT:
        return True
    updated = parse_time(condition.get("lastUpdateTime"))
    return updated is not None and updated + dt.timedelta(seconds=deadline) < now


def rollout_status(deployment: Mapping[str, Any], all_rs: Sequence[ReplicaSet],
                   new_rs: ReplicaSet | None, counts: Counter,
                   now: dt.datetime) -> dict[str, Any]:
    """``syncRolloutStatus``: the counted status plus the Progressing estimate."""
    status = calculate_status(deployment, all_rs, new_rs, counts, now)
    old_status = deployment.get("status") or {}
    if progress_deadline(deployment) is None:
        remove_condition(status, PROGRESSING)
        return status
    current = get_condition(old_status, PROGRESSING)
    complete_before = (status.get("replicas", 0) == status.get("updatedReplicas", 0)
                       and current is not None and current.get("reason") == NEW_RS_AVAILABLE)
    if complete_before:
        return status  # a resync after the rollout finished: nothing to estimate
    name = f'ReplicaSet "{new_rs.name}"' if new_rs else f'Deployment "{_name(deployment)}"'
    if _complete(deployment, status):
        set_condition(status, new_condition(PROGRESSING, "True", NEW_RS_AVAILABLE,
                                            f"{name} has successfully progressed.", now))
    elif _progressed(old_status, status):
        condition = new_condition(PROGRESSING, "True", RS_UPDATED, f"{name} is progressing.", now)
        if current is not None and current.get("status") == "True":
            condition["lastTransitionTime"] = current["lastTransitionTime"]
        remove_condition(status, PROGRESSING)
        set_condition(status, condition)  # lastUpdateTime moves even with the same reason
    elif _timed_out(deployment, status, now):
        set_condition(status, new_condition(PROGRESSING, "False", TIMED_OUT,
                                            f"{name} has timed out progressing.", now))
    return status


def progress_check_in(deployment: Mapping[str, Any], now: dt.datetime) -> float | None:
    """``requeueStuckDeployment``: seconds until the deadline needs checking, or None."""
    deadline = progress_deadline(deployment)
    status = deployment.get("status") or {}
    condition = get_condition(status, PROGRESSING)
    if deadline is None or condition is None or _complete(deployment, status):
        return None
    if condition.get("reason") in (TIMED_OUT, NEW_RS_AVAILABLE):
        return None
    updated = parse_time(condition.get("lastUpdateTime"))
    if updated is None:
        return None
    after = (updated + dt.timedelta(seconds=deadline) - now).total_seconds()
    # Less than a second left: again soon (upstream: rate-limited, from 5 ms on);
    # else a second after the deadline, "to avoid milliseconds skew".
    return max(after, 0.0) + 0.05 if after < 1 else after + 1


def _name(deployment: Mapping[str, Any]) -> str:
    return str(deployment["metadata"]["name"])
