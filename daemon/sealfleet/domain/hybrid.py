"""The controller's hybrid encryption of one value (RSA-OAEP + AES-256-GCM).

Layout of one sealed value, byte-compatible with ``pkg/crypto/crypto.go``::

    [u16 big-endian: len(rsa)] [rsa: RSA-OAEP(SHA-256, MGF1-SHA-256, label)(session key)]
    [aes: AES-256-GCM(session key, nonce = 12 zero bytes, no AAD)(plaintext) || tag]

The zero nonce is safe only because every session key seals exactly one value.
The ciphertext names no key, so finding the key that sealed a value means trying
each candidate on the RSA part; that is what :func:`unwrap_session_key` is for.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealfleet.errors import DecryptionError

SESSION_KEY_BYTES = 32
ZERO_NONCE = bytes(12)
_GCM_TAG_BYTES = 16


@functools.lru_cache(maxsize=4096)
def _oaep(label: bytes) -> padding.OAEP:
    # cryptography treats label=None and b"" alike; the cluster-wide label is empty.
    # Cached: a reseal or inventory pass reuses one label for every item of a secret,
    # and building the padding and hash objects costs as much as the AES part.
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(),
                        label=label or None)


class MalformedCiphertextError(DecryptionError):
    """The bytes cannot be a sealed value (too short or inconsistent length prefix)."""


def encrypt(public_key: rsa.RSAPublicKey, plaintext: bytes, label: bytes) -> bytes:
    """Seal *plaintext* for *public_key* under *label* with a fresh session key."""
    session_key = os.urandom(SESSION_KEY_BYTES)
    wrapped = public_key.encrypt(session_key, _oaep(label))
    sealed = AESGCM(session_key).encrypt(ZERO_NONCE, plaintext, None)
    return struct.pack(">H", len(wrapped)) + wrapped + sealed


def split(ciphertext: bytes) -> tuple[bytes, bytes]:
    """Return the RSA part and the AES-GCM part of a sealed value."""
    if len(ciphertext) < 2:
        raise MalformedCiphertextError("SealedSecret data is too short")
    (rsa_len,) = struct.unpack_from(">H", ciphertext)
    if len(ciphertext) < 2 + rsa_len + _GCM_TAG_BYTES:
        raise MalformedCiphertextError("SealedSecret data is too short")
    return ciphertext[2:2 + rsa_len], ciphertext[2 + rsa_len:]


def unwrap_session_key(private_key: rsa.RSAPrivateKey, rsa_part: bytes,
                       label: bytes) -> bytes | None:
    """The session key if *private_key* sealed this RSA part under *label*, else None.

    OAEP has its own integrity check, so a wrong key (or label) fails here with
    overwhelming probability: the RSA part alone decides which key sealed a value.
    """
    if len(rsa_part) != private_key.key_size // 8:
        return None
    try:
        return private_key.decrypt(rsa_part, _oaep(label))
    except ValueError:
        return None


def decrypt(private_keys: Iterable[rsa.RSAPrivateKey], ciphertext: bytes, label: bytes) -> bytes:
    """Try every key, as the controller does; the first that opens both parts wins."""
    return decrypt_with_index(private_keys, ciphertext, label)[1]


def decrypt_with_index(private_keys: Iterable[rsa.RSAPrivateKey], ciphertext: bytes,
                       label: bytes) -> tuple[int, bytes]:
    """Like :func:`decrypt`, also returning the position of the key that opened it."""
    rsa_part, aes_part = split(ciphertext)
    for index, key in enumerate(private_keys):
        session_key = unwrap_session_key(key, rsa_part, label)
        if session_key is None:
            continue
        try:
            return index, AESGCM(session_key).decrypt(ZERO_NONCE, aes_part, None)
        except (InvalidTag, ValueError):
            continue
    raise DecryptionError("no key could decrypt secret")
