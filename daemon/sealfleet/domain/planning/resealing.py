"""Which SealedSecrets to reseal, where, and with which key: a pure planner.

Input is what the inventory knows, as plain records defined here (so planning does
not depend on the store): SealedSecrets observed in clusters, SealedSecret documents
found in Git repositories, and the key each cluster or repository should seal with now
(the fleet master key in master mode).  Output is a :class:`ResealPlan`: what to
reseal, in a cluster or in a repository, and what cannot be, with a one-line reason.

Rules:

- An object's state is judged against its *target* key (``staleness.classify``): an
  item sealed with another key is ``stale``, with a compromised key ``compromised``.
  By default stale and compromised objects are resealed; any set of states may be chosen.
- An object managed by a GitOps tool (Flux, Argo CD: ``observed.ManagedBy``, a mere
  hint included) is resealed in its repository, never in the cluster, where the tool
  would put the old ciphertext back.  One whose repository sealfleet does not know is
  reported, not planned.
- A cluster object and the repository document it comes from are planned once, as the
  document.
- An object with an item no known key opens, or (when the held private keys are given)
  sealed with a key whose private half sealfleet does not hold, is reported.
"""

from __future__ import annotations

import enum
import fnmatch
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sealfleet.domain.observed import ManagedBy
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import KeyContext, SecretState, classify

DEFAULT_STATES = frozenset({SecretState.STALE, SecretState.COMPROMISED})


class Source(enum.StrEnum):
    """Where a reseal is written."""

    CLUSTER = "cluster"
    GIT = "git"


@dataclass(frozen=True)
class ItemKey:
    """One item and the fingerprint of the key that sealed it (None: no known key opens it)."""

    item: str
    fingerprint: str | None


def describe(managed_by: ManagedBy) -> str:
    """``managed by Flux flux-system/apps``, ``managed by Argo CD application web``."""
    if managed_by.tool == "flux":
        return f"managed by Flux {managed_by.name}"
    if managed_by.hint:
        return (f"possibly managed by Argo CD application {managed_by.name} (its "
                "app.kubernetes.io/instance label; Helm sets it too)")
    return f"managed by Argo CD application {managed_by.name}"


@dataclass(frozen=True)
class GitOrigin:
    """The configured repository, file and document a cluster object was applied from."""

    repo: str
    path: str
    document: int | None = None


@dataclass(frozen=True)
class ClusterSealedSecret:
    """A SealedSecret as last observed in a cluster."""

    cluster: str
    namespace: str
    name: str
    scope: Scope
    items: tuple[ItemKey, ...]
    state: SecretState
    managed_by: ManagedBy | None = None
    origin: GitOrigin | None = None


@dataclass(frozen=True)
class GitSealedSecret:
    """A SealedSecret document in a configured repository (*clusters*: where it is
    deployed, when known)."""

    repo: str
    path: str
    document: int
    namespace: str
    name: str
    scope: Scope
    items: tuple[ItemKey, ...]
    clusters: tuple[str, ...] = ()


@dataclass(frozen=True)
class Targets:
    """The key everything should be sealed with now, and what is known about keys.

    *repo_keys* also names the configured repositories (None: no key set for it; a
    repository then takes the key of the clusters it deploys to, when they agree).
    *held* lists the fingerprints whose private key sealfleet holds (None: not checked).
    """

    cluster_keys: Mapping[str, str | None]
    repo_keys: Mapping[str, str | None] = field(default_factory=dict)
    master_key: str | None = None
    compromised: frozenset[str] = frozenset()
    held: frozenset[str] | None = None


@dataclass(frozen=True)
class Selection:
    """What to consider: states, and filters (None: any).  Namespaces and names are
    shell patterns (``team-*``); *sources* select where the reseal would be written."""

    states: frozenset[SecretState] = DEFAULT_STATES
    clusters: frozenset[str] | None = None
    repos: frozenset[str] | None = None
    namespaces: tuple[str, ...] | None = None
    names: tuple[str, ...] | None = None
    scopes: frozenset[Scope] | None = None
    sources: frozenset[Source] | None = None


