"""Which sealing key sealed a given item: the fact the whole inventory is built on.

The ciphertext names no key, so every candidate private key is tried on the RSA part
alone (OAEP's integrity check makes a wrong key fail); the AES part is never opened,
so attribution never produces a plaintext.  Candidates are tried likeliest first, so
in a fleet where most items use the newest key the common case costs one RSA decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sealfleet.domain import hybrid
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


def attribute_item(ciphertext_b64: str, label: bytes,
                   candidates: Sequence[SealingKey]) -> Attribution:
    """Try *candidates* in order on the RSA part; the first that unwraps it sealed it."""
    cache_key = item_hash(ciphertext_b64, label)
    try:
        raw = base64.b64decode(ciphertext_b64, validate=True)
        rsa_part, _ = hybrid.split(raw)
    except (binascii.Error, ValueError, DecryptionError):
        return Attribution(cache_key, None, 0)
    attempts = 0
    for key in candidates:
        if len(rsa_part) != key.private_key.key_size // 8:
            continue  # a 2048-bit key cannot have produced a 512-byte RSA part
        attempts += 1
        if hybrid.unwrap_session_key(key.private_key, rsa_part, label) is not None:
            return Attribution(cache_key, key.fingerprint, attempts)
    return Attribution(cache_key, None, attempts)
