"""The CPU side of a Git reseal, run on the RSA threads: one file at a time.

For a file and the documents planned in it: locate them, parsing the file once (each
must still be the object the plan names: a file whose documents moved since the scan is
reported, not guessed at), reseal their items for their target key
(:func:`resealing.reseal`: one RSA decrypt and one encrypt per item), splice every new
value in one pass (:func:`splice.splice`: only ciphertext spans change, and its
re-parse checks that nothing else did), and then open every new value with the
target's private key, when sealfleet holds it, so that nothing is written that would
not decrypt: one more RSA decrypt per item, the only way to know a value opens with a
private key.  A file that fails any check is not written at all.

Also here: whether a document on another branch is already sealed with the target key
(the pending-branch check) and the same check for ``verify``.  Nothing here does I/O;
messages name file, document and item, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sealfleet.domain import attribution, hybrid, resealing, sealed_secrets, splice
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.planning.resealing import PlannedReseal
from sealfleet.domain.resealing import DocumentChange, KeyRing, TargetKey
from sealfleet.errors import DecryptionError, FleetError, InputError


class DocumentRef(Protocol):
    """A document as a plan or a step detail names it."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def document(self) -> int | None: ...


@dataclass(frozen=True)
class ResealedDocument:
    """One document a job's commit reseals, as the step detail records it (names only)."""

    path: str
    document: int
    namespace: str
    name: str
    target_key: str
    items: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.path}#{self.document}"

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class FileResult:
    """What became of one file: *content* is the new content (None: not rewritten)."""

    path: str
    content: bytes | None = field(default=None, repr=False)
    documents: tuple[DocumentChange, ...] = ()
    problems: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()         # refs of documents sealed with the target already
    verified_items: int = 0               # new values opened with the target's private key
    unverified_items: int = 0             # target's private key not held: not opened


def _locate(path: str, content: bytes | None) -> splice.LocatedFile | str:
    if content is None:
        return f"{path}: no such file on the branch"
    try:
        return splice.locate(content, source=path)
    except InputError as exc:
        return str(exc)


def find_document(located: splice.LocatedFile, entry: DocumentRef,
                  ) -> splice.LocatedDocument | str:
    """The planned document in *located*, or why it is not there."""
    path = located.source
    expected = f"{entry.namespace}/{entry.name}" if entry.namespace else entry.name
    if entry.document is None:
        matches = [d for d in located.documents
                   if (d.namespace, d.name) == (entry.namespace, entry.name)]
        if len(matches) != 1:
            return (f"{path}: {len(matches)} SealedSecrets named {expected}: rescan the "
                    "repository and plan again")
        return matches[0]
    document = located.document(entry.document)
    if document is None:
        return f"{path}: document {entry.document}: is not a SealedSecret (the file changed)"
    if (document.namespace, document.name) != (entry.namespace, entry.name):
        found = f"{document.namespace}/{document.name}" if document.namespace else document.name
        return (f"{path}: document {entry.document}: is {found}, expected {expected} "
                "(the file changed since it was scanned)")
    return document


@dataclass
class _Planned:
    """One planned document of the file, located, and what became of it."""

    document: splice.LocatedDocument
    target: TargetKey
    resealed: resealing.Resealed | None = None


def _reseal_documents(path: str, planned: Mapping[int, _Planned],
                      hints: Mapping[int, Mapping[str, str | None]], keyring: KeyRing,
                      problems: list[str]) -> set[int]:
    """Reseal every planned document (:func:`resealing.reseal`, one RSA decrypt and
    encrypt per item); returns the indexes that failed (reported in *problems*)."""
    failed: set[int] = set()
    for index, entry in planned.items():
        document = entry.document
        for item, reason in document.problems.items():
            problems.append(str(splice.Problem(path, index, item or None, reason)))
            failed.add(index)
        if not document.values:
            continue
        try:
            entry.resealed = resealing.reseal(document.sealed_secret(), keyring, entry.target,
                                              hints=hints[index])
        except FleetError as exc:
            problems.append(f"{path}: document {index}: {exc}")
            failed.add(index)
    return failed


def _check_new_values(path: str, planned: Mapping[int, _Planned], done: set[tuple[int, str]],
                      check_keys: Mapping[str, SealingKey]) -> tuple[int, int, str | None]:
    """Open every new value with the target's private key: (verified, unverified, problem).

    The values opened are the ones :func:`splice.splice` put into the file: its re-parse
    proved that the new text holds exactly these values at these items and that nothing
    else (the identity, hence the label) changed, so no third parse is needed here; the
    RSA decrypt itself is the check and is never skipped for a held key.
    """
    verified = unverified = 0
    for index, entry in sorted(planned.items()):
        resealed = entry.resealed
        if resealed is None:
            continue
        label = resealed.identity.label
        for change in resealed.changes:
            if not change.resealed or (index, change.item) not in done:
                continue
            key = check_keys.get(change.new_key)
            if key is None:
                unverified += 1
                continue
            try:
                plaintext = hybrid.decrypt([key.private_key], sealed_secrets.decode_item(
                    change.item, resealed.encrypted_data[change.item]), label)
                del plaintext
            except (DecryptionError, InputError):
                return verified, unverified, (
                    f"{path}: document {index}: spec.encryptedData.{change.item}: the "
                    f"new value does not decrypt with {change.new_key}; file left unchanged")
            verified += 1
    return verified, unverified, None


