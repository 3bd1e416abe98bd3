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

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.domain import attribution, hybrid, sealed_secrets
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.sealed_secrets import ItemsDecryptionError, SealedIdentity
from sealfleet.errors import DecryptionError, FleetError, InputError

LEGACY_ITEM = "spec.data"
DEFAULT_CHUNK_ITEMS = 32


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
    tried first (one RSA decrypt in the common case), then every other key.  Raises
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
    label = identity.label
    values: dict[str, str] = {}
    changes: list[ItemChange] = []
    failed: list[str] = []
    for item, value in encrypted.items():
        ciphertext = sealed_secrets.decode_item(item, value)
        hinted = hints.get(item)
        if hinted and order[0].fingerprint != hinted:
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
        values[item] = sealed_secrets.seal_value(target.public_key, plaintext, identity)
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


def _reseal_chunk(chunk: Sequence[ResealRequest], keyring: KeyRing) -> list[ResealOutcome]:
    return [reseal_one(request, keyring) for request in chunk]


def rsa_threads() -> int:
    """Threads worth running RSA on: the CPUs this process may use."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def iter_reseal(requests: Iterable[ResealRequest], keyring: KeyRing, *,
                executor: Executor | None = None,
                chunk_items: int = DEFAULT_CHUNK_ITEMS) -> Iterator[ResealOutcome]:
    """Reseal *requests* on a thread pool, yielding outcomes in request order.

    At most two chunks per thread are in flight, so a long input is never all in
    memory at once.  Without an *executor*, a pool sized to the CPUs is made for the call.
    """
    if executor is None:
        with ThreadPoolExecutor(max_workers=rsa_threads(),
                                thread_name_prefix="reseal") as pool:
            yield from _pipeline(requests, keyring, pool, rsa_threads(), chunk_items)
        return
    yield from _pipeline(requests, keyring, executor, rsa_threads(), chunk_items)


def _pipeline(requests: Iterable[ResealRequest], keyring: KeyRing, executor: Executor,
              threads: int, chunk_items: int) -> Iterator[ResealOutcome]:
    in_flight: list[Future[list[ResealOutcome]]] = []
    try:
        for chunk in chunks(requests, chunk_items):
            in_flight.append(executor.submit(_reseal_chunk, chunk, keyring))
            while len(in_flight) > 2 * threads:
                yield from in_flight.pop(0).result()
        while in_flight:
            yield from in_flight.pop(0).result()
    finally:
        for future in in_flight:  # the caller stopped early: drop what has not started
            future.cancel()


def reseal_batch(requests: Iterable[ResealRequest], keyring: KeyRing, *,
                 executor: Executor | None = None,
                 chunk_items: int = DEFAULT_CHUNK_ITEMS) -> list[ResealOutcome]:
    """Every outcome of :func:`iter_reseal`, in request order."""
    return list(iter_reseal(requests, keyring, executor=executor, chunk_items=chunk_items))
