"""The key-encryption key (KEK): private sealing keys are stored only under it.

Private keys are the one thing in the inventory that is not rebuildable and must not
leak, so the database holds them as AES-256-GCM ciphertext:

* the KEK is 32 random bytes in a file readable by its owner only (mode 0600 or
  stricter, or systemd's credential ACL: see :mod:`sealfleet.adapters.credentials`);
  a missing, group- or other-accessible or wrong-size file is a configuration error
  (:class:`ConfigError`, exit 2) naming the file;
* the caller passes the file's resolved path: where a credential lives (a bare name
  under systemd's ``$CREDENTIALS_DIRECTORY``) is decided once, by the config;
* every ciphertext uses a fresh random 96-bit nonce and binds the key's fingerprint as
  associated data, so a ciphertext moved to another key's row does not decrypt;
* each row records the KEK id (a hash prefix of the KEK, not the KEK) so that a wrong
  KEK is reported as such instead of as a corrupt database;
* the database holds one *check value* (migration 0003): a constant encrypted under
  the KEK, so a wrong KEK is refused when the store opens, not when a stored key is
  first needed (see keystore_checks.py).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealfleet.adapters import credentials
from sealfleet.errors import ConfigError, StoreError

KEK_BYTES = 32
NONCE_BYTES = 12
_KEK_ID_CONTEXT = b"sealfleet kek id v1\0"
_CHECK_PLAINTEXT = b"sealfleet kek check value v1"
_CHECK_AAD = b"sealfleet kek check value"   # never a fingerprint: not a key's row


@dataclass(frozen=True)
class KeyEncryptionKey:
    """An AES-256-GCM key and its public id.  ``repr`` never shows the key."""

    key: bytes = field(repr=False)
    source: str = "<memory>"
    id: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEK_BYTES:
            raise StoreError(f"key-encryption key {self.source}: expected {KEK_BYTES} bytes, "
                             f"found {len(self.key)}")
        object.__setattr__(self, "id",
                           hashlib.sha256(_KEK_ID_CONTEXT + self.key).hexdigest()[:16])

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> KeyEncryptionKey:
        """Read the KEK file at *path* (as given), refusing one anybody but its owner may
        access.  Every problem with the file is a :class:`ConfigError` naming it."""
        source = os.fspath(path)
        data = credentials.read_private(source, limit=KEK_BYTES + 1, label="key-encryption key")
        if len(data) != KEK_BYTES:
            raise ConfigError(f"key-encryption key {source}: expected {KEK_BYTES} bytes, "
                              f"found {len(data) if len(data) <= KEK_BYTES else 'more'}")
        return cls(data, source=source)

    def encrypt(self, plaintext: bytes, *, fingerprint: str) -> bytes:
        """``nonce || ciphertext+tag`` with the key's fingerprint as associated data."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, plaintext, fingerprint.encode())

    def decrypt(self, blob: bytes, *, fingerprint: str, kek_id: str) -> bytes:
        if kek_id != self.id:
            raise StoreError(
                f"private key {fingerprint} is encrypted under key-encryption key id {kek_id}, "
                f"but {self.source} has id {self.id}: wrong KEK file?")
        try:
            return AESGCM(self.key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                            fingerprint.encode())
        except InvalidTag:
            raise StoreError(f"private key {fingerprint}: ciphertext does not authenticate "
                             "under the key-encryption key (tampered or misplaced row)") from None


    def check_value(self) -> bytes:
        """A fresh ``nonce || ciphertext+tag`` of a constant: proves this KEK later."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + AESGCM(self.key).encrypt(nonce, _CHECK_PLAINTEXT, _CHECK_AAD)

    def opens_check_value(self, blob: bytes) -> bool:
        """Whether *blob* is a check value made by this very KEK."""
        try:
            plaintext = AESGCM(self.key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                                 _CHECK_AAD)
        except (InvalidTag, ValueError):   # ValueError: too short to hold a nonce
            return False
        return plaintext == _CHECK_PLAINTEXT


def generate_kek_file(path: str | os.PathLike[str]) -> Path:
    """Write 32 random bytes to *path* with mode 0600; refuse to overwrite anything."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StoreError(f"{target} already exists; refusing to overwrite a "
                         "key-encryption key") from None
    except OSError as exc:
        raise StoreError(f"{target}: cannot create ({exc.strerror or type(exc).__name__})"
                         ) from exc
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed it; never widen beyond 0600
        os.write(fd, secrets.token_bytes(KEK_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    return target