def reseal_one_file(path: str, content: bytes | None, entries: Sequence[PlannedReseal],
                    targets: Mapping[str, TargetKey], keyring: KeyRing,
                    check_keys: Mapping[str, SealingKey]) -> FileResult:
    """Reseal the planned documents of one file (see the module docstring): the file is
    parsed once, spliced once (whatever the target keys) and parsed once more by the
    splice's check."""
    located = _locate(path, content)
    if isinstance(located, str):
        return FileResult(path, problems=(located,))
    problems: list[str] = []
    planned: dict[int, _Planned] = {}
    hints: dict[int, Mapping[str, str | None]] = {}
    refs: dict[int, str] = {}
    for entry in entries:
        document = find_document(located, entry)
        if isinstance(document, str):
            problems.append(document)
            continue
        target = targets.get(entry.target_key)
        if target is None:
            problems.append(f"{path}: document {document.index}: no certificate of the "
                            f"target key {entry.target_key}")
            continue
        refs[document.index] = entry.ref
        planned[document.index] = _Planned(document, target)
        hints[document.index] = {item.item: item.fingerprint for item in entry.items}
    failed = _reseal_documents(path, planned, hints, keyring, problems)
    edits = [splice.Edit(i, p.document.namespace, p.document.name, p.resealed.replaced)
             for i, p in sorted(planned.items()) if p.resealed is not None and p.resealed.replaced]
    result = splice.splice(located, edits)
    file_failed = False
    for problem in result.problems:
        problems.append(str(problem))
        if problem.index is None:
            file_failed = True
        else:
            failed.add(problem.index)
    done = set(result.replaced)
    changes = tuple(
        DocumentChange(i, p.document.namespace, p.document.name,
                       tuple(c for c in p.resealed.changes if (i, c.item) in done))
        for i, p in sorted(planned.items())
        if p.resealed is not None and any((i, c.item) in done for c in p.resealed.changes))
    changed = {change.index for change in changes}
    skipped = () if file_failed else tuple(
        refs[i] for i in sorted(refs) if i not in changed and i not in failed)
    if not changes or not result.changed:
        return FileResult(path, problems=tuple(problems), skipped=skipped)
    verified, unverified, failure = _check_new_values(path, planned, done, check_keys)
    if failure is not None:
        return FileResult(path, problems=(*problems, failure))
    return FileResult(path, result.content, changes, tuple(problems), skipped, verified,
                      unverified)


def sealed_with_target(path: str, content: bytes | None, entry: PlannedReseal,
                       target: SealingKey) -> bool:
    """Whether the planned document, in this version of its file, is the same object
    with every planned item (and every other item) sealed with *target*."""
    located = _locate(path, content)
    if isinstance(located, str):
        return False
    document = find_document(located, entry)
    if isinstance(document, str) or document.problems or not document.values:
        return False
    if not {item.item for item in entry.items} <= set(document.values):
        return False
    label = sealed_secrets.identity_of(document.sealed_secret()).label
    return all(attribution.attribute_item(value.value, label, [target]).fingerprint
               == target.fingerprint for value in document.values.values())


@dataclass(frozen=True)
class DocumentCheck:
    """``verify``'s finding for one resealed document."""

    ref: str
    problem: str | None
    verified_items: int = 0       # opened with the target key by the step or by verify
    unverified_items: int = 0
    unchanged: bool = False       # the file is the blob the step checked: not reopened


def check_document(content: bytes | None, resealed: ResealedDocument,
                   target: SealingKey | None) -> DocumentCheck:
    """The document parses on the branch, is the same object, and each resealed item is
    attributed to the target key (when its private key is held; else only parsed)."""
    path, ref = resealed.path, resealed.ref
    located = _locate(path, content)
    if isinstance(located, str):
        return DocumentCheck(ref, located)
    document = find_document(located, resealed)
    if isinstance(document, str):
        return DocumentCheck(ref, document)
    missing = [item for item in resealed.items if item not in document.values]
    if missing:
        return DocumentCheck(ref, f"{path}: document {document.index}: item(s) "
                                  f"{', '.join(missing)} not found or not readable")
    if target is None:
        return DocumentCheck(ref, None, unverified_items=len(resealed.items))
    label = sealed_secrets.identity_of(document.sealed_secret()).label
    wrong = [item for item in resealed.items
             if attribution.attribute_item(document.values[item].value, label,
                                           [target]).fingerprint != target.fingerprint]
    if wrong:
        return DocumentCheck(ref, f"{path}: document {document.index}: item(s) "
                                  f"{', '.join(wrong)} not sealed with {target.fingerprint}")
    return DocumentCheck(ref, None, verified_items=len(resealed.items))