@dataclass(frozen=True)
class PlannedReseal:
    """One SealedSecret to reseal: in *cluster*, or in *repo* at *path* (document
    *document*; None when only the file is known)."""

    source: Source
    reason: SecretState
    namespace: str
    name: str
    scope: Scope
    target_key: str
    items: tuple[ItemKey, ...]
    cluster: str | None = None
    repo: str | None = None
    path: str | None = None
    document: int | None = None
    clusters: tuple[str, ...] = ()  # git: the clusters it is deployed to, when known

    @property
    def ref(self) -> str:
        if self.source is Source.CLUSTER:
            return f"{self.cluster}/{self.namespace}/{self.name}"
        return _git_ref(self.repo or "", self.path or "", self.document, self.namespace,
                        self.name)

    @property
    def old_keys(self) -> tuple[str, ...]:
        """The keys whose items this reseal replaces."""
        return tuple(sorted({i.fingerprint for i in self.items
                             if i.fingerprint is not None and i.fingerprint != self.target_key}))


@dataclass(frozen=True)
class NotPlanned:
    """A selected SealedSecret that cannot be resealed, and why (one line)."""

    ref: str
    source: Source
    reason: str
    state: SecretState
    cluster: str | None = None
    repo: str | None = None


@dataclass(frozen=True)
class ResealPlan:
    """What to reseal, what cannot be (and why), and where nothing could be judged."""

    planned: tuple[PlannedReseal, ...]
    not_planned: tuple[NotPlanned, ...]
    warnings: tuple[str, ...] = ()

    def by_destination(self) -> dict[tuple[Source, str], list[PlannedReseal]]:
        """Planned reseals per (source, cluster or repository): one write unit each."""
        groups: dict[tuple[Source, str], list[PlannedReseal]] = {}
        for entry in self.planned:
            where = entry.cluster if entry.source is Source.CLUSTER else entry.repo
            groups.setdefault((entry.source, where or ""), []).append(entry)
        return groups

    def dry_run(self) -> dict[str, object]:
        """The plan as a JSON-ready document: counts per cluster, repository and reason,
        then every entry (fingerprints and object names only)."""
        return {
            "planned": len(self.planned),
            "items": sum(len(p.items) for p in self.planned),
            "not_planned": len(self.not_planned),
            "by_cluster": dict(sorted(Counter(
                p.cluster for p in self.planned if p.cluster is not None).items())),
            "by_repository": dict(sorted(Counter(
                p.repo for p in self.planned if p.repo is not None).items())),
            "by_reason": dict(sorted(Counter(p.reason.value for p in self.planned).items())),
            "reseals": [{
                "ref": p.ref, "source": p.source.value, "reason": p.reason.value,
                "cluster": p.cluster, "repository": p.repo, "path": p.path,
                "document": p.document, "namespace": p.namespace,
                "name": p.name, "scope": p.scope.cli_name, "target_key": p.target_key,
                "old_keys": list(p.old_keys), "items": [i.item for i in p.items],
                "clusters": list(p.clusters)} for p in self.planned],
            "not_resealable": [{"ref": n.ref, "source": n.source.value, "state": n.state.value,
                                "reason": n.reason} for n in self.not_planned],
            "warnings": list(self.warnings),
        }


# ------------------------------------------------------------------------ planning


def _git_ref(repo: str, path: str, index: int | None, namespace: str, name: str) -> str:
    """``repo:path#index``, or ``repo:path#namespace/name`` while the index is not known."""
    return f"{repo}:{path}#{namespace}/{name}" if index is None else f"{repo}:{path}#{index}"


def _matches(patterns: tuple[str, ...] | None, value: str) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _selected(selection: Selection, source: Source, namespace: str, name: str, scope: Scope,
              clusters: Iterable[str], repo: str | None) -> bool:
    if selection.sources is not None and source not in selection.sources:
        return False
    if selection.clusters is not None and selection.clusters.isdisjoint(clusters):
        return False
    if selection.repos is not None and repo not in selection.repos:
        return False
    if selection.scopes is not None and scope not in selection.scopes:
        return False
    return _matches(selection.namespaces, namespace) and _matches(selection.names, name)


def _state(items: tuple[ItemKey, ...], target: str | None, targets: Targets, *,
           recorded: SecretState | None = None) -> SecretState | None:
    """The state against *target*; None when there is no target to judge by (only a
    compromised key can be told then)."""
    keys = [i.fingerprint for i in items]
    if target is None:
        compromised = any(k in targets.compromised for k in keys)
        return SecretState.COMPROMISED if compromised else None
    return classify(keys, KeyContext(target, targets.compromised),
                    synced=False if recorded is SecretState.FAILING else None,
                    malformed=not items and recorded is SecretState.UNKNOWN)


