"""One cluster's Flux: a source-controller for its GitRepository objects and a
kustomize-controller for its Kustomization objects, both served by the apiserver
(``kubectl get gitrepositories,kustomizations -A``; ``flux`` reads the same objects).

Each GitRepository is fetched from its ``spec.url`` every ``spec.interval`` (the remote,
never a working tree).  Each Kustomization is reconciled every ``spec.interval``
(drift correction), at once when its source's artifact moves to a new revision, when
its generation changes, and on ``reconcile.fluxcd.io/requestedAt`` (``flux reconcile``);
not while ``spec.suspend`` is true.  A failure is retried after ``spec.retryInterval``
(default: ``spec.interval``).  Status as the controllers write it: ``artifact.revision``
(``main@sha1:<commit>``), ``lastAppliedRevision``, ``lastAttemptedRevision``,
``observedGeneration``, ``lastHandledReconcileAt``, the ``Ready`` condition
(ReconciliationSucceeded "Applied revision: ..." or BuildFailed, ArtifactFailed,
ReconciliationFailed) and ``inventory``.  Not emulated: dependsOn, health checks
(``wait``), postBuild, SOPS, patches, targetNamespace, Kubernetes Events, jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import Mapping
from typing import Any

import structlog

from sealfleet.sandbox.controller.flags import FlagError, parse_go_duration
from sealfleet.sandbox.flux.apply import ApplyError, apply_all, prune
from sealfleet.sandbox.flux.build import BuildError, build
from sealfleet.sandbox.flux.source import Artifact, SourceError, fetch
from sealfleet.sandbox.gitops import (
    BRANCH,
    FLUX_NAMESPACE,
    GIT_REPOSITORY,
    KUSTOMIZATION,
    cluster_path,
)
from sealfleet.sandbox.objects import ApiError, ObjectStore, now_rfc3339

_log = structlog.get_logger(__name__)

Obj = dict[str, Any]
GIT_REPOSITORIES = "gitrepositories.source.toolkit.fluxcd.io"
KUSTOMIZATIONS = "kustomizations.kustomize.toolkit.fluxcd.io"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
_IDLE = 1.0   # longest sleep between looks at the objects (they wake us when changed)


def go_duration(seconds: float) -> str:
    """Seconds as Go prints a ``time.Duration``: ``500ms``, ``30s``, ``10m0s``, ``1h0m0s``."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:g}s"
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}"
    return f"{int(minutes)}m{text}" if minutes else text


def _seconds(text: object, default: float) -> float:
    try:
        return max(parse_go_duration(str(text)).total_seconds(), 0.01)
    except FlagError:
        return default


def git_repository(url: str, *, interval: float) -> Obj:
    return {"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository",
            "metadata": {"name": GIT_REPOSITORY, "namespace": FLUX_NAMESPACE},
            "spec": {"interval": go_duration(interval), "url": url,
                     "ref": {"branch": BRANCH}, "timeout": "60s"}}


def kustomization(cluster: str, *, interval: float, prune_objects: bool) -> Obj:
    return {"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
            "metadata": {"name": KUSTOMIZATION, "namespace": FLUX_NAMESPACE},
            "spec": {"interval": go_duration(interval), "path": cluster_path(cluster),
                     "prune": prune_objects, "timeout": "5m0s",
                     "sourceRef": {"kind": "GitRepository", "name": GIT_REPOSITORY}}}


def _condition(previous: Obj | None, status: str, reason: str, message: str,
               generation: int) -> list[Obj]:
    """The Ready condition; lastTransitionTime moves only when the status does."""
    old = next((c for c in (previous or {}).get("conditions") or []
                if c.get("type") == "Ready"), None)
    since = (old.get("lastTransitionTime") if old is not None
             and old.get("status") == status else None)
    return [{"type": "Ready", "status": status, "reason": reason, "message": message,
             "observedGeneration": generation, "lastTransitionTime": since or now_rfc3339()}]


