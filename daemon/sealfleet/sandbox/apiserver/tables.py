"""Server-side printing: ``meta.k8s.io/v1 Table`` responses, which ``kubectl get`` asks for.

kubectl sends ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...`` and prints the
columns the server chooses, so the columns here follow the real printers (Secrets: Name,
Type, Data, Age; SealedSecrets: the CRD's printer columns Status, Synced, Age).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any

Obj = dict[str, Any]

TABLE_CONTENT_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def wants_table(accept: str) -> bool:
    first = accept.split(",", 1)[0]
    return "as=Table" in first


def human_age(timestamp: str | None) -> str:
    """Kubernetes' short human duration: 45s, 5m12s, 3h20m, 12d, 2y."""
    if not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return "<invalid>"
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    if seconds < 0:
        seconds = 0
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h{minutes % 60}m" if hours < 8 and minutes % 60 else f"{hours}h"
    days = hours // 24
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def _col(name: str, kind: str = "string", fmt: str = "", priority: int = 0) -> Obj:
    return {"name": name, "type": kind, "format": fmt, "description": "", "priority": priority}


def _age(obj: Obj) -> str:
    return human_age(obj.get("metadata", {}).get("creationTimestamp"))


def _name(obj: Obj) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _first_condition(obj: Obj, field: str) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    if conditions and isinstance(conditions[0], dict):
        return str(conditions[0].get(field, ""))
    return ""


def _ports(obj: Obj) -> str:
    ports = (obj.get("spec") or {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _replicas(obj: Obj) -> str:
    status = obj.get("status") or {}
    return f"{status.get('readyReplicas', 0)}/{(obj.get('spec') or {}).get('replicas', 1)}"


def _pod_ready(obj: Obj) -> str:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    total = len((obj.get("spec") or {}).get("containers") or []) or len(statuses)
    return f"{ready}/{total}"


def _restarts(obj: Obj) -> int:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount", 0)) for s in statuses)


Printer = tuple[list[Obj], Callable[[Obj], list[Any]]]

_PRINTERS: dict[str, Printer] = {
    "namespaces": (
        [_col("Name", fmt="name"), _col("Status"), _col("Age")],
        lambda o: [_name(o), (o.get("status") or {}).get("phase", ""), _age(o)],
    ),
    "secrets": (
        [_col("Name", fmt="name"), _col("Type"), _col("Data", "integer"), _col("Age")],
        lambda o: [_name(o), o.get("type", "Opaque"), len(o.get("data") or {}), _age(o)],
    ),
    "services": (
        [
            _col("Name", fmt="name"),
            _col("Type"),
            _col("Cluster-IP"),
            _col("External-IP"),
            _col("Port(s)"),
            _col("Age"),
        ],
        lambda o: [
            _name(o),
            (o.get("spec") or {}).get("type", "ClusterIP"),
            (o.get("spec") or {}).get("clusterIP", "<none>"),
            "<none>",
            _ports(o),
            _age(o),
        ],
    ),
    "pods": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "integer"),
            _col("Age"),
        ],
        lambda o: [
            _name(o),
            _pod_ready(o),
            (o.get("status") or {}).get("phase", "Pending"),
            _restarts(o),
            _age(o),
        ],
    ),
    "events": (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")],
        lambda o: [
            human_age(o.get("lastTimestamp") or o.get("metadata", {}).get("creationTimestamp")),
            o.get("type", ""),
            o.get("reason", ""),
            "{}/{}".format(
                str((o.get("involvedObject") or {}).get("kind", "")).lower(),
                (o.get("involvedObject") or {}).get("name", ""),
            ),
            o.get("message", ""),
        ],
    ),
    "deployments.apps": (
        [
            _col("Name", fmt="name"),
            _col("Ready"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _col("Age"),
        ],
        lambda o: [
            _name(o),
            _replicas(o),
            (o.get("status") or {}).get("updatedReplicas", 0),
            (o.get("status") or {}).get("availableReplicas", 0),
            _age(o),
        ],
    ),
    "leases.coordination.k8s.io": (
        [_col("Name", fmt="name"), _col("Holder"), _col("Age")],
        lambda o: [_name(o), (o.get("spec") or {}).get("holderIdentity", ""), _age(o)],
    ),
    "customresourcedefinitions.apiextensions.k8s.io": (
        [_col("Name", fmt="name"), _col("Created At", "date")],
        lambda o: [_name(o), o.get("metadata", {}).get("creationTimestamp", "")],
    ),
    "sealedsecrets.bitnami.com": (
        [_col("Name", fmt="name"), _col("Status"), _col("Synced"), _col("Age", "date")],
        lambda o: [
            _name(o),
            _first_condition(o, "message"),
            _first_condition(o, "status"),
            _age(o),
        ],
    ),
}


def _row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj["metadata"],
    }


def table(
    resource: str,
    objects: Iterable[Obj],
    *,
    include_object: str = "Metadata",
    list_meta: Obj | None = None,
) -> Obj:
    columns, cells = _PRINTERS.get(
        resource, ([_col("Name", fmt="name"), _col("Age")], lambda o: [_name(o), _age(o)])
    )
    rows = []
    for obj in objects:
        row: Obj = {"cells": cells(obj)}
        shown = _row_object(obj, include_object)
        if shown is not None:
            row["object"] = shown
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta or {},
        "columnDefinitions": columns,
        "rows": rows,
    }
