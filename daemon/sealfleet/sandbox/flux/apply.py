"""How kustomize-controller applies a built revision: server-side apply with drift
correction, then garbage collection, through the cluster's ObjectStore (so every change
bumps resourceVersion and generation and emits watch events like any other write).

Matched (from the kustomize-controller docs and its ``apply``):

- every object gets the owner labels ``kustomize.toolkit.fluxcd.io/name`` and
  ``kustomize.toolkit.fluxcd.io/namespace``;
- ``kustomize.toolkit.fluxcd.io/reconcile: disabled`` (label or annotation, in Git or on
  the in-cluster object) and ``kustomize.toolkit.fluxcd.io/ssa: Ignore`` skip the object,
  nor is it pruned; ``ssa: IfNotPresent`` only creates it; ``ssa: Merge`` keeps fields
  other tools added;
- the default policy (``Override``) undoes in-cluster edits: what Git says of the object
  is put back.  The sandbox keeps no managedFields, so "what Git says" is every field
  outside metadata and status (the whole ``spec`` of a SealedSecret), plus the labels and
  annotations Git sets (others' labels and annotations stay, as SSA leaves fields it
  does not own; ``kubectl.kubernetes.io/last-applied-configuration`` is removed as
  Flux's cleanup removes it).  Real SSA would also keep spec fields another controller
  (not kubectl) added; no such controller writes a SealedSecret's spec;
- with ``prune``, objects of the previous inventory that the revision no longer has are
  deleted, unless marked ``kustomize.toolkit.fluxcd.io/prune: disabled`` or no longer
  carrying this Kustomization's owner labels.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from typing import Any

from sealfleet.sandbox.gitops import FLUX_NAME_LABEL, FLUX_NAMESPACE_LABEL
from sealfleet.sandbox.objects import RESOURCE_TYPES, ApiError, ObjectStore, ResourceType

Obj = dict[str, Any]
GROUP = "kustomize.toolkit.fluxcd.io"
RECONCILE = f"{GROUP}/reconcile"
SSA = f"{GROUP}/ssa"
PRUNE = f"{GROUP}/prune"
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_NOT_SPEC = ("metadata", "status", "apiVersion", "kind")
_CONFLICT_RETRIES = 5


class ApplyError(Exception):
    """The Kustomization's Ready=False ReconciliationFailed message."""


@dataclasses.dataclass
class ChangeSet:
    """What one apply did: inventory entries (``{"id", "v"}``) and each object's action
    (``created``, ``configured``, ``unchanged``, ``skipped``, ``deleted``)."""

    entries: list[dict[str, str]] = dataclasses.field(default_factory=list)
    actions: dict[str, str] = dataclasses.field(default_factory=dict)

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions.values() if a == action)


def _rtype(obj: Obj) -> ResourceType:
    for rtype in RESOURCE_TYPES.values():
        if rtype.kind == obj.get("kind") and rtype.api_version == obj.get("apiVersion"):
            return rtype
    meta = obj.get("metadata") or {}
    raise ApplyError(f"{obj.get('kind')}/{meta.get('namespace', '')}/{meta.get('name')} "
                     f"dry-run failed: no matches for kind \"{obj.get('kind')}\" in version "
                     f"\"{obj.get('apiVersion')}\"")


def object_id(rtype: ResourceType, namespace: str, name: str) -> str:
    """An inventory id: ``<namespace>_<name>_<group>_<kind>``."""
    return f"{namespace}_{name}_{rtype.group}_{rtype.kind}"


def _marked(obj: Obj | None, key: str, value: str) -> bool:
    if obj is None:
        return False
    meta = obj.get("metadata") or {}
    return any(str((meta.get(field) or {}).get(key, "")).lower() == value.lower()
               for field in ("labels", "annotations"))


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _deep_merge(base.get(key), value)
        return merged
    return copy.deepcopy(over)


def desired_state(existing: Obj, desired: Obj, *, merge: bool) -> Obj:
    """The object after an apply of *desired* onto *existing* (see the module doc)."""
    result = copy.deepcopy(existing)
    meta = result["metadata"]
    for field in ("labels", "annotations"):
        combined = dict(meta.get(field) or {})
        combined.update(desired["metadata"].get(field) or {})
        combined.pop(_LAST_APPLIED, None)
        if combined:
            meta[field] = combined
        else:
            meta.pop(field, None)
    for key, value in desired.items():
        if key in _NOT_SPEC:
            continue
        result[key] = _deep_merge(existing.get(key), value) if merge else copy.deepcopy(value)
    return result