class FluxController:
    """Flux's source- and kustomize-controllers for one cluster's store."""

    def __init__(self, store: ObjectStore, *, cluster: str) -> None:
        self.store = store
        self.cluster = cluster
        self._artifacts: dict[tuple[str, str], Artifact] = {}
        self._due: dict[tuple[str, str, str], float] = {}   # (resource, ns, name): monotonic
        self._wake = asyncio.Event()
        self.reconciles = 0           # Kustomization reconciliations done (any outcome)
        self.first_pass = asyncio.Event()

    def install(self, url: str, *, interval: float, source_interval: float,
                prune_objects: bool = True) -> None:
        """The flux-system namespace, one GitRepository on *url* and one Kustomization
        of ``clusters/<cluster>``, as ``flux bootstrap`` leaves a cluster."""
        with contextlib.suppress(ApiError):
            self.store.create("namespaces", None, {"metadata": {"name": FLUX_NAMESPACE}})
        self.store.create(GIT_REPOSITORIES, FLUX_NAMESPACE,
                          git_repository(url, interval=source_interval))
        self.store.create(KUSTOMIZATIONS, FLUX_NAMESPACE,
                          kustomization(self.cluster, interval=interval,
                                        prune_objects=prune_objects))

    # ------------------------------------------------------------------ observation

    def kustomization_status(self, name: str = KUSTOMIZATION,
                             namespace: str = FLUX_NAMESPACE) -> Obj:
        try:
            return dict(self.store.get(KUSTOMIZATIONS, namespace, name).get("status") or {})
        except ApiError:
            return {}

    def last_applied_revision(self, name: str = KUSTOMIZATION,
                              namespace: str = FLUX_NAMESPACE) -> str | None:
        """The Kustomization's ``status.lastAppliedRevision`` (``main@sha1:<commit>``)."""
        revision = self.kustomization_status(name, namespace).get("lastAppliedRevision")
        return str(revision) if revision else None

    # ------------------------------------------------------------------ the loop

    def _on_change(self, event_type: str, resource: str, obj: Obj) -> None:
        if resource in (GIT_REPOSITORIES, KUSTOMIZATIONS):
            self._wake.set()

    async def run(self) -> None:
        self.store.add_listener(self._on_change)
        try:
            while True:
                self._wake.clear()
                await self.reconcile_due()
                self.first_pass.set()
                now = time.monotonic()
                wait = min([_IDLE, *(due - now for due in self._due.values())])
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
        finally:
            self.store.remove_listener(self._on_change)

    async def reconcile_due(self) -> None:
        """One look at every GitRepository, then every Kustomization: what is due runs."""
        repositories, _ = self.store.list(GIT_REPOSITORIES, None)
        for repository in repositories:
            if self._is_due(GIT_REPOSITORIES, repository):
                await self._reconcile_source(repository)
        kustomizations, _ = self.store.list(KUSTOMIZATIONS, None)
        for item in kustomizations:
            if self._is_due(KUSTOMIZATIONS, item) or self._source_moved(item):
                await self._reconcile_kustomization(item)

    def _is_due(self, resource: str, obj: Obj) -> bool:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        status = obj.get("status") or {}
        if spec.get("suspend"):
            return False
        key = (resource, meta["namespace"], meta["name"])
        requested = (meta.get("annotations") or {}).get(REQUESTED_AT)
        return (key not in self._due or time.monotonic() >= self._due[key]
                or status.get("observedGeneration") != meta.get("generation")
                or (requested is not None and requested != status.get("lastHandledReconcileAt")))

    def _source_moved(self, obj: Obj) -> bool:
        if (obj.get("spec") or {}).get("suspend"):
            return False
        artifact = self._artifacts.get(self._source_of(obj))
        return artifact is not None and artifact.revision != (
            obj.get("status") or {}).get("lastAttemptedRevision")

    def _source_of(self, obj: Obj) -> tuple[str, str]:
        ref = (obj.get("spec") or {}).get("sourceRef") or {}
        return (str(ref.get("namespace") or obj["metadata"]["namespace"]), str(ref.get("name")))

    def _schedule(self, resource: str, obj: Obj, *, failed: bool) -> None:
        spec = obj.get("spec") or {}
        interval = _seconds(spec.get("interval"), 600.0)
        if failed:
            interval = _seconds(spec.get("retryInterval"), interval)
        meta = obj["metadata"]
        self._due[(resource, meta["namespace"], meta["name"])] = time.monotonic() + interval

    def _write_status(self, resource: str, obj: Obj, status: Obj) -> None:
        meta = obj["metadata"]
        try:
            self.store.update(resource, meta["namespace"], meta["name"],
                              {"metadata": {"name": meta["name"],
                                            "namespace": meta["namespace"]},
                               "status": status}, subresource="status")
        except ApiError as error:
            if error.code != 404:   # deleted meanwhile: nothing to report on
                raise

    async def _reconcile_source(self, obj: Obj) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        key = (meta["namespace"], meta["name"])
        status = copy.deepcopy(obj.get("status") or {})
        generation = int(meta.get("generation", 1))
        branch = str((spec.get("ref") or {}).get("branch") or "master")
        try:
            artifact = await fetch(str(spec.get("url", "")), branch, self._artifacts.get(key))
        except SourceError as error:
            status["conditions"] = _condition(status, "False", "GitOperationFailed",
                                              str(error), generation)
            _log.warning("flux_source_failed", cluster=self.cluster, source=meta["name"],
                         error=str(error))
            failed = True
        else:
            moved = self._artifacts.get(key) != artifact
            self._artifacts[key] = artifact
            previous = status.get("artifact") or {}
            status["artifact"] = {
                "revision": artifact.revision, "path": f"gitrepository/{key[0]}/{key[1]}/"
                f"{artifact.commit}.tar.gz",
                "lastUpdateTime": now_rfc3339() if previous.get("revision")
                != artifact.revision else previous.get("lastUpdateTime")}
            status["conditions"] = _condition(
                status, "True", "Succeeded",
                f"stored artifact for revision '{artifact.revision}'", generation)
            if moved:
                _log.info("flux_source_fetched", cluster=self.cluster, source=meta["name"],
                          revision=artifact.revision)
            failed = False
        status["observedGeneration"] = generation
        self._handled(meta, status)
        self._write_status(GIT_REPOSITORIES, obj, status)
        self._schedule(GIT_REPOSITORIES, obj, failed=failed)

    @staticmethod
    def _handled(meta: Mapping[str, Any], status: Obj) -> None:
        requested = (meta.get("annotations") or {}).get(REQUESTED_AT)
        if requested is not None:
            status["lastHandledReconcileAt"] = requested

    async def _reconcile_kustomization(self, obj: Obj) -> None:
        meta, spec = obj["metadata"], obj.get("spec") or {}
        owner = (str(meta["name"]), str(meta["namespace"]))
        status = copy.deepcopy(obj.get("status") or {})
        generation = int(meta.get("generation", 1))
        artifact = self._artifacts.get(self._source_of(obj))
        started = time.monotonic()
        self.reconciles += 1
        failed = True
        if artifact is None:
            retry = spec.get("retryInterval") or spec.get("interval")
            reason, message = "ArtifactFailed", f"Source artifact not found, retrying in {retry}"
        else:
            status["lastAttemptedRevision"] = artifact.revision
            try:
                objects = build(artifact.files, str(spec.get("path") or "./"))
                changes = apply_all(self.store, objects, owner=owner)
                if spec.get("prune"):
                    prune(self.store, (status.get("inventory") or {}).get("entries") or [],
                          changes, owner=owner)
            except BuildError as error:
                reason, message = "BuildFailed", str(error)
            except ApplyError as error:
                reason, message = "ReconciliationFailed", str(error)
            else:
                failed = False
                reason, message = ("ReconciliationSucceeded",
                                   f"Applied revision: {artifact.revision}")
                status["lastAppliedRevision"] = artifact.revision
                status["inventory"] = {"entries": changes.entries}
                touched = {a: changes.count(a) for a in ("created", "configured", "deleted")}
                if any(touched.values()):
                    _log.info("flux_applied", cluster=self.cluster, kustomization=owner[0],
                              revision=artifact.revision, **touched)
        if failed:
            _log.warning("flux_reconcile_failed", cluster=self.cluster,
                         kustomization=owner[0], reason=reason, error=message)
        status["observedGeneration"] = generation
        status["conditions"] = _condition(status, "False" if failed else "True", reason,
                                          message, generation)
        self._handled(meta, status)
        self._write_status(KUSTOMIZATIONS, obj, status)
        self._schedule(KUSTOMIZATIONS, obj, failed=failed)
        _log.debug("flux_reconciled", cluster=self.cluster, kustomization=owner[0],
                   seconds=round(time.monotonic() - started, 3))

