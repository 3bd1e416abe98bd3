"""One file of a GitOps tree turned into its SealedSecret documents (pure, no I/O).

A file is a YAML stream (any number of documents) or JSON values, read by
``documents.parse_documents``, whose order gives each document its index: the 0-based
position among the file's non-empty documents, which is what ``document`` means in the
inventory and the API.  Documents of other kinds are counted and ignored; a file that
does not parse at all yields its reason (never its content) and no documents.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sealfleet.domain import documents, observed
from sealfleet.domain.scopes import Scope, scope_from_annotations
from sealfleet.errors import InputError

API_GROUP = "bitnami.com/"
KIND = "SealedSecret"
# A cluster-wide SealedSecret may leave its namespace to the tool that applies it
# (kustomize's namespace field): its label does not include one.  It is parsed under
# this stand-in and stored with namespace ''.
_NO_NAMESPACE = "-"


@dataclass(frozen=True)
class GitDocument:
    """A SealedSecret document of a file, parsed as the in-cluster observer parses one."""

    index: int
    parsed: observed.Parsed


@dataclass(frozen=True)
class ParsedFile:
    """What one file holds: how many documents, its SealedSecrets, or why it does not parse."""

    documents: int = 0
    sealed: list[GitDocument] = field(default_factory=list)
    error: str | None = None


def is_sealed_secret(doc: Mapping[str, Any]) -> bool:
    api_version = doc.get("apiVersion")
    return doc.get("kind") == KIND and isinstance(api_version, str) \
        and api_version.startswith(API_GROUP)


def parse_sealed_secret(doc: Mapping[str, Any]) -> observed.Parsed:
    """A SealedSecret as written in Git: like :func:`observed.parse`, but a cluster-wide
    one needs no namespace (nothing in its label depends on it)."""
    metadata = doc.get("metadata")
    if isinstance(metadata, Mapping) and not metadata.get("namespace"):
        annotations = metadata.get("annotations")
        scope = scope_from_annotations(annotations if isinstance(annotations, Mapping) else None)
        if scope is Scope.CLUSTER_WIDE:
            stand_in = copy.copy(dict(doc))
            stand_in["metadata"] = {**metadata, "namespace": _NO_NAMESPACE}
            parsed = observed.parse(stand_in)
            parsed.ref = ("", parsed.ref[1])
            return parsed
    return observed.parse(doc)


def parse_file(path: str, data: bytes) -> ParsedFile:
    """Every SealedSecret document of the file at *path* (named in errors) holding *data*."""
    try:
        docs = documents.parse_documents(data, source=path)
    except InputError as error:
        return ParsedFile(error=str(error))
    sealed = [GitDocument(index, parse_sealed_secret(doc))
              for index, doc in enumerate(docs) if is_sealed_secret(doc)]
    return ParsedFile(documents=len(docs), sealed=sealed)
