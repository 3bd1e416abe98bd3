"""Kubernetes Events as the controller's client-go recorder writes them.

Source component ``sealed-secrets`` (``deployment-controller`` for the Deployment's
ScalingReplicaSet Events); the name is ``<object>.<hex nanoseconds>``; a repeat of the
same (object, type, reason, message) within ten minutes bumps ``count`` and
``lastTimestamp`` of the existing Event instead of creating another, as client-go's
event correlator does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from sealfleet.sandbox.objects import ApiError, ObjectStore, now_rfc3339

COMPONENT = "sealed-secrets"
NORMAL = "Normal"
WARNING = "Warning"
REASON_UNSEALED = "Unsealed"
REASON_UNSEAL_FAILED = "ErrUnsealFailed"
REASON_UPDATE_FAILED = "ErrUpdateFailed"
MESSAGE_UNSEALED = "SealedSecret unsealed successfully"
_AGGREGATION_WINDOW_SECONDS = 600.0


class EventRecorder:
    """Records Events about SealedSecrets into one cluster's object store."""

    def __init__(self, store: ObjectStore, component: str = COMPONENT) -> None:
        self._store = store
        self._component = component
        # (namespace, uid, type, reason, message) -> (event name, count, first seen)
        self._recent: dict[tuple[str, str, str, str, str], tuple[str, int, float]] = {}

    def record(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        metadata = involved.get("metadata") or {}
        namespace = str(metadata.get("namespace") or "default")
        uid = str(metadata.get("uid", ""))
        key = (namespace, uid, event_type, reason, message)
        now_wall = time.time()
        timestamp = now_rfc3339()
        previous = self._recent.get(key)
        if previous is not None and now_wall - previous[2] < _AGGREGATION_WINDOW_SECONDS:
            name, count, first = previous
            try:
                event = self._store.get("events", namespace, name)
                event["count"] = count + 1
                event["lastTimestamp"] = timestamp
                self._store.update("events", namespace, name, event)
                self._recent[key] = (name, count + 1, first)
                return
            except ApiError:
                pass  # deleted meanwhile: record a fresh one
        name = f"{metadata.get('name', 'unknown')}.{time.time_ns():x}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "kind": involved.get("kind", "SealedSecret"),
                "namespace": namespace,
                "name": metadata.get("name"),
                "uid": uid,
                "apiVersion": involved.get("apiVersion", "bitnami.com/v1alpha1"),
                "resourceVersion": metadata.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "source": {"component": self._component},
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
            "type": event_type,
            "eventTime": None,
            "reportingComponent": self._component,
            "reportingInstance": "",
        }
        try:
            self._store.create("events", namespace, event)
        except ApiError:
            return  # the namespace is being deleted; the recorder drops events too
        self._recent[key] = (name, 1, now_wall)
        if len(self._recent) > 10_000:  # bounded like client-go's LRU cache
            self._recent.pop(next(iter(self._recent)))
