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


def _pod_cells(obj: Obj) -> list[Any]:
    """The pod row as the real server-side printer (``printPod``) derives it.

    STATUS starts from ``status.phase`` (or ``status.reason``) and is overridden by a
    container's ``state.waiting.reason`` (``CrashLoopBackOff``) or ``state.terminated``
    reason/exit code; a deleted pod shows ``Terminating``.  RESTARTS sums the containers'
    ``restartCount`` and, once a container has terminated before, adds "(5m ago)".
    """
    status = obj.get("status") or {}
    reason = str(status.get("reason") or status.get("phase") or "Pending")
    statuses = [s for s in status.get("containerStatuses") or [] if isinstance(s, dict)]
    ready = restarts = 0
    last_restart = ""
    has_running = False
    for container in reversed(statuses):
        restarts += int(container.get("restartCount", 0))
        finished = ((container.get("lastState") or {}).get("terminated") or {}).get(
            "finishedAt"
        )
        if finished and str(finished) > last_restart:
            last_restart = str(finished)
        state = container.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if isinstance(waiting, dict) and waiting.get("reason"):
            reason = str(waiting["reason"])
        elif isinstance(terminated, dict) and terminated.get("reason"):
            reason = str(terminated["reason"])
        elif isinstance(terminated, dict):
            signal = terminated.get("signal")
            reason = (
                f"Signal:{signal}" if signal else f"ExitCode:{terminated.get('exitCode', 0)}"
            )
        elif container.get("ready") and "running" in state:
            has_running = True
            ready += 1
    if reason == "Completed" and has_running:
        reason = "Running" if _pod_condition(status, "Ready") == "True" else "NotReady"
    if obj.get("metadata", {}).get("deletionTimestamp"):
        reason = "Terminating"
    total = len((obj.get("spec") or {}).get("containers") or []) or len(statuses)
    shown = f"{restarts} ({human_age(last_restart)} ago)" if last_restart else str(restarts)
    spec = obj.get("spec") or {}
    gates = [g for g in spec.get("readinessGates") or [] if isinstance(g, dict)]
    gates_ready = sum(
        1 for g in gates if _pod_condition(status, str(g.get("conditionType"))) == "True"
    )
    return [
        _name(obj),
        f"{ready}/{total}",
        reason,
        shown,
        _age(obj),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"{gates_ready}/{len(gates)}" if gates else "<none>",
    ]


def _pod_condition(status: Obj, kind: str) -> str:
    for condition in status.get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return str(condition.get("status", ""))
    return ""


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
            _col("Restarts"),  # a string since the "(5m ago)" suffix
            _col("Age"),
            _col("IP", priority=1),  # priority 1: shown by ``-o wide``
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ],
        _pod_cells,
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
    # Flux's printer columns (its CRDs' additionalPrinterColumns).
    "gitrepositories.source.toolkit.fluxcd.io": (
        [_col("Name", fmt="name"), _col("URL"), _col("Age", "date"), _col("Ready"),
         _col("Status")],
        lambda o: [
            _name(o),
            (o.get("spec") or {}).get("url", ""),
            _age(o),
            _first_condition(o, "status"),
            _first_condition(o, "message"),
        ],
    ),
    "kustomizations.kustomize.toolkit.fluxcd.io": (
        [_col("Name", fmt="name"), _col("Age", "date"), _col("Ready"), _col("Status")],
        lambda o: [
            _name(o),
            _age(o),
            _first_condition(o, "status"),
            _first_condition(o, "message"),
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
