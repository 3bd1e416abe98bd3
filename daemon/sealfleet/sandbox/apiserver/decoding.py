"""Unknown fields in request bodies: dropped, warned about, or refused, as on a real cluster.

A real apiserver decodes built-in kinds into Go structs, which silently drops fields the
struct does not have, and prunes custom resources to their structural schema.  The
``fieldValidation`` query parameter decides what the client hears about it: ``Strict``
(kubectl's default) refuses the request with 400 ``strict decoding error``, ``Warn`` (the
server default) answers with ``Warning`` headers, ``Ignore`` says nothing.  The sandbox
models the fields it knows: the top level of every kind, ``metadata``, and the
SealedSecret ``spec`` (whose ``encryptedData`` and ``template`` keep unknown fields, as
the CRD's ``x-kubernetes-preserve-unknown-fields`` says).
"""

from __future__ import annotations

from typing import Any

from sealfleet.sandbox.objects import ApiError, ResourceType, bad_request

_TYPE = ("apiVersion", "kind")
_SPEC_STATUS = (*_TYPE, "metadata", "spec", "status")

TOP_LEVEL: dict[str, frozenset[str]] = {
    "secrets": frozenset((*_TYPE, "metadata", "data", "stringData", "type", "immutable")),
    "events": frozenset(
        (
            *_TYPE,
            "metadata",
            "involvedObject",
            "reason",
            "message",
            "source",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "type",
            "eventTime",
            "series",
            "action",
            "related",
            "reportingComponent",
            "reportingInstance",
        )
    ),
    "leases.coordination.k8s.io": frozenset((*_TYPE, "metadata", "spec")),
}
METADATA = frozenset(
    (
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    )
)
SEALED_SECRET_SPEC = frozenset(("data", "encryptedData", "template"))

MODES = ("Strict", "Warn", "Ignore")


def _prune(obj: dict[str, Any], allowed: frozenset[str], prefix: str, found: list[str]) -> None:
    for key in [k for k in obj if k not in allowed]:
        found.append(f"{prefix}{key}")
        del obj[key]


def check_fields(rtype: ResourceType, obj: dict[str, Any], mode: str | None) -> list[str]:
    """Drop unknown fields from ``obj``; return warnings, or raise 400 in Strict mode."""
    if mode not in (None, "", *MODES):
        raise bad_request(
            f'fieldValidation: Unsupported value: "{mode}": supported values: '
            '"Ignore", "Strict", "Warn"'
        )
    found: list[str] = []
    _prune(obj, TOP_LEVEL.get(rtype.key, frozenset(_SPEC_STATUS)), "", found)
    if isinstance(obj.get("metadata"), dict):
        _prune(obj["metadata"], METADATA, "metadata.", found)
    if rtype.key == "sealedsecrets.bitnami.com" and isinstance(obj.get("spec"), dict):
        _prune(obj["spec"], SEALED_SECRET_SPEC, "spec.", found)
    if not found:
        return []
    if mode == "Strict":
        details = ", ".join(f'unknown field "{field}"' for field in found)
        raise ApiError(400, "BadRequest", f"strict decoding error: {details}")
    if mode == "Ignore":
        return []
    return [f'unknown field "{field}"' for field in found]


def warning_headers(warnings: list[str]) -> list[tuple[str, str]]:
    """RFC 7234 ``Warning`` headers as the apiserver sends them (code 299, agent "-")."""
    return [("Warning", '299 - "{}"'.format(w.replace('"', '\\"'))) for w in warnings]
