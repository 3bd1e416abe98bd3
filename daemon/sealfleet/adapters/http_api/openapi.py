"""The OpenAPI 3.1 description of the read API (served at ``/api/v1/openapi.json``).

Written by hand next to the handlers and kept honest by tests that validate real
responses against these schemas and run schemathesis against the served document.
Objects allow extra properties: later releases may add fields without breaking clients.

The document is also what the server enforces for query strings: the parameters declared
here for a path are the only ones it accepts (:func:`query_names`), each at most once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sealfleet.domain import drift
from sealfleet.domain.controller_state import ControllerState
from sealfleet.domain.jobs import JobKind
from sealfleet.domain.staleness import SHOWN_STATES

MAX_PAGE = 1000
_STR_OR_NULL = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_STATES = [state.value for state in SHOWN_STATES]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": props,
            "required": list(props) if required is None else required}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "Malformed request, or a query parameter that is invalid, "
                 "not declared for this path, or given more than once (code bad_request)"),
    "401": _json(_ref("Error"), "Missing or wrong bearer token (TCP listener only)"),
    "404": _json(_ref("Error"), "No such cluster (code not_found)"),
    "413": _json(_ref("Error"), "The body is larger than 1 MiB (code too_large)"),
    "503": _json(_ref("Error"), "Inventory not available"),
}

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"}})}),
    "Counts": _obj({k: {"type": "integer", "minimum": 0} for k in ["total", *_STATES]}),
    "SealingKey": _obj({
        "fingerprint": {"type": "string", "pattern": "^SHA256:"},
        "source": {"enum": ["cert.pem", "newest-active"]},
        "not_before": _TIME_OR_NULL, "not_after": _TIME_OR_NULL,
        "age_seconds": {"type": ["integer", "null"], "minimum": 0},
        "stale": {"type": ["boolean", "null"]},
        "reasons": {"type": "array", "items": {"enum": [
            "older_than_renew_period", "certificate_expired", "certificate_expiring"]}},
        "state": _STR_OR_NULL,
    }),
    "ClusterKey": _obj({
        "fingerprint": {"type": "string"}, "active": {"type": "boolean"},
        "sealing": {"type": "boolean"}, "state": _STR_OR_NULL,
        "not_before": _TIME_OR_NULL, "not_after": _TIME_OR_NULL,
    }),
    "ClusterReport": _obj({
        "name": {"type": "string"},
        "reachable": {"type": ["boolean", "null"]},
        "last_scan_at": _TIME_OR_NULL,
        "last_error": _STR_OR_NULL,
        "controller_error": {"type": ["string", "null"],
                             "description": "why the sealed-secrets controller cannot be "
                                            "asked (no ready replica, crash loop, no Service)"},
        "controller_state": {"enum": [*(s.value for s in ControllerState), None],
                             "description": "what the controller probe found (null: not "
                                            "probed yet); crash-looping is "
                                            "no_ready_replicas"},
        "controller_key_renew_period_seconds": {
            "type": ["integer", "null"], "minimum": 0,
            "description": "the controller's --key-renew-period (0: off; null: not known); "
                           "other than 0 is drift in master mode (controller_self_renewal)"},
        "malformed_key_secrets": {
            "type": "array", "description": "Secrets in the controller namespace that look "
            "like key Secrets but are not keys (never taken as keys)",
            "items": _obj({"secret": {"type": "string"}, "reason": {"type": "string"}})},
        "scan_duration_ms": {"type": ["integer", "null"]},
        "sealing_key": {"oneOf": [{"type": "null"}, _ref("SealingKey")]},
        "keys": {"type": "array", "items": _ref("ClusterKey")},
        "drift": {"type": ["boolean", "null"],
                  "description": "null when no fleet master key set is configured"},
        "drift_detail": {"oneOf": [{"type": "null"}, _obj({
            "missing": {"type": "array", "items": {"type": "string"}},
            "extra": {"type": "array", "items": {"type": "string"}},
            "sealing_key_outside_master_set": {"type": "boolean"}})]},
        "drift_reasons": {"type": "array", "description": "why the cluster drifts (empty "
                          "when in sync or without a master key set)", "items": _obj({
                              "reason": {"enum": [r.value for r in drift.REASONS]},
                              "fingerprint": _STR_OR_NULL, "detail": {"type": "string"}})},
        "sealed_secrets": _ref("Counts"),
    }),
    "ClusterDetail": {"allOf": [_ref("ClusterReport"), _obj({
        "server": _STR_OR_NULL, "controller_namespace": _STR_OR_NULL,
        "controller_name": _STR_OR_NULL})]},
    "StalenessReport": _obj({
        "generated_at": _TIME,
        "policy": _obj({"key_renew_period_seconds": {"type": "integer"},
                        "cert_expiry_warning_seconds": {"type": "integer"},
                        "master_keys": {"type": "array", "items": {"type": "string"}}}),
        "fleet": _obj({"clusters": {"type": "integer"}, "reachable": {"type": "integer"},
                       "stale_sealing_keys": {"type": "integer"},
                       "drifting": {"type": "integer"}, "sealed_secrets": _ref("Counts"),
                       "in_sync": {"type": "integer", "description": "clusters holding the "
                                   "fleet key set and sealing with the newest master key"},
                       "drifting_clusters": {"type": "array", "items": {"type": "string"}},
                       "master_key": {"oneOf": [{"type": "null"}, _obj({
                           "fingerprint": {"type": "string", "pattern": "^SHA256:"},
                           "not_before": _TIME, "not_after": _TIME})],
                           "description": "the newest fleet master key (null: none)"},
                       "jobs_running": {"type": "array", "items": _obj({
                           "id": {"type": "string"}, "kind": {"type": "string"},
                           "state": {"enum": ["pending", "running"]},
                           "actor": {"type": "string"}, "created_at": _TIME,
                           "started_at": _TIME_OR_NULL})},
                       "repos": {"type": "integer"},
                       "git_sealed_secrets": _ref("Counts")}),
        "clusters": {"type": "array", "items": _ref("ClusterReport")},
        "repos": {"type": "array", "items": _ref("RepoReport")},
    }),
    "RepoReport": _obj({
        "name": {"type": "string"}, "path": {"type": "string"},
        "is_git": {"type": ["boolean", "null"], "description": "null until first scanned"},
        "head_commit": _STR_OR_NULL, "head_branch": _STR_OR_NULL,
        "last_scan_at": _TIME_OR_NULL,
        "last_error": {"type": ["string", "null"],
                       "description": "why the last scan failed or was skipped (another "
                                      "branch than base_branch checked out, git failing)"},
        "scan_duration_ms": {"type": ["integer", "null"]},
        "files": {"type": "integer", "minimum": 0,
                  "description": "files that matched the repo's paths"},
        "unparseable_files": {"type": "array", "description": "files that do not parse "
                              "(skipped), at most 100", "items": _obj({
                                  "path": {"type": "string"}, "reason": {"type": "string"}})},
        "unparseable_files_total": {"type": "integer", "minimum": 0},
        "sealed_secrets": _ref("Counts"),
        "pending_branches": {"type": "array", "description": "unmerged sealfleet/reseal-* "
                             "branches that reseal documents still not current on the "
                             "base branch", "items": _obj({
                                 "name": {"type": "string"},
                                 "documents": {"type": "integer", "minimum": 1}})},
    }),
    "ClusterList": _obj({"generated_at": _TIME,
                         "clusters": {"type": "array", "items": _ref("ClusterDetail")}}),
    "Key": _obj({
        "fingerprint": {"type": "string", "pattern": "^SHA256:"},
        "not_before": _TIME, "not_after": _TIME,
        "state": {"enum": ["active", "retired", "compromised"]},
        "source": {"type": "string"}, "fleet_master": {"type": "boolean"},
        "has_private_key": {"type": "boolean"},
        "clusters": {"type": "array", "items": {"type": "string"}},
        "items": {"type": "integer", "minimum": 0},
        "sealed_secrets": {"type": "integer", "minimum": 0},
    }),
    "KeyList": _obj({"generated_at": _TIME, "keys": {"type": "array", "items": _ref("Key")}}),
    "GitLink": _obj({"repo": {"type": "string"}, "path": {"type": "string"},
                     "document": {"type": "integer", "minimum": 0,
                                  "description": "0-based, among the file's non-empty "
                                                 "documents"}}),
    "ManagedBy": _obj({
        "tool": {"enum": ["flux", "argocd"]}, "name": {"type": "string"},
        "hint": {"type": "boolean", "description": "only the app.kubernetes.io/instance "
                                                   "label says so (Helm sets it too)"}}),
    "GitSealedSecret": _obj({
        "source": {"const": "git"}, "repo": {"type": "string"}, "path": {"type": "string"},
        "document": {"type": "integer", "minimum": 0},
        "namespace": {"type": "string"}, "name": {"type": "string"},
        "scope": {"enum": ["strict", "namespace-wide", "cluster-wide"]},
        "state": {"enum": _STATES},
        "clusters": {"type": "array", "items": {"type": "string"},
                     "description": "the clusters whose keys should open it"},
        "observed_at": _TIME, "malformed_reason": _STR_OR_NULL,
        "ciphertext_fingerprint": {"type": "string"},
        "items": {"type": "array", "items": _obj({
            "item": {"type": "string"}, "fingerprint": _STR_OR_NULL})},
        "pending_branch": {"type": ["string", "null"],
                           "description": "not current on the base branch, but resealed "
                                          "on this unmerged sealfleet/reseal-* branch"},
    }),
    "SealedSecret": _obj({
        "source": {"const": "cluster"},
        "git": {"oneOf": [{"type": "null"}, _ref("GitLink")],
                "description": "the Git document of the same ciphertext, if any"},
        "managed_by": {"oneOf": [{"type": "null"}, _ref("ManagedBy")]},
        "cluster": {"type": "string"}, "namespace": {"type": "string"},
        "name": {"type": "string"}, "uid": {"type": "string"},
        "resource_version": {"type": "string"}, "generation": {"type": "integer"},
        "scope": {"enum": ["strict", "namespace-wide", "cluster-wide"]},
        "state": {"enum": _STATES}, "synced": {"type": ["boolean", "null"]},
        "synced_message": _STR_OR_NULL, "observed_at": _TIME,
        "malformed_reason": _STR_OR_NULL,
        "ciphertext_fingerprint": {"type": "string"},
        "items": {"type": "array", "items": _obj({
            "item": {"type": "string"}, "fingerprint": _STR_OR_NULL})},
    }),
    "SealedSecretPage": _obj({
        "items": {"type": "array", "items": {"oneOf": [_ref("SealedSecret"),
                                                       _ref("GitSealedSecret")]}},
        "next_cursor": {"type": ["string", "null"],
                        "description": "pass as ?cursor= for the next page; null on the last"},
    }),
    "CheckRequest": {**_obj({
        "documents": {"type": "array", "maxItems": 500, "items": {
            "type": "object",
            "properties": {
                "source": {"type": "string", "maxLength": 4096,
                           "description": "a name for errors and the answer (a file name)"},
                "document": {"type": "integer", "minimum": 0,
                             "description": "its index in the source (with object)"},
                "object": {"type": "object", "description": "a SealedSecret"},
                "content": {"type": "string", "description": "a YAML or JSON manifest "
                            "file; only its SealedSecret documents are checked"}},
            "oneOf": [{"required": ["object"], "not": {"required": ["content"]}},
                      {"required": ["content"], "not": {"required": ["object"]}}]}},
        "clusters": {"type": "array", "maxItems": 100,
                     "items": {"type": "string", "minLength": 1},
                     "description": "clusters that must each unseal every document; "
                                    "default: every cluster, one of which must"},
        "require_current": {"type": "boolean", "description": "also fail a document not "
                            "sealed with a cluster's current sealing key"},
    }, required=["documents"])},
    "CheckVerdict": _obj({
        "cluster": {"type": "string"},
        "decryptable": {"type": ["boolean", "null"],
                        "description": "the cluster holds the key of every item under the "
                                       "document's scope label; null: cannot be told"},
        "current": {"type": ["boolean", "null"],
                    "description": "every item is sealed with the cluster's sealing key"},
        "sealing_key": _STR_OR_NULL, "state": {"enum": _STATES},
        "reasons": {"type": "array", "items": {"type": "string"}}}),
    "CheckResult": _obj({
        "ok": {"type": "boolean"}, "clusters": {"type": "array", "items": {"type": "string"}},
        "require_current": {"type": "boolean"},
        "documents": {"type": "array", "items": _obj({
            "source": {"type": "string"}, "document": {"type": "integer"},
            "namespace": {"type": "string"}, "name": {"type": "string"},
            "scope": {"enum": ["strict", "namespace-wide", "cluster-wide"]},
            "ok": {"type": "boolean"},
            "items": {"type": "array", "items": _obj({
                "item": {"type": "string"}, "fingerprint": _STR_OR_NULL})},
            "clusters": {"type": "array", "items": _ref("CheckVerdict")}})},
        "ignored_documents": {"type": "integer", "minimum": 0,
                              "description": "documents that are not SealedSecrets"},
        "errors": {"type": "array", "items": _obj({"source": {"type": "string"},
                                                   "error": {"type": "string"}})},
    }),
    "Health": _obj({"status": {"const": "ok"}}),
    "JobStep": _obj({"ref": {"type": "string"},
                     "state": {"enum": ["pending", "running", "done", "failed", "skipped"]},
                     "attempt": {"type": "integer", "minimum": 0}, "error": _STR_OR_NULL,
                     "detail": {"type": "object"}, "updated_at": _TIME}),
    "Job": _obj({
        "id": {"type": "string"},
        "kind": {"enum": [kind.value for kind in JobKind]},
        "state": {"enum": ["pending", "running", "succeeded", "failed", "cancelled"]},
        "actor": {"type": "string"}, "params": {"type": "object"}, "error": _STR_OR_NULL,
        "result": {"type": "object", "description": "the outcome's details, e.g. a "
                                                    "compromise's blast_radius"},
        "created_at": _TIME, "started_at": _TIME_OR_NULL, "finished_at": _TIME_OR_NULL,
        "updated_at": _TIME,
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "steps": {"type": "array", "items": _ref("JobStep")},
        "progress": _ref("JobProgress")}, required=[
            "id", "kind", "state", "actor", "params", "error", "result", "created_at",
            "started_at", "finished_at", "updated_at", "counts", "steps"]),
    "ObjectCounts": _obj({
        **{name: {"type": "integer", "minimum": 0} for name in (
            "planned", "done", "skipped", "failed", "conflicts", "awaiting_synced",
            "remaining")}}),
    "JobProgress": _obj({
        "clusters": {"type": "object", "additionalProperties": _ref("ObjectCounts"),
                     "description": "per cluster step: its SealedSecrets by state, from "
                                    "the per-object journal, live while the job runs"},
        "repositories": {"type": "object", "additionalProperties": _ref("ObjectCounts")},
        "total": _ref("ObjectCounts")}),
    "JobList": _obj({"jobs": {"type": "array", "items": _ref("Job")}}),
    "ResealRequest": _obj({
        "states": {"type": "array", "items": {"enum": _STATES},
                   "description": "default stale and compromised"},
        "clusters": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "repos": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "namespaces": {"type": "array", "items": {"type": "string", "minLength": 1},
                       "description": "shell patterns (team-*)"},
        "names": {"type": "array", "items": {"type": "string", "minLength": 1},
                  "description": "shell patterns"},
        "scopes": {"type": "array", "items": {
            "enum": ["strict", "namespace-wide", "cluster-wide"]}},
        "sources": {"type": "array", "items": {"enum": ["cluster", "git"]}},
        "include_git": {"type": "boolean", "description": "false: clusters only"},
        "include_hinted": {"type": "boolean",
                           "description": "reseal in the cluster what only the "
                                          "app.kubernetes.io/instance label says may be "
                                          "GitOps-managed (Helm sets it too)"},
        "dry_run": {"type": "boolean", "description": "answer the plan, journal nothing"},
    }, required=[]),
    "ResealPlan": _obj({
        "dry_run": {"const": True}, "selection": {"type": "object"},
        "planned": {"type": "integer", "minimum": 0},
        "items": {"type": "integer", "minimum": 0},
        "not_planned": {"type": "integer", "minimum": 0},
        "by_cluster": {"type": "object", "additionalProperties": {"type": "integer"}},
        "by_repository": {"type": "object", "additionalProperties": {"type": "integer"}},
        "by_reason": {"type": "object", "additionalProperties": {"type": "integer"}},
        "reseals": {"type": "array", "items": {"type": "object"},
                    "description": "each planned reseal: ref, source, reason, cluster or "
                                   "repository and path, namespace, name, scope, "
                                   "target_key, old_keys, items (names only)"},
        "not_resealable": {"type": "array", "items": _obj({
            "ref": {"type": "string"}, "source": {"enum": ["cluster", "git"]},
            "state": {"enum": _STATES}, "reason": {"type": "string"}})},
        "warnings": {"type": "array", "items": {"type": "string"}}}),
    "AuditList": _obj({"entries": {"type": "array", "items": _obj({
        "id": {"type": "integer"}, "at": _TIME, "event": {"type": "string"},
        "actor": {"type": "string"}, "details": {"type": "object"}})}}),
    "Ready": _obj({"ready": {"type": "boolean"},
                   "checks": {"type": "object",
                              "additionalProperties": {"type": "boolean"}}}),
}


def _get(summary: str, ok: dict[str, Any], *, errors: tuple[str, ...] = ("401", "503"),
         parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {"200": ok}}
    # Every operation answers 400 to an undeclared or repeated query parameter.
    for code in sorted({"400", *errors}):
        op["responses"][code] = _ERRORS[code]
    if parameters:
        op["parameters"] = parameters
    return {"get": op}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    # Scalar, not array: a parameter given twice is a 400.  Empty values are invalid
    # (minLength 1 on strings), so "?cluster=" is not a filter that matches nothing.
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


def _key_transfer(summary: str, content: dict[str, Any],
                  success: dict[str, Any]) -> dict[str, Any]:
    """Imports and exports carry private keys: refused on the TCP listener (403)."""
    return {"post": {
        "summary": summary,
        "security": [{"bearer": []}, {}],
        "requestBody": {"required": False, "content": content},
        "responses": {
            **success,
            "400": _ERRORS["400"],
            "401": _ERRORS["401"],
            "403": _json(_ref("Error"), "Over TCP, whatever the token: only on the daemon's "
                                        "unix socket (code forbidden)"),
            "409": _json(_ref("Error"), "Refused (code refused)"),
            "413": _ERRORS["413"],
            "503": _ERRORS["503"],
        },
    }}


def _post(summary: str, *, body: dict[str, Any] | None = None,
          parameters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}, {}],
        "responses": {
            "202": _json(_ref("Job"), "Journaled: the job document (follow it at "
                                      "/api/v1/jobs/{id})"),
            "400": _ERRORS["400"],
            "401": _ERRORS["401"],
            "403": _json(_ref("Error"), "Over TCP with a token other than the admin token "
                                        "(code forbidden)"),
            "409": _json(_ref("Error"), "Refused as asked; nothing was journaled or changed "
                                        "(code refused)"),
            "413": _ERRORS["413"],
            "503": _ERRORS["503"],
        },
    }
    if body is not None:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": body}}}
    if parameters:
        op["parameters"] = parameters
    return {"post": op}


def _reseal_post() -> dict[str, Any]:
    op = _post("Reseal what is stale or compromised with the current key, in the clusters "
               "and in their repositories (job steps cluster:NAME and repo:NAME; each step's "
               "detail counts resealed, skipped, rotated_via_controller, "
               "conflicts_replanned, failed)", body=_ref("ResealRequest"))
    op["post"]["responses"]["200"] = _json(_ref("ResealPlan"),
                                           "dry_run: the plan; nothing was journaled")
    return op


# A fingerprint holds "/" and "+": percent-encode it in the path (%2F, %2B).  Anything
# that is not SHA256:<43 base64 characters> is a 400.
_FINGERPRINT_PARAM = {"name": "fingerprint", "in": "path", "required": True,
                      "description": "key fingerprint, SHA256:..., percent-encoded",
                      "schema": {"type": "string", "minLength": 1}}


def query_names(document: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """For each path of *document*, the names of the query parameters its GET declares."""
    return {path: frozenset(p["name"] for p in item.get("get", {}).get("parameters", [])
                            if p["in"] == "query")
            for path, item in document["paths"].items()}


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    not_ready = _json(_ref("Error"), "Not ready yet (code not_ready)")
    ready = _get("Ready: migrations applied and every cluster scanned once or marked "
                 "unreachable", _json(_ref("Ready"), "Ready"), errors=("401",))
    ready["get"]["responses"]["503"] = not_ready
    return {
        "openapi": "3.1.0",
        "info": {"title": "sealfleet", "version": "1",
                 "description": "Read API of the sealfleet daemon.  Over the unix socket no "
                                "token is needed; over TCP send `Authorization: Bearer "
                                "<read token>`.  Every error is JSON of the `Error` shape. "
                                "An endpoint accepts only the query parameters it declares, "
                                "each at most once; anything else is a 400."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic",
                          "description": "For browsers: any user name, the token as password"},
            },
        },
        "security": [{"bearer": []}, {"basic": []}, {}],
        "paths": {
            "/healthz": _get("Liveness", _json(_ref("Health"), "Alive"), errors=("401",)),
            "/readyz": ready,
            "/metrics": _get("Prometheus metrics", {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}, errors=("401",)),
            "/": _get("Status page", {"description": "HTML status page",
                                       "content": {"text/html": {"schema": {"type": "string"}}}}),
            "/api/v1/staleness": _get("Fleet staleness report",
                                      _json(_ref("StalenessReport"), "The report")),
            "/api/v1/clusters": _get("Clusters", _json(_ref("ClusterList"), "All clusters")),
            "/api/v1/clusters/{name}": {
                **_get("One cluster", _json(_ref("ClusterDetail"), "The cluster"),
                       errors=("401", "404", "503"),
                       parameters=[{"name": "name", "in": "path", "required": True,
                                    "schema": {"type": "string"}}]),
            },
            "/api/v1/keys": _get("Keys known to the fleet (public facts only)",
                                 _json(_ref("KeyList"), "All keys")),
            "/api/v1/sealed-secrets": _get(
                "SealedSecrets, keyset-paginated in (cluster, namespace, name) order",
                _json(_ref("SealedSecretPage"), "One page"),
                parameters=[
                    _query("cluster", {"type": "string", "minLength": 1}, "only this cluster"),
                    _query("namespace", {"type": "string", "minLength": 1},
                           "only this namespace"),
                    _query("state", {"enum": _STATES}, "only this state"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE,
                                     "default": 100}, "page size (ASCII digits)"),
                    _query("cursor", {"type": "string", "minLength": 1},
                           "next_cursor of the previous page"),
                    _query("source", {"enum": ["cluster", "git"], "default": "cluster"},
                           "cluster: in-cluster objects, in (cluster, namespace, name) "
                           "order; git: documents found in the repos, in (repo, path, "
                           "document) order, where cluster= keeps those meant for it"),
                ]),
            "/api/v1/keys/sync": _post(
                "Bring every cluster's key Secrets to the fleet key set (master mode)",
                body={"type": "object"}),
            "/api/v1/keys/renew": _post("A new fleet master key, synced to every cluster",
                                        body={"type": "object"}),
            "/api/v1/keys/adopt": _post(
                "Take a cluster's keys into fleet custody",
                body=_obj({"cluster": {"type": "string", "minLength": 1},
                           "share": {"type": "boolean"}}, required=["cluster"])),
            "/api/v1/keys/import": _key_transfer(
                "Import keys (a plaintext key List of the controller's key Secrets, states "
                "in sealfleet/ annotations) as a key_import job; unix socket only",
                {"application/yaml": {"schema": {"type": "string"}}},
                {"202": _json(_ref("Job"), "Journaled: the key_import job document")}),
            "/api/v1/keys/export": _key_transfer(
                "Every stored key as an age file for the recipients or passphrase given "
                "(else the daemon's [backup] encryption), or the plaintext key List when "
                "asked; audited; unix socket only",
                {"application/json": {"schema": _obj({
                    "recipients": {"type": "string", "description": "a recipients file's "
                                   "text: age1..., ssh-ed25519, ssh-rsa lines"},
                    "passphrase": {"type": "string", "minLength": 12},
                    "plaintext": {"type": "boolean"}}, required=[])}},
                {"200": {"description": "The backup (age) or the key List",
                         "content": {"application/octet-stream": {
                             "schema": {"type": "string", "format": "binary"}}}}}),
            "/api/v1/keys/{fingerprint}/compromise": _post(
                "Mark a key compromised, renew at once; the result lists the blast radius",
                body={"type": "object"}, parameters=[_FINGERPRINT_PARAM]),
            "/api/v1/keys/{fingerprint}/retire": _post(
                "Take a key out of every cluster (refused while anything needs it)",
                body=_obj({"purge": {"type": "boolean"}}, required=[]),
                parameters=[_FINGERPRINT_PARAM]),
            "/api/v1/reseal": _reseal_post(),
            "/api/v1/jobs": _get("Jobs, newest first", _json(_ref("JobList"), "Jobs"),
                                 parameters=[_query("state", {"enum": [
                                     "pending", "running", "succeeded", "failed",
                                     "cancelled"]}, "only jobs in this state")]),
            "/api/v1/jobs/{id}": _get("One job with its steps", _json(_ref("Job"), "The job"),
                                      errors=("401", "404", "503"),
                                      parameters=[{"name": "id", "in": "path",
                                                   "required": True,
                                                   "schema": {"type": "string"}}]),
            "/api/v1/audit": _get("The audit log, oldest first (the last 200 entries)",
                                  _json(_ref("AuditList"), "Entries"),
                                  parameters=[_query("since", {"type": "string",
                                                               "format": "date-time"},
                                                     "only entries at or after this time")]),
            "/api/v1/cert.pem": {"get": {
                "summary": "The fleet master certificate (no token needed: it is public); "
                           "?cluster=NAME: that cluster's sealing certificate",
                "security": [{}],
                "parameters": [_query("cluster", {"type": "string", "minLength": 1},
                                      "a configured cluster")],
                "responses": {
                    "200": {"description": "PEM certificate",
                            "content": {"application/x-pem-file": {
                                "schema": {"type": "string"}}}},
                    "400": _ERRORS["400"],
                    "404": _json(_ref("Error"), "No such cluster, or no certificate yet"),
                    "503": _ERRORS["503"]}}},
            "/api/v1/check": {"post": {
                "summary": "Can these SealedSecrets be unsealed, and are they sealed with "
                           "the current key (per document and cluster)?  Nothing is "
                           "decrypted beyond the RSA unwrap attribution does; no value is "
                           "returned.  The read token is enough.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("CheckRequest")}}},
                "responses": {
                    "200": _json(_ref("CheckResult"), "The verdicts (ok false: a document "
                                 "would fail, or an input does not parse)"),
                    "400": _json(_ref("Error"), "Not a check request, or too many items"),
                    "401": _ERRORS["401"],
                    "404": _json(_ref("Error"), "A named cluster is not configured"),
                    "413": _json(_ref("Error"), "The body is larger than 1 MiB"),
                    "503": _json(_ref("Error"), "No checker (keys) available here"),
                }}},
            "/api/v1/openapi.json": _get("This document", {
                "description": "OpenAPI 3.1", "content": {"application/json": {
                    "schema": {"type": "object"}}}}, errors=("401",)),
        },
    }
