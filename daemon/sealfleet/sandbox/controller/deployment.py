"""The deployment controller for the controller's one Deployment: ReplicaSets and status.

``sync`` is one ``syncDeployment``: find or make the ReplicaSet of the current pod
template, scale it and the old ones as the strategy allows (``rollout`` has the
arithmetic), record a ScalingReplicaSet Event per change, and write the Deployment's
status when it changed.  The ReplicaSets are kept here, not served as objects; the
workload's ReplicaSet controller makes their Pods.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
from collections.abc import Mapping
from typing import Any

from sealfleet.sandbox.controller import events, manifests, rollout
from sealfleet.sandbox.controller.rollout import ReplicaCounts, ReplicaSet
from sealfleet.sandbox.objects import ApiError, ObjectStore

_TERMINAL = ("Succeeded", "Failed")


class DeploymentController:
    """ReplicaSets and status of the Deployment ``namespace/name``."""

    def __init__(self, store: ObjectStore, namespace: str, name: str) -> None:
        self.store = store
        self.namespace = namespace
        self.name = name
        self.replica_sets: dict[str, ReplicaSet] = {}  # by pod-template-hash
        self._owner_uid: str | None = None
        self._created = 0
        self._events = events.EventRecorder(store, component="deployment-controller")

    def sync(self, deployment: dict[str, Any], pods: list[dict[str, Any]],
             now: dt.datetime) -> None:
        """One ``syncDeployment`` of ``deployment``, whose Pods are ``pods``."""
        if deployment["metadata"]["uid"] != self._owner_uid:
            # A new Deployment (the old one's Pods went with it): a fresh history.
            self.replica_sets.clear()
            self._owner_uid = deployment["metadata"]["uid"]
        counts = counter(pods)
        scales = {rs.pod_hash: rs.replicas for rs in self.replica_sets.values()}
        if rollout.is_rolling(deployment):
            new_rs, status = self._rolling(deployment, counts, now)
        else:
            new_rs, status = self._recreate(deployment, counts, now)
        self._record_scaling(deployment, scales)
        self._write_status(status)
        self._trim_history(deployment, new_rs, pods)

    def forget(self) -> None:
        """The Deployment is gone."""
        self.replica_sets.clear()
        self._owner_uid = None

    def _rolling(self, deployment: dict[str, Any], counts: rollout.Counter,
                 now: dt.datetime) -> tuple[ReplicaSet | None, dict[str, Any]]:
        """``rolloutRolling``: scale the new ReplicaSet up, else the old ones down."""
        new_rs, deployment = self._new_replica_set(deployment, now, create=True)
        assert new_rs is not None
        all_rs = list(self.replica_sets.values())
        old_rs = [rs for rs in all_rs if rs is not new_rs]
        desired = rollout.desired_replicas(deployment)
        scaled = False
        if new_rs.replicas > desired:
            new_rs.replicas, scaled = desired, True
        elif new_rs.replicas < desired:
            wanted = rollout.new_rs_new_replicas(deployment, all_rs, new_rs)
            new_rs.replicas, scaled = wanted, wanted != new_rs.replicas
        if not scaled:
            rollout.scale_down_old(deployment, all_rs, old_rs, new_rs, counts)
        return new_rs, rollout.rollout_status(deployment, all_rs, new_rs, counts, now)

    def _recreate(self, deployment: dict[str, Any], counts: rollout.Counter,
                  now: dt.datetime) -> tuple[ReplicaSet | None, dict[str, Any]]:
        """``rolloutRecreate``: every old Pod gone before the new ReplicaSet scales up."""
        new_rs, deployment = self._new_replica_set(deployment, now, create=False)
        old_rs = [rs for rs in self.replica_sets.values() if rs is not new_rs]
        scaled_down = any(rs.replicas for rs in old_rs)
        for rs in old_rs:
            rs.replicas = 0
        old_running = any(counts(rs).replicas or counts(rs).terminating for rs in old_rs)
        if not scaled_down and not old_running:
            if new_rs is None:
                new_rs, deployment = self._new_replica_set(deployment, now, create=True)
                assert new_rs is not None
            new_rs.replicas = rollout.desired_replicas(deployment)
        all_rs = list(self.replica_sets.values())
        return new_rs, rollout.rollout_status(deployment, all_rs, new_rs, counts, now)

    def _new_replica_set(self, deployment: dict[str, Any], now: dt.datetime, *,
                         create: bool) -> tuple[ReplicaSet | None, dict[str, Any]]:
        """``getNewReplicaSet``: the ReplicaSet of the current template, found or made;
        and the Deployment as it is after the Progressing note that may go with it."""
        template = deployment["spec"]["template"]
        pod_hash = manifests.template_hash(template)
        top = max((rs.revision for rs in self.replica_sets.values()), default=0)
        rs = self.replica_sets.get(pod_hash)
        status = copy.deepcopy(deployment.get("status") or {})
        has_deadline = rollout.progress_deadline(deployment) is not None
        if rs is not None:
            if rs.revision < top:
                rs.revision = top + 1  # back to an older template: that ReplicaSet again
            if has_deadline and rollout.get_condition(status, rollout.PROGRESSING) is None:
                rollout.set_condition(status, rollout.new_condition(
                    rollout.PROGRESSING, "True", rollout.FOUND_NEW_RS,
                    f'Found new replica set "{rs.name}"', now))
                deployment = self._write_status(status) or deployment
            return rs, deployment
        if not create:
            return None, deployment
        self._created += 1
        rs = ReplicaSet(f"{self.name}-{pod_hash}", pod_hash, copy.deepcopy(template),
                        top + 1, 0, self._created)
        rs.replicas = rollout.new_rs_new_replicas(
            deployment, list(self.replica_sets.values()), rs)
        self.replica_sets[pod_hash] = rs
        if has_deadline:
            rollout.set_condition(status, rollout.new_condition(
                rollout.PROGRESSING, "True", rollout.NEW_RS_CREATED,
                f'Created new replica set "{rs.name}"', now))
            deployment = self._write_status(status) or deployment
        return rs, deployment

    def _record_scaling(self, deployment: dict[str, Any], before: dict[str, int]) -> None:
        """``scaleReplicaSetAndRecordEvent``: a ScalingReplicaSet Event per change."""
        for rs in self.replica_sets.values():
            was = before.get(rs.pod_hash, 0)
            if rs.replicas != was:
                way = "up" if rs.replicas > was else "down"
                self._events.record(deployment, events.NORMAL, "ScalingReplicaSet",
                                    f"Scaled {way} replica set {rs.name} from {was} to "
                                    f"{rs.replicas}")

    def _trim_history(self, deployment: Mapping[str, Any], new_rs: ReplicaSet | None,
                      pods: list[dict[str, Any]]) -> None:
        """``cleanupDeployment``: keep ``revisionHistoryLimit`` idle old ReplicaSets."""
        limit = int((deployment.get("spec") or {}).get("revisionHistoryLimit", 10))
        in_use = {pod_hash(p) for p in pods}
        idle = sorted((rs for rs in self.replica_sets.values()
                       if rs is not new_rs and rs.replicas == 0 and rs.pod_hash not in in_use),
                      key=lambda rs: rs.order)
        for rs in idle[: max(len(idle) - limit, 0)]:
            del self.replica_sets[rs.pod_hash]

    # ------------------------------------------------------------ reading/writing

    def _deployment(self) -> dict[str, Any] | None:
        try:
            return self.store.get("deployments.apps", self.namespace, self.name)
        except ApiError:
            return None

    def _write_status(self, status: dict[str, Any]) -> dict[str, Any] | None:
        """Write the Deployment's status if it changed; the Deployment afterwards."""
        deployment = self._deployment()
        if deployment is None:
            return None
        if (deployment.get("status") or {}) == status:
            return deployment
        deployment["status"] = status
        with contextlib.suppress(ApiError):
            return self.store.update("deployments.apps", self.namespace, self.name,
                                     deployment, subresource="status")
        return None


def pod_hash(pod: Mapping[str, Any]) -> str:
    return str((pod["metadata"].get("labels") or {}).get(manifests.POD_TEMPLATE_HASH, ""))


def active(pod: Mapping[str, Any]) -> bool:
    """``FilterActivePods``: neither being deleted nor finished."""
    return (not pod["metadata"].get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") not in _TERMINAL)


def ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def counter(pods: list[dict[str, Any]]) -> rollout.Counter:
    """ReplicaSet status from the Pods: what each ReplicaSet's controller reports."""
    def count(rs: ReplicaSet) -> ReplicaCounts:
        own = [p for p in pods if pod_hash(p) == rs.pod_hash]
        live = [p for p in own if active(p)]
        serving = sum(1 for p in live if ready(p))
        terminating = sum(1 for p in own if p["metadata"].get("deletionTimestamp")
                          and (p.get("status") or {}).get("phase") not in _TERMINAL)
        # Available = ready: minReadySeconds is 0 in the install (and not emulated).
        return ReplicaCounts(len(live), serving, serving, terminating)

    return count
