"""Resealing one SealedSecret for a new key: only its ciphertext changes.

Every item is opened with the key that sealed it and sealed again for the target key
under the *same* OAEP label (scope, namespace and name are read from the top-level
metadata, as the controller does), so the result decrypts exactly where the original
did.  Only ``spec.encryptedData`` values change: metadata, template, item names and
item order stay as they are, which keeps GitOps diffs to the ciphertext lines.

A plaintext exists only in one local variable, between the decrypt and the encrypt of
its own item: it is never cached, logged or put into an exception (errors name the
object and the items, never a value).  Items already sealed with the target key are
kept byte for byte unless *force* is set.

The batch API runs on a thread pool sized to the CPUs: ``cryptography`` releases the
GIL during RSA, so threads scale, and requests go out in chunks of about
``chunk_items`` items so one task is worth its hand-off.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.domain import attribution, hybrid, sealed_secrets, splice
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.sealed_secrets import ItemsDecryptionError, SealedIdentity
from sealfleet.errors import DecryptionError, FleetError, InputError

LEGACY_ITEM = "spec.data"
DEFAULT_CHUNK_ITEMS = 32
DEFAULT_CHUNK_FILES = 8
T = TypeVar("T")
R = TypeVar("R")


class TargetKey(Protocol):
    """What items are sealed for: a certificate or a key (both carry these two)."""

    @property
    def public_key(self) -> rsa.RSAPublicKey: ...

    @property
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class ItemChange:
    """What happened to one item: the key that had sealed it and the key that seals it now."""

    item: str
    old_key: str
    new_key: str
    resealed: bool  # False: already sealed with the target key, value kept


@dataclass(frozen=True)
class Resealed:
    """The outcome for one SealedSecret: the new ``encryptedData`` (every item, input order).

    *legacy_spec* is set for a legacy ``spec.data`` object: it becomes ``encryptedData``
    plus a template made from the Secret sealed inside it (as ``sealed_secrets.reencrypt``
    and the controller's rotation do), which is more than a value change.
    """

    identity: SealedIdentity
    encrypted_data: Mapping[str, str]
    changes: tuple[ItemChange, ...]
    legacy_spec: Mapping[str, Any] | None = None

    @property
    def changed(self) -> bool:
        return self.legacy_spec is not None or any(c.resealed for c in self.changes)

    @property
    def replaced(self) -> dict[str, str]:
        """The items whose value changed, item -> new value."""
        return {c.item: self.encrypted_data[c.item] for c in self.changes if c.resealed}

    def apply(self, sealed: Mapping[str, Any]) -> dict[str, Any]:
        """*sealed* with its ciphertext replaced; everything else shallow-copied as is."""
        spec = dict(sealed.get("spec") or {})
        if self.legacy_spec is not None:
            spec = {key: value for key, value in spec.items() if key != "data"}
            spec.update(self.legacy_spec)
        else:
            spec["encryptedData"] = dict(self.encrypted_data)
        return {**sealed, "spec": spec}


class KeyRing:
    """The private keys resealing may open items with, looked up by fingerprint.

    ``repr`` names fingerprints only.
    """

    def __init__(self, keys: Iterable[SealingKey]) -> None:
        self._keys: tuple[SealingKey, ...] = tuple({k.fingerprint: k for k in keys}.values())
        self._by_fingerprint = {k.fingerprint: k for k in self._keys}

    def __repr__(self) -> str:
        return f"KeyRing({', '.join(self._by_fingerprint)})"

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._by_fingerprint

    @property
    def keys(self) -> tuple[SealingKey, ...]:
        return self._keys

    def likeliest_first(self, fingerprints: Iterable[str | None]) -> list[SealingKey]:
        """Every key, those named by *fingerprints* (the inventory's attribution) first."""
        first: dict[str, SealingKey] = {}
        for fingerprint in fingerprints:
            key = self._by_fingerprint.get(fingerprint) if fingerprint is not None else None
            if key is not None:
                first.setdefault(key.fingerprint, key)
        return [*first.values(), *(k for k in self._keys if k.fingerprint not in first)]


def _promote(order: list[SealingKey], index: int) -> None:
    if index:
        order.insert(0, order.pop(index))


def reseal(sealed: Mapping[str, Any], keyring: KeyRing, target: TargetKey, *,
           hints: Mapping[str, str | None] | None = None, force: bool = False) -> Resealed:
    """Reseal every item of *sealed* for *target*, under the same label.

    *hints* maps items to the fingerprint the inventory attributed them to; that key is
    tried first (one RSA decrypt in the common case), then every other key.  An item
    hinted to be sealed with the target already is kept without a decrypt when the
    target's private key is not in *keyring* (nothing could check it).  Raises
    :class:`ItemsDecryptionError` naming every item no key opens, and
    :class:`InputError` for a malformed object; neither ever carries a value.
    """
    identity = sealed_secrets.identity_of(sealed)
    spec = sealed.get("spec") or {}
    encrypted = sealed_secrets.encrypted_items(sealed)
    legacy = spec.get("data") if isinstance(spec, Mapping) else None
    if encrypted and legacy:
        raise InputError(f"{identity.display}: uses both spec.encryptedData and spec.data")
    hints = hints or {}
    if legacy:
        return _reseal_legacy(sealed, identity, str(legacy), keyring, target,
                              hints.get(LEGACY_ITEM))
    order = keyring.likeliest_first(hints.values())
    if target.fingerprint not in hints.values():
        # Without a hint for it, the target is the least likely key: what is resealed
        # is mostly sealed with something else (this saves an RSA decrypt per object).
        order.sort(key=lambda k: k.fingerprint == target.fingerprint)
    label = identity.label
    public_key: rsa.RSAPublicKey | None = None   # a key's public_key may be built per call
    values: dict[str, str] = {}
    changes: list[ItemChange] = []
    failed: list[str] = []
    for item, value in encrypted.items():
        ciphertext = sealed_secrets.decode_item(item, value)
        hinted = hints.get(item)
        if hinted == target.fingerprint and not force and hinted not in keyring:
            # Sealed for the target already (the inventory says so) and nothing here
            # could check it: a cluster whose private key sealfleet does not hold.
            values[item] = value
            changes.append(ItemChange(item, hinted, hinted, resealed=False))
            continue
        if hinted and order and order[0].fingerprint != hinted:
            for index, key in enumerate(order):
                if key.fingerprint == hinted:
                    _promote(order, index)
                    break
        try:
            index, plaintext = hybrid.decrypt_with_index([k.private_key for k in order],
                                                         ciphertext, label)
        except DecryptionError:  # includes a ciphertext too short to be one
            failed.append(item)
            continue
        old_key = order[index].fingerprint
        _promote(order, index)
        if old_key == target.fingerprint and not force:
            del plaintext
            values[item] = value
            changes.append(ItemChange(item, old_key, old_key, resealed=False))
            continue
        if public_key is None:
            public_key = target.public_key
        values[item] = sealed_secrets.seal_value(public_key, plaintext, identity)
        del plaintext
        changes.append(ItemChange(item, old_key, target.fingerprint, resealed=True))
    if failed:
        raise ItemsDecryptionError(identity.display, failed)
    return Resealed(identity, values, tuple(changes))


def _reseal_legacy(sealed: Mapping[str, Any], identity: SealedIdentity, blob: str,
                   keyring: KeyRing, target: TargetKey, hint: str | None) -> Resealed:
    # Rare (pre-0.9 objects): the RSA part names the old key first, then the one
    # implementation of the legacy conversion does the rest with that key alone.
    found = attribution.attribute_item(blob, identity.label, keyring.likeliest_first([hint]))
    if found.fingerprint is None:
        raise ItemsDecryptionError(identity.display, [LEGACY_ITEM])
    old = next(k for k in keyring.keys if k.fingerprint == found.fingerprint)
    converted = sealed_secrets.reencrypt(sealed, [old.private_key], target.public_key)
    new_spec = converted["spec"]
    values = dict(new_spec["encryptedData"])
    changes = tuple(ItemChange(item, old.fingerprint, target.fingerprint, resealed=True)
                    for item in values)
    return Resealed(identity, values, changes,
                    legacy_spec={"template": new_spec["template"], "encryptedData": values})


# ------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class ResealRequest:
    """One SealedSecret to reseal: *ref* is the caller's name for it (echoed back)."""

    ref: str
    sealed: Mapping[str, Any] = field(repr=False)
    target: TargetKey
    hints: Mapping[str, str | None] = field(default_factory=dict)
    force: bool = False

    @property
    def item_count(self) -> int:
        spec = self.sealed.get("spec")
        encrypted = spec.get("encryptedData") if isinstance(spec, Mapping) else None
        return len(encrypted) if isinstance(encrypted, Mapping) else 1


@dataclass(frozen=True)
class ResealOutcome:
    """*resealed* on success, else *error*: one line naming the object, never a value."""

    ref: str
    resealed: Resealed | None
    error: str | None = None


def reseal_one(request: ResealRequest, keyring: KeyRing) -> ResealOutcome:
    """:func:`reseal` with its errors turned into an outcome (one object never stops a batch)."""
    try:
        resealed = reseal(request.sealed, keyring, request.target, hints=request.hints,
                          force=request.force)
    except FleetError as exc:
        return ResealOutcome(request.ref, None, str(exc))
    return ResealOutcome(request.ref, resealed)


def chunks(requests: Iterable[ResealRequest], chunk_items: int) -> Iterator[list[ResealRequest]]:
    """Consecutive requests grouped until a group holds at least *chunk_items* items."""
    chunk: list[ResealRequest] = []
    items = 0
    for request in requests:
        chunk.append(request)
        items += request.item_count
        if items >= chunk_items:
            yield chunk
            chunk, items = [], 0
    if chunk:
        yield chunk


def rsa_threads() -> int:
    """Threads worth running RSA on: the CPUs this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _pipeline(chunked: Iterable[list[T]], work: Callable[[list[T]], list[R]],
              executor: Executor | None) -> Iterator[R]:
    """*work* on every chunk on a thread pool, results in input order, at most two
    chunks per thread in flight (a long input is never all in memory at once).
    Without an *executor*, a pool sized to the CPUs is made for the call."""
    threads = rsa_threads()
    with contextlib.ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(
                ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reseal"))
        in_flight: collections.deque[Future[list[R]]] = collections.deque()
        try:
            for chunk in chunked:
                in_flight.append(executor.submit(work, chunk))
                while len(in_flight) > 2 * threads:
                    yield from in_flight.popleft().result()
            while in_flight:
                yield from in_flight.popleft().result()
        finally:
            for future in in_flight:  # the caller stopped early: drop what has not started
                future.cancel()


def iter_reseal(requests: Iterable[ResealRequest], keyring: KeyRing, *,
                executor: Executor | None = None,
                chunk_items: int = DEFAULT_CHUNK_ITEMS) -> Iterator[ResealOutcome]:
    """Reseal *requests* on a thread pool (see :func:`_pipeline`), outcomes in request order."""
    def work(chunk: list[ResealRequest]) -> list[ResealOutcome]:
        return [reseal_one(request, keyring) for request in chunk]
    return _pipeline(chunks(requests, chunk_items), work, executor)


def reseal_batch(requests: Iterable[ResealRequest], keyring: KeyRing, *,
                 executor: Executor | None = None,
                 chunk_items: int = DEFAULT_CHUNK_ITEMS) -> list[ResealOutcome]:
    """Every outcome of :func:`iter_reseal`, in request order."""
    return list(iter_reseal(requests, keyring, executor=executor, chunk_items=chunk_items))


# ------------------------------------------------------------------------- files


@dataclass(frozen=True)
class FileRequest:
    """One manifest file to reseal in place (YAML or JSON, any number of documents).

    *documents* maps the indexes to reseal to their items' hints (see :func:`reseal`);
    None reseals every SealedSecret of the file.
    """

    source: str
    content: bytes = field(repr=False)
    target: TargetKey
    documents: Mapping[int, Mapping[str, str | None]] | None = None
    force: bool = False


@dataclass(frozen=True)
class DocumentChange:
    """The items of one document whose ciphertext was replaced in the file."""

    index: int
    namespace: str
    name: str
    changes: tuple[ItemChange, ...]

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


@dataclass(frozen=True)
class FileOutcome:
    """The new content of a file (*result*; None when it could not be read) and what
    changed.  *errors* are one line each and name file, document and item, never a value."""

    source: str
    result: splice.SpliceResult | None
    documents: tuple[DocumentChange, ...]
    errors: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.result is not None and self.result.changed


def reseal_file(request: FileRequest, keyring: KeyRing) -> FileOutcome:
    """Locate, reseal and splice one file: only ciphertext bytes change (see
    :mod:`sealfleet.domain.splice`); a value that cannot be spliced is reported."""
    source = request.source
    try:
        located = splice.locate(request.content, source=source)
    except InputError as exc:
        return FileOutcome(source, None, (), (str(exc),))
    wanted = request.documents
    errors: list[str] = []
    if wanted is not None:
        found = {d.index for d in located.documents}
        errors.extend(f"{source}: document {index}: is not a SealedSecret"
                      for index in sorted(set(wanted) - found))
    edits: list[splice.Edit] = []
    resealed_docs: list[tuple[splice.LocatedDocument, Resealed]] = []
    for document in located.documents:
        if wanted is not None and document.index not in wanted:
            continue
        errors.extend(str(splice.Problem(source, document.index, item or None, reason))
                      for item, reason in document.problems.items())
        if not document.values:
            continue
        try:
            resealed = reseal(document.sealed_secret(), keyring, request.target,
                              hints=(wanted or {}).get(document.index), force=request.force)
        except FleetError as exc:
            errors.append(f"{source}: document {document.index}: {exc}")
            continue
        if resealed.replaced:
            edits.append(splice.Edit(document.index, document.namespace, document.name,
                                     resealed.replaced))
            resealed_docs.append((document, resealed))
    result = splice.splice(located, edits)
    errors.extend(str(problem) for problem in result.problems)
    done = set(result.replaced)
    changes = tuple(
        DocumentChange(document.index, document.namespace, document.name,
                       tuple(c for c in resealed.changes if (document.index, c.item) in done))
        for document, resealed in resealed_docs
        if any((document.index, c.item) in done for c in resealed.changes))
    return FileOutcome(source, result, changes, tuple(errors))


def iter_reseal_files(requests: Iterable[FileRequest], keyring: KeyRing, *,
                      executor: Executor | None = None,
                      chunk_files: int = DEFAULT_CHUNK_FILES) -> Iterator[FileOutcome]:
    """:func:`reseal_file` for every request on a thread pool, outcomes in request order."""
    def work(chunk: list[FileRequest]) -> list[FileOutcome]:
        return [reseal_file(request, keyring) for request in chunk]
    return _pipeline(_batched(requests, chunk_files), work, executor)


def _batched(values: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for value in values:
        batch.append(value)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
