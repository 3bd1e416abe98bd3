"""A SealedSecret as observed in a cluster, reduced to what the inventory needs.

Parsing is strict about shape and lenient about content: anything that is not a
well-formed SealedSecret yields a ``malformed_reason`` naming the field or item (never
a value), and the object is recorded with state ``unknown`` and no items.  Pure: the
cluster observers call :func:`parse` on every changed object of a list or watch.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sealfleet.domain import hybrid
from sealfleet.domain.attribution import item_hash
from sealfleet.domain.likely_keys import sealing_times
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import ciphertext_fingerprint, encrypted_items, identity_of
from sealfleet.errors import FleetError

Ref = tuple[str, str]  # (namespace, name)
LEGACY_ITEM = "spec.data"
# What marks an object as applied by a GitOps tool.  Flux labels what its Kustomization
# (or HelmRelease) applied; Argo CD's annotation tracking writes the tracking id
# "<app>:<group>/<kind>:<namespace>/<name>".  app.kubernetes.io/instance is only a hint:
# Argo CD's label tracking sets it, but so do Helm charts.
FLUX_LABELS = ("kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name")
FLUX_NAMESPACE_LABELS = ("kustomize.toolkit.fluxcd.io/namespace",
                         "helm.toolkit.fluxcd.io/namespace")
ARGOCD_TRACKING_ANNOTATION = "argocd.argoproj.io/tracking-id"
INSTANCE_LABEL = "app.kubernetes.io/instance"
_MAX_NAME = 253
_MAX_MESSAGE = 300
# Items of one SealedSecret that attribution tries: anyone who may create SealedSecrets
# could otherwise buy seconds of RSA with one object of a thousand random items (each
# tried with every key).  Real Secrets hold a few items, rarely a hundred.
MAX_ATTRIBUTED_ITEMS = 128


def ref_of(obj: Mapping[str, Any]) -> Ref:
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return ("", "")
    # Namespaces repeat across thousands of objects: one string each in memory.
    return (sys.intern(str(metadata.get("namespace") or "")), str(metadata.get("name") or ""))


@dataclass(frozen=True)
class ManagedBy:
    """The GitOps tool that applied an object: ``flux`` or ``argocd``, and the name of its
    Kustomization/HelmRelease (``namespace/name``) or Application.  *hint*: only the
    ``app.kubernetes.io/instance`` label says so, which Helm sets too."""

    tool: str
    name: str
    hint: bool = False


def _text(mapping: object, key: str) -> str | None:
    if not isinstance(mapping, Mapping):
        return None
    value = mapping.get(key)
    return value[:_MAX_NAME] if isinstance(value, str) and value else None


def managed_by_of(metadata: Mapping[str, Any]) -> ManagedBy | None:
    """Which GitOps tool manages the object, from its labels and annotations."""
    labels, annotations = metadata.get("labels"), metadata.get("annotations")
    for label, namespace_label in zip(FLUX_LABELS, FLUX_NAMESPACE_LABELS, strict=True):
        name = _text(labels, label)
        if name is not None:
            namespace = _text(labels, namespace_label)
            return ManagedBy("flux", f"{namespace}/{name}" if namespace else name)
    tracking = _text(annotations, ARGOCD_TRACKING_ANNOTATION)
    if tracking is not None:
        return ManagedBy("argocd", tracking.split(":", 1)[0])
    instance = _text(labels, INSTANCE_LABEL)
    if instance is not None:
        return ManagedBy("argocd", instance, hint=True)
    return None


@dataclass
class Parsed:
    """One SealedSecret object reduced to what the inventory needs."""

    ref: Ref
    uid: str
    resource_version: str
    generation: int
    scope: Scope = Scope.STRICT
    ciphertext_fingerprint: str = ""
    label: bytes = b""
    items: list[tuple[str, str, str]] = field(default_factory=list)  # (item, hash, ciphertext)
    synced: bool | None = None
    synced_message: str | None = None
    malformed_reason: str | None = None
    sealed_at: tuple[dt.datetime, ...] = ()  # when its items were likely sealed
    managed_by: ManagedBy | None = None      # the GitOps tool that applied it, if any

    @property
    def attributed_items(self) -> list[tuple[str, str, str]]:
        """The items attribution tries (the rest stay unattributed; the reason says so)."""
        return self.items[:MAX_ATTRIBUTED_ITEMS]


def parse(obj: Mapping[str, Any]) -> Parsed:
    """Parse one SealedSecret; never raises (problems go to ``malformed_reason``)."""
    metadata = obj.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    generation = metadata.get("generation")
    result = Parsed(ref=ref_of(obj), uid=str(metadata.get("uid") or ""),
                    resource_version=str(metadata.get("resourceVersion") or ""),
                    generation=generation if isinstance(generation, int) else 0,
                    sealed_at=sealing_times(metadata), managed_by=managed_by_of(metadata))
    try:
        _parse_status(obj, result)
        _parse_spec(obj, result)
    except (FleetError, ValueError, TypeError, AttributeError) as error:
        result.malformed_reason = str(error)[:_MAX_MESSAGE] or type(error).__name__
        result.items = []
    return result


def _parse_status(obj: Mapping[str, Any], result: Parsed) -> None:
    status = obj.get("status")
    if not isinstance(status, Mapping):
        return
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Synced":
            value = condition.get("status")
            result.synced = True if value == "True" else False if value == "False" else None
            message = condition.get("message")
            result.synced_message = str(message)[:_MAX_MESSAGE] if message else None


def _parse_spec(obj: Mapping[str, Any], result: Parsed) -> None:
    if not isinstance(obj.get("metadata"), Mapping):
        raise ValueError("metadata is missing or not a mapping")
    if not result.ref[0] or not result.ref[1]:
        raise ValueError("metadata.namespace or metadata.name is missing")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError("spec is missing or not a mapping")
    identity = identity_of(obj)
    result.scope, result.label = identity.scope, identity.label
    values = encrypted_items(obj)
    legacy = spec.get("data")
    if legacy:
        if values:
            raise ValueError("uses both spec.encryptedData and spec.data")
        if not isinstance(legacy, str):
            raise ValueError("spec.data is not a string")
        values[LEGACY_ITEM] = legacy
    result.ciphertext_fingerprint = ciphertext_fingerprint(values)
    result.items = [(item, item_hash(value, result.label), value)
                    for item, value in sorted(values.items())]
    # A bad item does not hide the good ones: they are still attributed, and the
    # reason names every bad item (no key can open those; attribution skips them).
    problems = [problem for item, value in sorted(values.items())
                if (problem := _ciphertext_problem(item, value)) is not None]
    if len(values) > MAX_ATTRIBUTED_ITEMS:
        problems.insert(0, f"{len(values)} items: only the first {MAX_ATTRIBUTED_ITEMS} are "
                           "attributed (a bound on the RSA work one object may cost)")
    if problems:
        result.malformed_reason = "; ".join(problems)[:_MAX_MESSAGE]


def _ciphertext_problem(item: str, value: str) -> str | None:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return f"item {item!r}: not valid base64"
    try:
        hybrid.split(raw)
    except FleetError:
        return f"item {item!r}: not a sealed value (too short)"
    return None


