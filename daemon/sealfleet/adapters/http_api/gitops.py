"""The API's GitOps parts: Git documents in ``/api/v1/sealed-secrets``, provenance and
management of in-cluster objects, and ``POST /api/v1/check``.

``/api/v1/sealed-secrets?source=git`` pages the SealedSecret documents found in the
configured repos (``source=cluster``, the default, the in-cluster objects, each with
``git``: the document it was applied from, and ``managed_by``: the GitOps tool).

``POST /api/v1/check`` takes SealedSecrets (``object``) or whole manifest files
(``content``, of which only SealedSecret documents are checked) and answers, per
document and cluster, whether the cluster can unseal it and whether it is sealed with
the cluster's current key.  The daemon's keys attribute the items (the RSA session-key
unwrap only); nothing decrypted is returned, and neither errors nor logs quote what
was sent.  It reads, so the read token is enough on TCP.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, Protocol

from sealfleet.adapters.git import manifests
from sealfleet.adapters.store.records import GitLink, GitSealedSecretRecord, SealedSecretRecord
from sealfleet.domain import check, documents
from sealfleet.domain.staleness import SecretState, iso
from sealfleet.errors import InputError

CHECK_PATH = "/api/v1/check"
SOURCES = ("cluster", "git")
MAX_DOCUMENTS = 500
MAX_CLUSTERS = 100
MAX_SOURCE_NAME = 4096


class DocumentChecker(Protocol):
    """The daemon side of a check (``app/checking.Checker``)."""

    async def check(self, request: check.CheckRequest) -> dict[str, Any]: ...


class BadRequest(Exception):
    """The body is not a check request; the message says why (never quoting it)."""


def managed_by_entry(record: SealedSecretRecord) -> dict[str, Any] | None:
    managed = record.managed_by
    if managed is None:
        return None
    return {"tool": managed.tool, "name": managed.name, "hint": managed.hint}


def link_entry(link: GitLink | None) -> dict[str, Any] | None:
    if link is None:
        return None
    return {"repo": link.repo, "path": link.path, "document": link.document}


def link_key(record: SealedSecretRecord) -> tuple[str, str, str]:
    return (record.ciphertext_fingerprint, record.namespace, record.name)


def pending_key(record: GitSealedSecretRecord) -> tuple[str, str, int, str, str]:
    """What ``store.git_pending`` knows a document by."""
    return (record.repo, record.path, record.document, record.namespace, record.name)


def git_entry(record: GitSealedSecretRecord,
              pending_branch: str | None = None) -> dict[str, Any]:
    """One Git document as ``/api/v1/sealed-secrets?source=git`` lists it; a document not
    current on the base branch names the unmerged reseal branch that already fixes it."""
    return {
        "source": "git", "repo": record.repo, "path": record.path,
        "document": record.document, "namespace": record.namespace, "name": record.name,
        "scope": record.scope.cli_name, "state": str(record.state),
        "clusters": list(record.clusters), "observed_at": iso(record.observed_at),
        "malformed_reason": record.malformed_reason,
        "ciphertext_fingerprint": record.ciphertext_fingerprint,
        "items": [{"item": item.item, "fingerprint": item.fingerprint}
                  for item in record.items],
        "pending_branch": pending_branch if record.state is not SecretState.CURRENT else None,
    }


# ------------------------------------------------------------------ POST /api/v1/check


def _source(entry: Mapping[str, Any], index: int) -> str:
    source = entry.get("source", f"document {index}")
    if not isinstance(source, str) or len(source) > MAX_SOURCE_NAME:
        raise BadRequest(f"documents[{index}].source must be a string of at most "
                         f"{MAX_SOURCE_NAME} characters")
    return source


def _parse_content(sources: list[tuple[str, str]],
                   ) -> list[tuple[str, manifests.ParsedFile, list[dict[str, Any]]]]:
    """On a thread: each (source, text) parsed into its documents."""
    parsed: list[tuple[str, manifests.ParsedFile, list[dict[str, Any]]]] = []
    for source, text in sources:
        try:
            docs = documents.parse_documents(text, source=source)
        except InputError as error:
            parsed.append((source, manifests.ParsedFile(error=str(error)), []))
            continue
        parsed.append((source, manifests.ParsedFile(documents=len(docs)), docs))
    return parsed


async def check_request(body: bytes) -> check.CheckRequest:
    """The request a body asks for; BadRequest names the field that is wrong."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    entries = value.get("documents")
    if not isinstance(entries, list) or len(entries) > MAX_DOCUMENTS:
        raise BadRequest(f"documents must be an array of at most {MAX_DOCUMENTS} entries")
    clusters = value.get("clusters", [])
    if not isinstance(clusters, list) or len(clusters) > MAX_CLUSTERS or not all(
            isinstance(c, str) and c for c in clusters):
        raise BadRequest(f"clusters must be an array of at most {MAX_CLUSTERS} cluster names")
    require_current = value.get("require_current", False)
    if not isinstance(require_current, bool):
        raise BadRequest("require_current must be true or false")
    objects: list[check.CheckDocument] = []
    texts: list[tuple[str, str]] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or ("object" in entry) == ("content" in entry):
            raise BadRequest(f"documents[{index}] must be an object with either object or "
                             "content")
        source = _source(entry, index)
        document = entry.get("document", 0)
        # JSON has one number type: 3.0 is the integer 3 (as JSON Schema counts it).
        if isinstance(document, float) and document.is_integer():
            document = int(document)
        if not isinstance(document, int) or isinstance(document, bool) or document < 0:
            raise BadRequest(f"documents[{index}].document must be an integer of 0 or more")
        if "content" in entry:
            if not isinstance(entry["content"], str):
                raise BadRequest(f"documents[{index}].content must be a string")
            texts.append((source, entry["content"]))
            continue
        if not isinstance(entry["object"], dict):
            raise BadRequest(f"documents[{index}].object must be an object")
        objects.append(check.CheckDocument(source, document, entry["object"]))
    errors: list[tuple[str, str]] = []
    if texts:
        for source, parsed, docs in await asyncio.to_thread(_parse_content, texts):
            if parsed.error is not None:
                errors.append((source, parsed.error))
            objects.extend(check.CheckDocument(source, i, d) for i, d in enumerate(docs))
    return check.CheckRequest(tuple(objects), tuple(clusters), require_current, tuple(errors))
