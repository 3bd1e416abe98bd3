"""When a controller rollout counts as done, read from Deployment and Pod objects as a
real cluster writes them (the deployment controller's status lags the Pods)."""

from __future__ import annotations

from typing import Any

import pytest

from sealfleet.adapters.kube.rollout_status import (
    PodState,
    crash_loop,
    label_selector,
    pod_state,
    rollout_state,
)


def deployment(*, generation: int = 2, observed: int = 2, replicas: int = 1,
               status_replicas: int = 1, updated: int = 1, available: int = 1,
               progressing: str = "NewReplicaSetAvailable") -> dict[str, Any]:
    return {"metadata": {"name": "d", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": status_replicas,
                       "updatedReplicas": updated, "availableReplicas": available,
                       "conditions": [{"type": "Progressing", "status": "True",
                                       "reason": progressing}]}}


def pod(name: str, template_hash: str = "new", *, ready: bool = True, deleting: bool = False,
        restarts: int = 0, waiting: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "uid": f"uid-{name}",
                                "labels": {"pod-template-hash": template_hash}}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:30Z"
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {"metadata": metadata, "status": {
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [{"name": "c", "restartCount": restarts, "state": state}]}}


def pods(*objects: dict[str, Any]) -> list[PodState]:
    return [pod_state(o) for o in objects]


def test_selectors_become_query_strings() -> None:
    assert label_selector({"matchLabels": {"name": "x", "app": "y"}}) == "app=y,name=x"
    assert label_selector({"matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["b", "a"]},
        {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "managed", "operator": "Exists"},
        {"key": "legacy", "operator": "DoesNotExist"}]}) == \
        "tier in (a,b),env notin (dev),managed,!legacy"
    with pytest.raises(ValueError, match="empty"):
        label_selector({})


def test_a_finished_rollout_with_one_ready_new_pod_is_complete() -> None:
    state = rollout_state(deployment(), pods(pod("new-1"), pod("old-1", "old", deleting=True)),
                          replaced=["old-1"])
    assert state.complete
    assert state.live_pods == frozenset({("new-1", "uid-new-1")})


@pytest.mark.parametrize(("objects", "kwargs", "awaited"), [
    ((pod("old-1", "old"),), {"observed": 1}, "spec update to be observed"),
    ((pod("old-1", "old"), pod("new-1", ready=False)), {"updated": 0, "status_replicas": 1},
     "0 of 1 replicas updated"),
    ((pod("old-1", "old"), pod("new-1")), {"status_replicas": 2}, "old replicas pending"),
    ((pod("new-1", ready=False),), {"available": 0}, "0 of 1 updated replicas available"),
    ((pod("old-1", "old"), pod("new-1")), {}, "pod old-1 is still running"),
    ((pod("a-1", "a"), pod("b-1", "b")), {"replicas": 2, "status_replicas": 2, "updated": 2,
                                          "available": 2}, "more than one template"),
    ((), {}, "0 of 1 pods running"),
    ((pod("new-1", ready=False),), {}, "pod new-1 is not ready"),
    ((pod("new-1"),), {"replicas": 0}, "scaled to zero"),
])
def test_what_an_unfinished_rollout_is_waiting_for(objects: tuple[dict[str, Any], ...],
                                                   kwargs: dict[str, int], awaited: str) -> None:
    """The status can say "done" while the Pods do not, and the other way round."""
    state = rollout_state(deployment(**kwargs), pods(*objects), replaced=["old-1"])
    assert not state.complete
    assert not state.failed
    assert awaited in state.reason


def test_an_exceeded_progress_deadline_is_a_failed_rollout() -> None:
    state = rollout_state(deployment(progressing="ProgressDeadlineExceeded"), pods(pod("n")))
    assert state.failed
    assert not state.complete


def test_crash_loops_count_on_live_pods_that_are_not_being_replaced() -> None:
    looping = pods(pod("new-1", ready=False, restarts=3, waiting="CrashLoopBackOff"))
    assert "CrashLoopBackOff" in str(crash_loop(looping, {}))
    restarted = pods(pod("new-1", restarts=1))
    assert "restarted" in str(crash_loop(restarted, {}))
    assert crash_loop(restarted, {"new-1": 1}) is None  # restarts from before the wait
    old = pods(pod("old-1", "old", restarts=5, waiting="CrashLoopBackOff"),
               pod("gone-1", restarts=5, waiting="CrashLoopBackOff", deleting=True))
    assert crash_loop(old, {}, replaced=["old-1"]) is None
    starting = pods(pod("new-1", ready=False, waiting="ContainerCreating"))
    assert crash_loop(starting, {}) is None