def _blocker(items: tuple[ItemKey, ...], target: str, targets: Targets) -> str | None:
    """Why these items cannot be resealed for *target*, or None."""
    if not items:
        return "has no items sealfleet can read"
    unknown = [i.item for i in items if i.fingerprint is None]
    if unknown:
        return "item(s) " + ", ".join(repr(i) for i in unknown) + " open with no known key"
    if targets.held is not None:
        missing = sorted({i.fingerprint for i in items if i.fingerprint is not None
                          and i.fingerprint != target and i.fingerprint not in targets.held})
        if missing:
            return "sealed with key(s) whose private key sealfleet does not hold: " + \
                ", ".join(missing)
    return None


def _repo_target(repo: str, clusters: Iterable[str], targets: Targets) -> tuple[str | None, str]:
    """The key a repository document should be sealed with, or None and why not."""
    if targets.master_key is not None:
        return targets.master_key, ""
    if targets.repo_keys.get(repo):
        return targets.repo_keys[repo], ""
    keys = {targets.cluster_keys.get(c) for c in clusters}
    if len(keys) == 1 and None not in keys:
        return keys.pop(), ""
    if len(keys) > 1 and None not in keys:
        return None, (f"repository {repo} deploys it to clusters with different sealing "
                      f"keys ({', '.join(sorted(clusters))}): set the repository's key")
    return None, f"no sealing key known for repository {repo}"


class _Planner:
    """One planning pass: the plan's lists, and what could not be judged, per place."""

    def __init__(self, targets: Targets, selection: Selection) -> None:
        self.targets = targets
        self.selection = selection
        self.planned: list[PlannedReseal] = []
        self.not_planned: list[NotPlanned] = []
        self.unjudged: Counter[str] = Counter()

    def judge(self, items: tuple[ItemKey, ...], target: str | None, why: str, *,
              recorded: SecretState | None = None) -> SecretState | None:
        """The state when selected; None when not (or not judged for *why*: counted)."""
        state = _state(items, target, self.targets, recorded=recorded)
        if state is None:
            self.unjudged[why] += 1
            return None
        return state if state in self.selection.states else None

    def cluster_object(self, obj: ClusterSealedSecret) -> None:
        ref = f"{obj.cluster}/{obj.namespace}/{obj.name}"
        target = self.targets.master_key or self.targets.cluster_keys.get(obj.cluster)
        if not _selected(self.selection, Source.CLUSTER, obj.namespace, obj.name, obj.scope,
                         (obj.cluster,), None):
            return
        unknown = f"no sealing key known for cluster {obj.cluster}"
        state = self.judge(obj.items, target, unknown, recorded=obj.state)
        if state is None:
            return
        reason = unknown if target is None else _blocker(obj.items, target, self.targets)
        if reason is not None or target is None:
            self.not_planned.append(NotPlanned(ref, Source.CLUSTER, reason or "", state,
                                               cluster=obj.cluster))
            return
        self.planned.append(PlannedReseal(Source.CLUSTER, state, obj.namespace, obj.name,
                                          obj.scope, target, obj.items, cluster=obj.cluster))

    def unroutable(self, obj: ClusterSealedSecret) -> None:
        """A GitOps-managed object whose repository sealfleet does not know: reported."""
        origin = obj.origin
        if not _selected(self.selection, Source.GIT, obj.namespace, obj.name, obj.scope,
                         (obj.cluster,), origin.repo if origin else None):
            return
        target = self.targets.master_key or self.targets.cluster_keys.get(obj.cluster)
        state = self.judge(obj.items, target, f"no sealing key known for cluster {obj.cluster}",
                           recorded=obj.state)
        if state is None:
            return
        managed = describe(obj.managed_by) if obj.managed_by else "applied from Git"
        where = f" {origin.repo}" if origin else ""
        self.not_planned.append(NotPlanned(
            f"{obj.cluster}/{obj.namespace}/{obj.name}", Source.GIT,
            f"{managed}; add its repository{where} to reseal it there", state,
            cluster=obj.cluster))

    def document(self, repo: str, path: str, index: int | None, namespace: str, name: str,
                 scope: Scope, items: tuple[ItemKey, ...], clusters: tuple[str, ...]) -> None:
        if not _selected(self.selection, Source.GIT, namespace, name, scope, clusters, repo):
            return
        target, why = _repo_target(repo, clusters, self.targets)
        state = self.judge(items, target, why)
        if state is None:
            return
        ref = _git_ref(repo, path, index, namespace, name)
        reason = why if target is None else _blocker(items, target, self.targets)
        if reason is not None or target is None:
            self.not_planned.append(NotPlanned(ref, Source.GIT, reason or why, state,
                                               repo=repo))
            return
        self.planned.append(PlannedReseal(Source.GIT, state, namespace, name, scope, target,
                                          items, repo=repo, path=path, document=index,
                                          clusters=clusters))

    def plan(self) -> ResealPlan:
        planned = sorted(self.planned, key=lambda p: (
            p.source, p.cluster or "", p.repo or "", p.path or "",
            -1 if p.document is None else p.document, p.namespace, p.name,
            _items_key(p.items), p.reason, p.scope, p.target_key, p.clusters))
        warnings = tuple(f"{count} SealedSecret(s) not judged: {why}"
                         for why, count in sorted(self.unjudged.items()))
        return ResealPlan(tuple(planned),
                          tuple(sorted(self.not_planned, key=lambda n: (
                              n.source, n.ref, n.reason, n.state, n.cluster or "",
                              n.repo or ""))),
                          warnings)