def _get(store: ObjectStore, rtype: ResourceType, namespace: str, name: str) -> Obj | None:
    try:
        return store.get(rtype.key, namespace or None, name)
    except ApiError as error:
        if error.code == 404:
            return None
        raise


def _apply_one(store: ObjectStore, rtype: ResourceType, desired: Obj) -> str:
    meta = desired["metadata"]
    namespace = str(meta.get("namespace") or "") if rtype.namespaced else ""
    if rtype.namespaced and not namespace:
        raise ApplyError(f"{rtype.kind}/{meta['name']} namespace not specified: the "
                         "sandbox's Flux sets no targetNamespace")
    for _ in range(_CONFLICT_RETRIES):
        existing = _get(store, rtype, namespace, meta["name"])
        if _marked(desired, RECONCILE, "disabled") or _marked(existing, RECONCILE, "disabled") \
                or _marked(desired, SSA, "Ignore") or _marked(existing, SSA, "Ignore"):
            return "skipped"
        if existing is None:
            store.create(rtype.key, namespace or None, copy.deepcopy(desired))
            return "created"
        if _marked(desired, SSA, "IfNotPresent") or _marked(existing, SSA, "IfNotPresent"):
            return "skipped"
        applied = desired_state(existing, desired, merge=_marked(desired, SSA, "Merge"))
        if applied == existing:
            return "unchanged"
        try:
            store.update(rtype.key, namespace or None, meta["name"], applied)
        except ApiError as error:
            if error.code == 409:
                continue  # another writer got there first: read it again, as SSA retries
            raise
        return "configured"
    raise ApplyError(f"{rtype.kind}/{namespace}/{meta['name']}: conflicts kept coming")


def apply_all(store: ObjectStore, objects: Iterable[Obj], *, owner: tuple[str, str],
              ) -> ChangeSet:
    """Apply every built object with the owner labels of Kustomization *owner* (name,
    namespace); Namespaces first, as the controller applies cluster-wide kinds first."""
    name, namespace = owner
    planned = []
    for obj in objects:
        rtype = _rtype(obj)
        desired = copy.deepcopy(obj)
        meta = desired["metadata"]
        labels = dict(meta.get("labels") or {})
        labels.update({FLUX_NAME_LABEL: name, FLUX_NAMESPACE_LABEL: namespace})
        meta["labels"] = labels
        planned.append((rtype, desired))
    planned.sort(key=lambda pair: pair[0].plural != "namespaces")
    changes = ChangeSet()
    for rtype, desired in planned:
        meta = desired["metadata"]
        ref = object_id(rtype, str(meta.get("namespace") or ""), str(meta["name"]))
        try:
            changes.actions[ref] = _apply_one(store, rtype, desired)
        except ApiError as error:
            raise ApplyError(f"{rtype.kind}/{meta.get('namespace', '')}/{meta['name']} "
                             f"apply failed: {error.message}") from None
        changes.entries.append({"id": ref, "v": rtype.version})
    return changes


def prune(store: ObjectStore, previous: Iterable[dict[str, str]], changes: ChangeSet, *,
          owner: tuple[str, str]) -> None:
    """Delete what the previous inventory had and this apply does not (see module doc)."""
    kept = {entry["id"] for entry in changes.entries}
    by_kind = {(rt.group, rt.kind): rt for rt in RESOURCE_TYPES.values()}
    for entry in previous:
        if entry["id"] in kept:
            continue
        namespace, name, group, kind = entry["id"].split("_", 3)
        rtype = by_kind.get((group, kind))
        if rtype is None:
            continue
        existing = _get(store, rtype, namespace, name)
        labels = ((existing or {}).get("metadata") or {}).get("labels") or {}
        if existing is None or labels.get(FLUX_NAME_LABEL) != owner[0] \
                or labels.get(FLUX_NAMESPACE_LABEL) != owner[1] \
                or _marked(existing, PRUNE, "disabled") \
                or _marked(existing, RECONCILE, "disabled"):
            continue
        try:
            store.delete(rtype.key, namespace or None, name)
        except ApiError as error:
            if error.code != 404:   # gone meanwhile: what pruning wanted
                raise ApplyError(f"{kind}/{namespace}/{name} prune failed: "
                                 f"{error.message}") from None
        changes.actions[entry["id"]] = "deleted"
