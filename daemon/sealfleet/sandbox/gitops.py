"""The sandbox's GitOps repository: a bare remote (what Flux's source-controller clones)
and the user's clone of it (what ``[[repos]]`` points sealfleet at), both real git.

Layout, as a ``flux bootstrap``-style fleet repository keeps one directory per cluster::

    clusters/<cluster>/kustomization.yaml              resources: the namespace directories
    clusters/<cluster>/<namespace>/kustomization.yaml  resources: the files
    clusters/<cluster>/<namespace>/<name>.yaml         one SealedSecret, as kubeseal wrote it

Each SealedSecret file is the object the cluster holds, without what the API server
and Flux add (uid, resourceVersion, status, Flux's owner labels): the same
``encryptedData``, byte for byte, so sealfleet links the two by ciphertext fingerprint.
One commit on ``main`` by ``sandbox <sandbox@localhost>``, pushed; the clone tracks it.

Flux's own objects (the GitRepository and Kustomization of :mod:`sealfleet.sandbox.flux`)
are created by the sandbox, not kept in the repository as a bootstrap would keep them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sealfleet.domain import documents

FLUX_NAME_LABEL = "kustomize.toolkit.fluxcd.io/name"
FLUX_NAMESPACE_LABEL = "kustomize.toolkit.fluxcd.io/namespace"
FLUX_NAMESPACE = "flux-system"
KUSTOMIZATION = "apps"          # the Kustomization that applies clusters/<cluster>
GIT_REPOSITORY = "flux-system"  # its source, as ``flux bootstrap`` names it
BRANCH = "main"
AUTHOR = ("sandbox", "sandbox@localhost")

# What the API server and the controllers add; a manifest in Git has none of it.
_SERVER_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp",
                    "managedFields", "selfLink", "deletionTimestamp",
                    "deletionGracePeriodSeconds", "ownerReferences", "finalizers")


def flux_labels(name: str = KUSTOMIZATION, namespace: str = FLUX_NAMESPACE) -> dict[str, str]:
    """The owner labels Flux's kustomize-controller sets on every object it applies."""
    return {FLUX_NAME_LABEL: name, FLUX_NAMESPACE_LABEL: namespace}


def cluster_path(cluster: str) -> str:
    """The Kustomization's ``spec.path`` for *cluster*."""
    return f"./clusters/{cluster}"


def document_path(cluster: str, namespace: str, name: str) -> str:
    return f"clusters/{cluster}/{namespace}/{name}.yaml"


def git_env(**extra: str) -> dict[str, str]:
    """A hermetic git: no system or global config, never a prompt, fixed identity."""
    return {"PATH": os.environ.get("PATH", ""), "HOME": os.devnull, "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": AUTHOR[0], "GIT_AUTHOR_EMAIL": AUTHOR[1],
            "GIT_COMMITTER_NAME": AUTHOR[0], "GIT_COMMITTER_EMAIL": AUTHOR[1], **extra}


def git(*args: str, cwd: Path) -> str:
    """Run one git command (setup only; blocking: call it off the event loop)."""
    done = subprocess.run(["git", "-c", "core.hooksPath=/dev/null", *args], cwd=cwd,
                          env=git_env(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]} in {cwd} failed: "
                           f"{done.stderr.decode(errors='replace').strip()[-500:]}")
    return done.stdout.decode()


@dataclasses.dataclass(frozen=True)
class GitOpsRepo:
    """Where the repository lives: *remote* (bare) and *clone* (the user's checkout)."""

    root: Path

    @property
    def remote(self) -> Path:
        return self.root / "remote.git"

    @property
    def clone(self) -> Path:
        return self.root / "clone"

    @property
    def url(self) -> str:
        """What the GitRepository's ``spec.url`` says (a local remote)."""
        return self.remote.resolve().as_uri()


def manifest_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The SealedSecret as it is kept in Git: no server fields, status or Flux labels."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in _SERVER_METADATA}
    labels = {k: v for k, v in (meta.get("labels") or {}).items()
              if k not in (FLUX_NAME_LABEL, FLUX_NAMESPACE_LABEL)}
    if labels:
        meta["labels"] = labels
    else:
        meta.pop("labels", None)
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": meta,
            "spec": obj["spec"]}


def render_document(cluster: str, obj: Mapping[str, Any]) -> str:
    meta = obj["metadata"]
    return (f"# {meta['namespace']}/{meta['name']}: sealed for {cluster} with kubeseal.\n"
            "# Only that cluster's sealed-secrets controller can open it; reseal, never "
            "edit by hand.\n" + documents.dump_yaml(manifest_of(obj)))


def _kustomization(resources: Sequence[str]) -> str:
    lines = ["apiVersion: kustomize.config.k8s.io/v1beta1", "kind: Kustomization",
             "resources:", *(f"  - {r}" for r in resources)]
    return "\n".join(lines) + "\n"


def repository_files(objects: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, str]:
    """Every file of the repository, from each cluster's Flux-applied SealedSecrets."""
    files = {"README.md": "# fleet\n\nWhat Flux applies to each sandbox cluster: "
                          "`clusters/<cluster>` is one Kustomization.\n"}
    for cluster, sealed in objects.items():
        by_namespace: dict[str, list[str]] = {}
        for obj in sealed:
            meta = obj["metadata"]
            files[document_path(cluster, meta["namespace"], meta["name"])] = \
                render_document(cluster, obj)
            by_namespace.setdefault(meta["namespace"], []).append(f"{meta['name']}.yaml")
        for namespace, names in by_namespace.items():
            files[f"clusters/{cluster}/{namespace}/kustomization.yaml"] = \
                _kustomization(sorted(names))
        files[f"clusters/{cluster}/kustomization.yaml"] = _kustomization(sorted(by_namespace))
    return files


def create_repository(root: Path, files: Mapping[str, str]) -> GitOpsRepo:
    """A fresh bare remote holding *files* in one commit on ``main``, and a clone of it
    (blocking).  What was there before under *root* is replaced: a sandbox's clusters
    are new at every start, so is what Flux applies to them."""
    repo = GitOpsRepo(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    git("init", "-q", "--bare", "-b", BRANCH, str(repo.remote), cwd=root)
    git("clone", "-q", str(repo.remote), str(repo.clone), cwd=root)
    for path, content in files.items():
        target = repo.clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git("checkout", "-q", "-b", BRANCH, cwd=repo.clone)
    git("add", "-A", cwd=repo.clone)
    git("commit", "-q", "-m", "Add the fleet's SealedSecrets", cwd=repo.clone)
    git("push", "-q", "origin", BRANCH, cwd=repo.clone)
    git("branch", "-q", f"--set-upstream-to=origin/{BRANCH}", cwd=repo.clone)
    return repo
