"""What ``kustomize build`` gives kustomize-controller for ``spec.path``, as far as a
fleet repository of plain manifests needs: no patches, generators or transformers.

A directory with a ``kustomization.yaml`` yields its ``resources`` in order (files and
directories, the latter built the same way); a directory without one is built as the
controller builds it, from a generated kustomization of every manifest below it
(``kustomize create --autodetect --recursive``), a subdirectory with its own
kustomization counting as one resource.  Any error fails the whole build, so nothing
of a broken revision is applied.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from sealfleet.domain import documents
from sealfleet.errors import InputError

Obj = dict[str, Any]
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class BuildError(Exception):
    """The Kustomization's Ready=False BuildFailed message."""


def _normal(path: str) -> str:
    normal = posixpath.normpath(path.lstrip("/")) if path not in ("", ".", "./") else "."
    if normal.startswith(".."):
        raise BuildError(f"path {path!r} is outside the source")
    return normal


def _is_dir(files: Mapping[str, bytes], path: str) -> bool:
    prefix = "" if path == "." else f"{path}/"
    return any(name.startswith(prefix) for name in files)


def _join(directory: str, name: str) -> str:
    return _normal(name if directory == "." else f"{directory}/{name}")


def _kustomization_of(files: Mapping[str, bytes], directory: str) -> str | None:
    for name in KUSTOMIZATION_FILES:
        path = _join(directory, name)
        if path in files:
            return path
    return None


def _documents(files: Mapping[str, bytes], path: str) -> list[Obj]:
    try:
        docs = documents.parse_documents(files[path], source=path)
    except InputError as error:
        raise BuildError(f"kustomize build failed: {error}") from None
    for index, doc in enumerate(docs):
        meta = doc.get("metadata")
        if not doc.get("apiVersion") or not doc.get("kind") or not isinstance(meta, dict) \
                or not meta.get("name"):
            raise BuildError(f"kustomize build failed: {path}: document {index}: missing "
                             "apiVersion, kind or metadata.name")
    return docs


def _build_dir(files: Mapping[str, bytes], directory: str, out: list[Obj],
               visiting: set[str]) -> None:
    if directory in visiting:
        raise BuildError(f"kustomize build failed: cycle through {directory}")
    visiting = visiting | {directory}
    kustomization = _kustomization_of(files, directory)
    if kustomization is None:
        _generated(files, directory, out, visiting)
        return
    spec = _documents_of_kustomization(files, kustomization)
    for resource in spec:
        path = _join(directory, resource)
        if path in files:
            out.extend(_documents(files, path))
        elif _is_dir(files, path):
            _build_dir(files, path, out, visiting)
        else:
            raise BuildError(f"kustomize build failed: accumulating resources from "
                             f"'{resource}': '{path}' must resolve to an existing file "
                             "or directory")


def _documents_of_kustomization(files: Mapping[str, bytes], path: str) -> list[str]:
    try:
        (doc,) = documents.parse_documents(files[path], source=path)
    except (InputError, ValueError):
        raise BuildError(f"kustomize build failed: {path}: not one kustomization") from None
    resources = doc.get("resources") or []
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise BuildError(f"kustomize build failed: {path}: resources must be a list of paths")
    return list(resources)


def _generated(files: Mapping[str, bytes], directory: str, out: list[Obj],
               visiting: set[str]) -> None:
    prefix = "" if directory == "." else f"{directory}/"
    below = sorted(name[len(prefix):] for name in files if name.startswith(prefix))
    nested: set[str] = set()
    for relative in below:
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            sub = "/".join(parts[:depth])
            if _kustomization_of(files, _join(directory, sub)) is not None:
                if sub not in nested:
                    nested.add(sub)
                    _build_dir(files, _join(directory, sub), out, visiting)
                break
        else:
            if relative.endswith(_MANIFEST_SUFFIXES):
                out.extend(_documents(files, _join(directory, relative)))


def build(files: Mapping[str, bytes], path: str) -> list[Obj]:
    """The objects ``spec.path`` builds to, in order; each (kind, namespace, name) once."""
    root = _normal(path)
    if root != "." and not _is_dir(files, root):
        raise BuildError(f"kustomization path not found: stat {path}: no such file or "
                         "directory")
    out: list[Obj] = []
    _build_dir(files, root, out, set())
    seen: set[tuple[str, str, str, str]] = set()
    for obj in out:
        meta = obj["metadata"]
        key = (str(obj["apiVersion"]).split("/")[0], str(obj["kind"]),
               str(meta.get("namespace", "")), str(meta["name"]))
        if key in seen:
            raise BuildError(f"kustomize build failed: may not add resource with an already "
                             f"registered id: {obj['kind']}/{meta['name']}")
        seen.add(key)
    return out
