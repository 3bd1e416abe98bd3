"""Which sealing key sealed a given item: the fact the whole inventory is built on.

The ciphertext names no key, so every candidate private key is tried on the RSA part
alone (OAEP's integrity check makes a wrong key fail); the AES part is never opened,
so attribution never produces a plaintext.  Candidates are tried likeliest first (see
:mod:`sealfleet.domain.likely_keys`), so the common case costs one RSA decrypt, and
two checks rule keys out for free: the RSA part's length must be the key's size, and
read as an integer it must be below the key's modulus (an RSA ciphertext is a residue
modulo n), which spares some of the wrong same-size keys a decrypt (about one in
ten for random moduli of one size).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from sealfleet.domain import hybrid, likely_keys
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import DecryptionError


@dataclass(frozen=True)
class Attribution:
    """The outcome for one item: the fingerprint of the key, or None when no key opens it."""

    item_hash: str
    fingerprint: str | None
    rsa_attempts: int


def item_hash(ciphertext_b64: str, label: bytes) -> str:
    """Cache key for an item: SHA-256 over the label and the encoded ciphertext.

    The label is included because the same bytes under another name or namespace
    (strict scope) no longer open with the key that sealed them.
    """
    digest = hashlib.sha256(label)
    digest.update(b"\0")
    digest.update(ciphertext_b64.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class RsaWork:
    """What attribution's RSA workers (processes, or threads) have done since the start.

    *busy_seconds* is the wall time the workers spent in attribution jobs, *cpu_seconds*
    the CPU time they got meanwhile.  Workers that hold a job but do not run (they wait
    for a core; threads also for the GIL, which each decrypt takes back when it returns)
    show as busy seconds well above the CPU seconds: the RSA stage then takes longer
    than its work, whatever the number of workers.
    """

    decrypts: int = 0
    cpu_seconds: float = 0.0
    busy_seconds: float = 0.0
    worker_deaths: int = 0     # RSA worker processes that died under a job


@dataclass(frozen=True)
class JobAnswer:
    """An RSA job's answer (:func:`attribute_objects`, on a thread or a worker process):
    each item's fingerprint (None: no candidate opens it), in order across the objects,
    the decrypts tried, and the CPU and wall seconds the job took where it ran."""

    fingerprints: list[str | None]
    attempts: int
    cpu_seconds: float
    busy_seconds: float


@dataclass(frozen=True)
class Candidate:
    """A key to try, with what rules it out for free computed once (see :func:`candidate`)."""

    key: SealingKey
    modulus: int
    size: int  # bytes of an RSA part this key produces
    fingerprint: str = field(init=False)
    not_before: dt.datetime = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", self.key.fingerprint)
        object.__setattr__(self, "not_before", self.key.not_before)

    def could_have_sealed(self, rsa_part: bytes, value: int) -> bool:
        """False when this key cannot have produced *rsa_part* (*value* its integer)."""
        return len(rsa_part) == self.size and value < self.modulus


def candidate(key: SealingKey) -> Candidate:
    """A key as a candidate (reading the modulus costs a little: keep the result)."""
    numbers = key.private_key.private_numbers().public_numbers
    return Candidate(key, numbers.n, key.private_key.key_size // 8)


def _rsa_part(ciphertext_b64: str) -> bytes | None:
    try:
        rsa_part, _ = hybrid.split(base64.b64decode(ciphertext_b64, validate=True))
    except (binascii.Error, ValueError, DecryptionError):
        return None
    return rsa_part


def _try(cache_key: str, rsa_part: bytes, label: bytes,
         candidates: Sequence[Candidate]) -> Attribution:
    """The first of *candidates* that unwraps *rsa_part*; a key that comes twice (the
    attributor's lead keys come again in the fleet's ranking) is tried once."""
    value = int.from_bytes(rsa_part, "big")
    attempts = 0
    tried: set[str] = set()
    for option in candidates:
        if option.fingerprint in tried or not option.could_have_sealed(rsa_part, value):
            continue
        tried.add(option.fingerprint)
        attempts += 1
        if hybrid.unwrap_session_key(option.key.private_key, rsa_part, label) is not None:
            return Attribution(cache_key, option.fingerprint, attempts)
    return Attribution(cache_key, None, attempts)


def attribute_item(ciphertext_b64: str, label: bytes,
                   candidates: Sequence[SealingKey | Candidate]) -> Attribution:
    """Try *candidates* in order on the RSA part; the first that unwraps it sealed it."""
    cache_key = item_hash(ciphertext_b64, label)
    rsa_part = _rsa_part(ciphertext_b64)
    if rsa_part is None:
        return Attribution(cache_key, None, 0)
    options = [c if isinstance(c, Candidate) else candidate(c) for c in candidates]
    return _try(cache_key, rsa_part, label, options)


@dataclass(frozen=True)
class ObjectItems:
    """One SealedSecret's (ciphertext, label) items to attribute, and when it was likely
    sealed (:func:`likely_keys.sealing_times`): the unit an RSA job is made of."""

    items: tuple[tuple[str, bytes], ...]
    sealed_at: tuple[dt.datetime, ...] = ()


def attribute_objects(objects: Sequence[ObjectItems], candidates: Sequence[Candidate],
                      local: Collection[str]) -> tuple[list[str | None], int]:
    """Attribute whole SealedSecrets (one RSA job): each item's fingerprint (None when
    no candidate opens it), in order across the objects, and the RSA decrypts tried."""
    fingerprints: list[str | None] = []
    attempts = 0
    for sealed in objects:
        for result in attribute_sealed_secret(sealed.items, candidates,
                                              sealed_at=sealed.sealed_at, local=local):
            attempts += result.rsa_attempts
            fingerprints.append(result.fingerprint)
    return fingerprints, attempts


def attribute_sealed_secret(items: Sequence[tuple[str, bytes]],
                            candidates: Sequence[Candidate], *,
                            sealed_at: Sequence[dt.datetime] = (),
                            local: Collection[str] = ()) -> list[Attribution]:
    """Attribute the (ciphertext, label) items of one SealedSecret, in order.

    *candidates* come in the caller's order of likelihood; the time prior reorders the
    cluster's own (*local*) keys by *sealed_at* (:func:`likely_keys.sealing_times`),
    and once an item is attributed its key is tried first for the rest.
    """
    order = likely_keys.likeliest_first(candidates, sealed_at, local=local)
    results: list[Attribution] = []
    for ciphertext_b64, label in items:
        cache_key = item_hash(ciphertext_b64, label)
        rsa_part = _rsa_part(ciphertext_b64)
        if rsa_part is None:
            results.append(Attribution(cache_key, None, 0))
            continue
        result = _try(cache_key, rsa_part, label, order)
        results.append(result)
        if result.fingerprint is not None:
            likely_keys.promote(order, result.fingerprint)
    return results
