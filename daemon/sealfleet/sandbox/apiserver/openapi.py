"""OpenAPI v3 documents, just enough for what kubectl does with them.

kubectl fetches ``/openapi/v3`` (an index of group-versions) before ``apply``, ``create``
and ``replace`` to decide where validation happens: when the PATCH operation of a kind's
path declares the ``fieldValidation`` query parameter, kubectl leaves validation to the
server; otherwise it downloads the schemas and validates client-side.  So each
group-version document carries its paths with operation parameters and the
``x-kubernetes-group-version-kind`` extension, plus a schema per kind (the SealedSecret's
comes from its CRD; the built-in kinds get open schemas).

The PATCH operations deliberately declare no request body media types: kubectl then does
not try to compute strategic merge patches from these (skeletal) schemas, tries
``/openapi/v2`` (404 here) and falls back to the Go types compiled into it, which is
exactly right for the built-in kinds.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from aiohttp import web

from sealfleet.sandbox.apiserver import discovery, rest
from sealfleet.sandbox.controller import manifests

Obj = dict[str, Any]

_SCHEMA_PACKAGES = {
    "": "io.k8s.api.core.v1",
    "apps": "io.k8s.api.apps.v1",
    "coordination.k8s.io": "io.k8s.api.coordination.v1",
    "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1",
    "bitnami.com": "com.bitnami.v1alpha1",
    # CRDs are published under their group reversed, as the apiserver names them.
    "source.toolkit.fluxcd.io": "io.fluxcd.toolkit.source.v1",
    "kustomize.toolkit.fluxcd.io": "io.fluxcd.toolkit.kustomize.v1",
}


def _param(name: str, description: str, kind: str = "string") -> Obj:
    return {
        "name": name,
        "in": "query",
        "description": description,
        "schema": {"type": kind, "uniqueItems": True},
    }


_WRITE_PARAMS = [
    _param("dryRun", "When present, indicates that modifications should not be persisted."),
    _param("fieldManager", "fieldManager is a name associated with the actor making changes."),
    _param("fieldValidation", "Instructs the server how to handle unknown or duplicate fields."),
]
_PATCH_PARAMS = [
    *_WRITE_PARAMS,
    _param("force", "Force is going to force Apply requests.", "boolean"),
]


def _schema_name(served: discovery.Served) -> str:
    return f"{_SCHEMA_PACKAGES[served.rtype.group]}.{served.rtype.kind}"


def _operation(served: discovery.Served, action: str, params: list[Obj]) -> Obj:
    rtype = served.rtype
    ref = {"$ref": f"#/components/schemas/{_schema_name(served)}"}
    return {
        "operationId": f"{action}{rtype.kind}",
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": ref}}}
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": rtype.group,
            "version": rtype.version,
            "kind": rtype.kind,
        },
    }


def _schema(served: discovery.Served) -> Obj:
    rtype = served.rtype
    gvk = [{"group": rtype.group, "kind": rtype.kind, "version": rtype.version}]
    if rtype.group == "bitnami.com":
        crd = manifests.crd()
        schema: Obj = dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    else:
        schema = {
            "type": "object",
            "description": f"{rtype.kind} as served by the sealfleet sandbox.",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-preserve-unknown-fields": True,
        }
    schema["x-kubernetes-group-version-kind"] = gvk
    return schema


def _prefix(group_version: str) -> str:
    return "/api/v1" if group_version == "v1" else f"/apis/{group_version}"


@cache
def group_version_document(group_version: str) -> bytes | None:
    served_list = discovery.group_versions().get(group_version)
    if served_list is None:
        return None
    paths: Obj = {}
    schemas: Obj = {}
    prefix = _prefix(group_version)
    read_only = "customresourcedefinitions"
    for served in served_list:
        plural = served.rtype.plural
        base = (
            f"{prefix}/namespaces/{{namespace}}/{plural}"
            if served.rtype.namespaced
            else (f"{prefix}/{plural}")
        )
        collection: Obj = {"get": _operation(served, "list", [])}
        item: Obj = {"get": _operation(served, "get", [])}
        if plural != read_only:
            collection["post"] = _operation(served, "post", _WRITE_PARAMS)
            item["put"] = _operation(served, "put", _WRITE_PARAMS)
            item["patch"] = _operation(served, "patch", _PATCH_PARAMS)
            item["delete"] = _operation(served, "delete", [])
        paths[base] = collection
        paths[f"{base}/{{name}}"] = item
        schemas[_schema_name(served)] = _schema(served)
    document = {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": discovery.KUBE_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    return json.dumps(document, separators=(",", ":")).encode()


@cache
def index_document() -> bytes:
    paths: Obj = {}
    for group_version in sorted(discovery.group_versions()):
        body = group_version_document(group_version)
        assert body is not None
        digest = hashlib.sha512(body).hexdigest()[:128].upper()
        key = _prefix(group_version).lstrip("/")
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return json.dumps({"paths": paths}, separators=(",", ":")).encode()


def serve(request: web.Request) -> web.Response:
    path = request.path.rstrip("/")
    if path == "/openapi/v3":
        return rest.json_response(index_document())
    if path.startswith("/openapi/v3/"):
        key = path[len("/openapi/v3/") :]
        group_version = "v1" if key == "api/v1" else key.removeprefix("apis/")
        body = group_version_document(group_version)
        if body is not None:
            return rest.json_response(body)
    raise rest.not_found_path()
