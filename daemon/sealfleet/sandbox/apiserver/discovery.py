"""Discovery documents: what ``kubectl api-resources`` and client discovery read.

Both flavours are served: the legacy documents (``/api`` APIVersions, ``/apis``
APIGroupList, one APIResourceList per group-version) and the aggregated
``apidiscovery.k8s.io/v2`` APIGroupDiscoveryList that kubectl asks for first (by Accept
header) on ``/api`` and ``/apis``, which saves it one request per group-version.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sealfleet.sandbox.objects import RESOURCE_TYPES, ResourceType

Obj = dict[str, Any]

KUBE_VERSION = {
    "major": "1",
    "minor": "37",
    "emulationMajor": "1",
    "emulationMinor": "37",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "36",
    "gitVersion": "v1.37.1-sealfleet-sandbox",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.25.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}

AGGREGATED_CONTENT_TYPE = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"

_ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_READ_VERBS = ["get", "list", "watch"]
_STATUS_VERBS = ["get", "patch", "update"]


@dataclasses.dataclass(frozen=True)
class Served:
    """Discovery facts about one served resource (storage facts live in ResourceType)."""

    rtype: ResourceType
    singular: str
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[tuple[str, str, tuple[str, ...]], ...] = ()  # (name, kind, verbs)


def _served() -> dict[str, Served]:
    rt = RESOURCE_TYPES
    items = [
        Served(
            rt["namespaces"],
            "namespace",
            ("create", "delete", "get", "list", "patch", "update", "watch"),
            ("ns",),
            subresources=(("status", "Namespace", tuple(_STATUS_VERBS)),),
        ),
        Served(rt["secrets"], "secret", tuple(_ALL_VERBS)),
        Served(
            rt["services"],
            "service",
            tuple(_ALL_VERBS),
            ("svc",),
            ("all",),
            (
                ("proxy", "ServiceProxyOptions", ("create", "delete", "get", "patch", "update")),
                ("status", "Service", tuple(_STATUS_VERBS)),
            ),
        ),
        Served(
            rt["pods"],
            "pod",
            tuple(_ALL_VERBS),
            ("po",),
            ("all",),
            (("status", "Pod", tuple(_STATUS_VERBS)),),
        ),
        Served(rt["events"], "event", tuple(_ALL_VERBS), ("ev",)),
        Served(
            rt["deployments.apps"],
            "deployment",
            tuple(_ALL_VERBS),
            ("deploy",),
            ("all",),
            (("status", "Deployment", tuple(_STATUS_VERBS)),),
        ),
        Served(rt["leases.coordination.k8s.io"], "lease", tuple(_ALL_VERBS)),
        Served(
            rt["customresourcedefinitions.apiextensions.k8s.io"],
            "customresourcedefinition",
            tuple(_READ_VERBS),
            ("crd", "crds"),
            ("api-extensions",),
            (("status", "CustomResourceDefinition", ("get",)),),
        ),
        Served(
            rt["sealedsecrets.bitnami.com"],
            "sealedsecret",
            tuple(_ALL_VERBS),
            subresources=(("status", "SealedSecret", tuple(_STATUS_VERBS)),),
        ),
        Served(
            rt["gitrepositories.source.toolkit.fluxcd.io"],
            "gitrepository",
            tuple(_ALL_VERBS),
            ("gitrepo",),
            subresources=(("status", "GitRepository", tuple(_STATUS_VERBS)),),
        ),
        Served(
            rt["kustomizations.kustomize.toolkit.fluxcd.io"],
            "kustomization",
            tuple(_ALL_VERBS),
            ("ks",),
            subresources=(("status", "Kustomization", tuple(_STATUS_VERBS)),),
        ),
    ]
    return {s.rtype.key: s for s in items}


SERVED = _served()


def group_versions() -> dict[str, list[Served]]:
    """``{"": [...core], "apps/v1": [...], ...}`` keyed by groupVersion, core as "v1"."""
    result: dict[str, list[Served]] = {}
    for served in SERVED.values():
        result.setdefault(served.rtype.api_version, []).append(served)
    return result


def find(group: str, version: str, plural: str) -> Served | None:
    key = f"{plural}.{group}" if group else plural
    served = SERVED.get(key)
    if served is None or served.rtype.version != version:
        return None
    return served


# ----------------------------------------------------------------------- legacy docs


def api_versions(server_address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _groups() -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for served in SERVED.values():
        if served.rtype.group:
            seen.setdefault(served.rtype.group, served.rtype.version)
    return sorted(seen.items())


def api_group(group: str) -> Obj | None:
    for name, version in _groups():
        if name == group:
            gv = {"groupVersion": f"{name}/{version}", "version": version}
            return {
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": name,
                "versions": [gv],
                "preferredVersion": gv,
            }
    return None


def api_group_list() -> Obj:
    groups = []
    for name, _ in _groups():
        doc = api_group(name)
        assert doc is not None
        doc.pop("kind")
        doc.pop("apiVersion")
        groups.append(doc)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group_version: str) -> Obj | None:
    served_list = group_versions().get(group_version)
    if served_list is None:
        return None
    resources: list[Obj] = []
    for served in sorted(served_list, key=lambda s: s.rtype.plural):
        entry: Obj = {
            "name": served.rtype.plural,
            "singularName": served.singular,
            "namespaced": served.rtype.namespaced,
            "kind": served.rtype.kind,
            "verbs": list(served.verbs),
        }
        if served.short_names:
            entry["shortNames"] = list(served.short_names)
        if served.categories:
            entry["categories"] = list(served.categories)
        resources.append(entry)
        for sub, kind, verbs in served.subresources:
            resources.append(
                {
                    "name": f"{served.rtype.plural}/{sub}",
                    "singularName": "",
                    "namespaced": served.rtype.namespaced,
                    "kind": kind,
                    "verbs": list(verbs),
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


# ------------------------------------------------------------------- aggregated docs


def _aggregated_resource(served: Served) -> Obj:
    rtype = served.rtype
    entry: Obj = {
        "resource": rtype.plural,
        "responseKind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
        "scope": "Namespaced" if rtype.namespaced else "Cluster",
        "singularResource": served.singular,
        "verbs": list(served.verbs),
    }
    if served.short_names:
        entry["shortNames"] = list(served.short_names)
    if served.categories:
        entry["categories"] = list(served.categories)
    if served.subresources:
        entry["subresources"] = [
            {
                "subresource": sub,
                "responseKind": {"group": rtype.group, "version": rtype.version, "kind": kind},
                "verbs": list(verbs),
            }
            for sub, kind, verbs in served.subresources
        ]
    return entry


def aggregated(core: bool) -> Obj:
    items: list[Obj] = []
    by_gv = group_versions()
    if core:
        items.append(
            {
                "metadata": {"creationTimestamp": None},
                "versions": [
                    {
                        "version": "v1",
                        "resources": [
                            _aggregated_resource(s)
                            for s in sorted(by_gv["v1"], key=lambda s: s.rtype.plural)
                        ],
                        "freshness": "Current",
                    }
                ],
            }
        )
    else:
        for group, version in _groups():
            served_list = by_gv[f"{group}/{version}"]
            items.append(
                {
                    "metadata": {"name": group, "creationTimestamp": None},
                    "versions": [
                        {
                            "version": version,
                            "resources": [
                                _aggregated_resource(s)
                                for s in sorted(served_list, key=lambda s: s.rtype.plural)
                            ],
                            "freshness": "Current",
                        }
                    ],
                }
            )
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    }


def wants_aggregated(accept: str) -> bool:
    """True when the client prefers aggregated discovery (listed before plain JSON)."""
    for media in accept.split(","):
        params = {p.strip() for p in media.split(";")[1:]}
        if "g=apidiscovery.k8s.io" in params and "as=APIGroupDiscoveryList" in params:
            return "v=v2" in params
        if media.split(";")[0].strip() in ("application/json", "*/*") and len(params) == 0:
            return False
    return False
