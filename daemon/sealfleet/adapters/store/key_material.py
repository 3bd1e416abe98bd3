"""Private keys to keystore ciphertext and back, with the checks that keep one bad row harmless.

This is the only module that serialises private keys, and it never touches SQL: the
transaction that stores keys receives :class:`EncryptedKey` values already sealed
here, and the query that reads them returns ciphertext that is opened here, outside
any read transaction.  Both directions run off the event loop (RSA key parsing with
its consistency checks costs milliseconds per key).

Sealing: PKCS#8 DER, AES-256-GCM under the KEK with the key's fingerprint as
associated data (see kek.py).  A :class:`KeyMaterial` whose certificate is not its
private key's is refused here rather than stored under either fingerprint.

Opening checks every row on its own; a row that fails is a :class:`Refusal` and the
other rows still load.  A row that decrypts but contradicts itself (its private key
or its certificate is another key's) is marked ``contradicts_row``: the keystore
check at open moves such material out of the keystore (keystore_checks.py).  A row
that does not decrypt at all (another KEK, a tampered ciphertext) is only refused:
it may still be somebody's only copy of a key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.adapters.store.kek import KeyEncryptionKey
from sealfleet.adapters.store.records import KeyMaterial, LoadedKeys, RejectedKey
from sealfleet.domain.key_secrets import check_consistency
from sealfleet.domain.keys import Certificate, SealingKey, fingerprint, load_certificate
from sealfleet.errors import InputError, StoreError


@dataclass(frozen=True)
class EncryptedKey:
    """A private key as the keystore holds it, with the public facts of its row."""

    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    source: str
    certificate_pem: str | None
    ciphertext: bytes = field(repr=False)   # nonce || AES-GCM(KEK, PKCS#8 DER), AAD = fingerprint
    kek_id: str


@dataclass(frozen=True)
class Refusal:
    """Why one row (or one key on its way in) was not used; no key material inside."""

    fingerprint: str
    reason: str
    contradicts_row: bool = False     # decrypted, but is not this row's key: quarantine it
    certificate_wrong: bool = False   # the row's certificate is not the row's key's

    def rejected(self) -> RejectedKey:
        return RejectedKey(self.fingerprint, self.reason)


def seal(material: KeyMaterial, kek: KeyEncryptionKey) -> EncryptedKey | Refusal:
    """Encrypt one key for the keystore, refusing a certificate of another key."""
    key = material.key
    own = fingerprint(key.private_key.public_key())
    if own != key.fingerprint:
        return Refusal(key.fingerprint, f"refused to store: the certificate is for "
                                        f"{key.fingerprint} but the private key is {own}")
    der = key.private_key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    return EncryptedKey(fingerprint=key.fingerprint, not_before=key.not_before,
                        not_after=key.not_after, source=material.source,
                        certificate_pem=key.certificate.pem.decode() or None,
                        ciphertext=kek.encrypt(der, fingerprint=key.fingerprint),
                        kek_id=kek.id)


def seal_all(materials: Sequence[KeyMaterial],
             kek: KeyEncryptionKey) -> tuple[list[EncryptedKey], list[Refusal]]:
    sealed: list[EncryptedKey] = []
    refused: list[Refusal] = []
    for material in materials:
        result = seal(material, kek)
        if isinstance(result, Refusal):
            refused.append(result)
        else:
            sealed.append(result)
    return sealed, refused


def open_key(row: EncryptedKey, kek: KeyEncryptionKey) -> SealingKey | Refusal:
    """The row's key, or why not.  Never raises for a bad row."""
    if row.kek_id != kek.id:
        return Refusal(row.fingerprint, f"encrypted under key-encryption key id {row.kek_id}, "
                                        f"but {kek.source} has id {kek.id}: wrong KEK file?")
    try:
        der = kek.decrypt(row.ciphertext, fingerprint=row.fingerprint, kek_id=row.kek_id)
    except StoreError:
        return Refusal(row.fingerprint, "ciphertext does not authenticate under the "
                                        "key-encryption key (tampered or misplaced row)")
    try:
        # OpenSSL's own validation costs 40 CPU-ms for a 2048-bit key, 280 for 4096 (a
        # primality test): at every open of a 1,000-cluster store, with 2,000 keys, that
        # was over a minute before the daemon listened.  The material was authenticated
        # by the KEK's AEAD just now; the cheap big-int checks below catch a key whose
        # numbers do not fit together, as for key Secrets read from a cluster.
        private_key = serialization.load_der_private_key(
            der, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return Refusal(row.fingerprint, "decrypted material is not a private key",
                       contradicts_row=True)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        return Refusal(row.fingerprint, "private key is not RSA", contradicts_row=True)
    try:
        check_consistency(private_key)
    except InputError:
        return Refusal(row.fingerprint, "decrypted material is not a consistent RSA "
                                        "private key", contradicts_row=True)
    own = fingerprint(private_key.public_key())
    problems = [] if own == row.fingerprint else [f"its private key is {own}"]
    certificate: Certificate | None = None
    certificate_wrong = False
    if row.certificate_pem:
        try:
            certificate = load_certificate(row.certificate_pem.encode())
        except InputError:
            problems.append("its certificate does not parse")
            certificate_wrong = True
        else:
            # With the private key checked against the row, this also catches a
            # certificate that is not the private key's.
            certificate_wrong = certificate.fingerprint != row.fingerprint
            if certificate_wrong:
                problems.append(f"its certificate is for {certificate.fingerprint}")
    if problems:
        return Refusal(row.fingerprint, f"key material stored under {row.fingerprint} is not "
                                        f"that key's: {' and '.join(problems)}",
                       contradicts_row=True, certificate_wrong=certificate_wrong)
    if certificate is None:
        # A bare private key (e.g. imported from a PEM file): validity is the row's.
        certificate = Certificate(public_key=private_key.public_key(),
                                  not_before=row.not_before, not_after=row.not_after, pem=b"")
    return SealingKey(private_key, certificate)


def open_all(rows: Sequence[EncryptedKey], kek: KeyEncryptionKey) -> LoadedKeys:
    keys: list[SealingKey] = []
    rejected: list[RejectedKey] = []
    for row in rows:
        result = open_key(row, kek)
        if isinstance(result, Refusal):
            rejected.append(result.rejected())
        else:
            keys.append(result)
    return LoadedKeys(keys=tuple(keys), rejected=tuple(rejected))