def _items_key(items: tuple[ItemKey, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((i.item, i.fingerprint or "") for i in items)


# Total orders over the inputs: the store never holds two objects (or documents) with
# one identity, but the planner must not depend on that for its answer, nor on the
# order the inputs come in (a dict built from them keeps the last of equal keys).
def _object_key(obj: ClusterSealedSecret) -> tuple[object, ...]:
    origin = obj.origin
    return (obj.cluster, obj.namespace, obj.name, obj.scope, _items_key(obj.items),
            obj.state, repr(obj.managed_by),
            () if origin is None else (origin.repo, origin.path,
                                       -1 if origin.document is None else origin.document))


def _document_key(doc: GitSealedSecret) -> tuple[object, ...]:
    return (doc.repo, doc.path, doc.document, doc.namespace, doc.name, doc.scope,
            _items_key(doc.items), doc.clusters)


def plan_reseal(cluster_objects: Iterable[ClusterSealedSecret],
                git_documents: Iterable[GitSealedSecret], targets: Targets,
                selection: Selection = Selection()) -> ResealPlan:
    """Plan a reseal (see the module docstring); the result is sorted, so equal inputs
    in any order give equal plans."""
    planner = _Planner(targets, selection)
    documents: dict[tuple[str, str, int | None], GitSealedSecret] = {
        (d.repo, d.path, d.document): d for d in sorted(git_documents, key=_document_key)}
    by_name = {(d.repo, d.path, d.namespace, d.name): k for k, d in documents.items()}
    deployed = {k: set(d.clusters) for k, d in documents.items()}
    # Cluster objects known from their cluster only (the repository not walked yet, or
    # the file moved): planned by file and document (or name, without an index); the
    # write side checks that the document is the object it expects.
    loose: dict[tuple[str, str, int | str], list[ClusterSealedSecret]] = {}
    for obj in sorted(cluster_objects, key=_object_key):
        origin = obj.origin
        if obj.managed_by is None and origin is None:
            planner.cluster_object(obj)
        elif origin is None or origin.repo not in targets.repo_keys:
            planner.unroutable(obj)
        else:
            key = (origin.repo, origin.path, origin.document)
            if key not in documents:  # no index, or the file changed since: by name
                key = by_name.get((origin.repo, origin.path, obj.namespace, obj.name), key)
            if key in deployed:
                deployed[key].add(obj.cluster)
            else:
                where = (origin.document if origin.document is not None
                         else f"{obj.namespace}/{obj.name}")
                loose.setdefault((origin.repo, origin.path, where), []).append(obj)
    for key, document in documents.items():
        planner.document(document.repo, document.path, document.document,
                         document.namespace, document.name, document.scope, document.items,
                         tuple(sorted(deployed[key])))
    for (repo, path, _), objs in sorted(loose.items(), key=lambda kv: str(kv[0])):
        first = min(objs, key=_object_key)
        index = first.origin.document if first.origin else None
        planner.document(repo, path, index, first.namespace, first.name, first.scope,
                         first.items, tuple(sorted({o.cluster for o in objs})))
    return planner.plan()
