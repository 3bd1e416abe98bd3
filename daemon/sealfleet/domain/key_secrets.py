"""Key Secrets (``tls.key`` + ``tls.crt``), read in one place: fingerprint first, private
key parsed on demand and checked fast.

Loading an RSA-4096 private key with cryptography's default checks costs about a
quarter of a second *while holding the GIL* (OpenSSL tests p and q for primality): sixty
keys would freeze the event loop for fifteen seconds at every start.  So:

- the fingerprint only needs the public half, which sits in plain view at the start of
  the PEM (modulus and exponent): we read those two integers from the DER ourselves;
- the private key is loaded without OpenSSL's slow checks and then checked for internal
  consistency here (n = p*q, e*d = 1 modulo p-1 and q-1, the CRT values), which is what
  keeps an inconsistent key from ever reaching a decrypt.  A key whose p or q is not
  prime but consistent can only fail to open things; it cannot misbehave.

The controller does not check that ``tls.crt`` belongs to ``tls.key`` (it keys the
Secret by the private key and serves the certificate as it is).  sealfleet does:
:attr:`KeySecret.problem` names a mismatched pair, and the fleet never keeps such a
Secret as a key (it is recorded as a malformed key instead).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.domain import keys as domain_keys
from sealfleet.domain import likely_keys
from sealfleet.errors import InputError

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class KeySecret:
    """One key Secret as observed: its fingerprint and public facts, key unparsed."""

    name: str
    fingerprint: str
    certificate: domain_keys.Certificate | None
    label: str | None
    resource_version: str
    creation_timestamp: dt.datetime | None
    # Kept only to parse the private key on demand; its data['tls.key'] is the private key,
    # so it stays out of repr (tracebacks, assertion output, a careless log line).
    secret: Mapping[str, Any] = field(repr=False)

    @property
    def problem(self) -> str | None:
        """Why this Secret must not be taken as a key (None when it may): its certificate
        belongs to another key.  Fingerprints are public; nothing secret is named."""
        if self.certificate is not None and self.certificate.fingerprint != self.fingerprint:
            return (f"data['tls.crt'] is the certificate of {self.certificate.fingerprint}, "
                    f"not of the private key in data['tls.key'] ({self.fingerprint})")
        return None

    @property
    def active(self) -> bool:
        """Loaded by the controller: label ``active``, or the legacy name without label."""
        return self.label == domain_keys.KEY_LABEL_ACTIVE or (
            self.label is None and self.name == domain_keys.DEFAULT_KEY_PREFIX)

    @property
    def compromised(self) -> bool:
        return self.label == domain_keys.KEY_LABEL_COMPROMISED

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_before if self.certificate else _EPOCH

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_after if self.certificate else \
            _EPOCH + domain_keys.DEFAULT_KEY_TTL

    def load(self) -> domain_keys.SealingKey:
        """The private key, consistency-checked (milliseconds); InputError when bad."""
        data = self.secret.get("data") or {}
        try:
            pem = base64.b64decode(str(data["tls.key"]), validate=True)
            private_key = serialization.load_pem_private_key(
                pem, password=None, unsafe_skip_rsa_key_validation=True)
        except (KeyError, binascii.Error, ValueError, TypeError, UnsupportedAlgorithm):
            raise InputError("data['tls.key'] is not a PEM private key") from None
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise InputError("data['tls.key'] is not an RSA private key")
        check_consistency(private_key)
        certificate = self.certificate
        if certificate is not None and certificate.fingerprint != self.fingerprint:
            # As in the controller, the key id comes from the private key; keep the
            # certificate's validity (it still decides which key is newest).
            certificate = domain_keys.Certificate(
                public_key=private_key.public_key(), not_before=certificate.not_before,
                not_after=certificate.not_after, pem=certificate.pem)
        return domain_keys.sealing_key_from_private_key(private_key, certificate)


def load_key_secret(secret: Mapping[str, Any]) -> domain_keys.SealingKey:
    """The sealing key a key Secret holds (``tls.key``, validity from ``tls.crt``)."""
    return read_key_secret(secret).load()


def check_consistency(private_key: rsa.RSAPrivateKey) -> None:
    """Reject a key whose private numbers do not fit together (cheap big-int checks)."""
    numbers = private_key.private_numbers()
    public = numbers.public_numbers
    p, q, d, e = numbers.p, numbers.q, numbers.d, public.e
    consistent = (
        p > 1 and q > 1 and p * q == public.n and public.n.bit_length() >= 1024
        and e > 1 and (e * d) % (p - 1) == 1 and (e * d) % (q - 1) == 1
        and numbers.dmp1 == d % (p - 1) and numbers.dmq1 == d % (q - 1)
        and (numbers.iqmp * q) % p == 1)
    if not consistent:
        raise InputError("data['tls.key'] is not a consistent RSA private key")


def read_key_secret(secret: Mapping[str, Any]) -> KeySecret:
    """Fingerprint and certificate of a key Secret; InputError names what is wrong."""
    metadata = secret.get("metadata") or {}
    data = secret.get("data") or {}
    if not isinstance(metadata, Mapping) or not isinstance(data, Mapping):
        raise InputError("metadata and data must be mappings")
    if not data.get("tls.key"):
        raise InputError("Secret has no data['tls.key']")
    try:
        pem = base64.b64decode(str(data["tls.key"]), validate=True)
    except (binascii.Error, ValueError):
        raise InputError("data['tls.key'] is not valid base64") from None
    public_key = public_key_of_private_pem(pem)
    certificate = None
    if data.get("tls.crt"):
        try:
            certificate = domain_keys.load_certificate(
                base64.b64decode(str(data["tls.crt"]), validate=True))
        except (binascii.Error, ValueError):
            raise InputError("data['tls.crt'] is not valid base64") from None
    labels = metadata.get("labels") or {}
    created = metadata.get("creationTimestamp")
    return KeySecret(
        name=str(metadata.get("name") or ""),
        fingerprint=domain_keys.fingerprint(public_key),
        certificate=certificate,
        label=labels.get(domain_keys.KEY_LABEL) if isinstance(labels, Mapping) else None,
        resource_version=str(metadata.get("resourceVersion") or ""),
        creation_timestamp=likely_keys.parse_time(created),
        secret=secret)


def public_key_of_private_pem(pem: bytes) -> rsa.RSAPublicKey:
    """The public half of a PKCS#1 or PKCS#8 RSA private key PEM, without checking it."""
    try:
        text = pem.decode("ascii")
        body = "".join(line for line in text.strip().splitlines()
                       if line and not line.startswith("-----"))
        der = base64.b64decode(body, validate=True)
        modulus, exponent = _rsa_public_numbers(der)
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except (UnicodeDecodeError, binascii.Error, ValueError, IndexError):
        raise InputError("data['tls.key'] is not a PEM RSA private key") from None


def _rsa_public_numbers(der: bytes) -> tuple[int, int]:
    """(n, e) from RSAPrivateKey (PKCS#1) or PrivateKeyInfo (PKCS#8) DER."""
    tag, start, _ = _tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a DER sequence")
    tag, _, v_end = _tlv(der, start)          # version INTEGER
    if tag != 0x02:
        raise ValueError("no version")
    tag, next_start, next_end = _tlv(der, v_end)
    if tag == 0x30:                                  # PKCS#8: AlgorithmIdentifier, key
        tag, inner_start, inner_end = _tlv(der, next_end)
        if tag != 0x04:
            raise ValueError("no private key octet string")
        return _rsa_public_numbers(der[inner_start:inner_end])
    if tag != 0x02:
        raise ValueError("no modulus")
    modulus = int.from_bytes(der[next_start:next_end], "big")
    tag, e_start, e_end = _tlv(der, next_end)
    if tag != 0x02:
        raise ValueError("no exponent")
    return modulus, int.from_bytes(der[e_start:e_end], "big")


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at *pos*."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos:pos + count], "big")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


# ------------------------------------------------------------- the fleet's key Secrets
#
# A key Secret sealfleet writes is named after its key, so that writing it again (a job
# resumed, another cluster) finds the same Secret.  The name is never the controller's
# legacy name (``sealed-secrets-key``, loaded whatever its label, so it could never be
# retired by relabelling), and it is a valid DNS subdomain of fixed length.

FLEET_SECRET_PREFIX = "sealed-secrets-key-sf-"  # noqa: S105 (a name, not a password)
MANAGED_ANNOTATION = "sealfleet.io/managed"
FINGERPRINT_ANNOTATION = "sealfleet.io/fingerprint"
JOB_ANNOTATION = "sealfleet.io/job-id"
# The controller loads only ``active`` (sealed-secrets.md §2); any other value "effectively
# deletes the key from the controller".  ``compromised`` is the README's convention.
LABEL_RETIRED = "retired"
_MAX_NAME = 253
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def fleet_key_secret_name(fingerprint: str) -> str:
    """``sealed-secrets-key-sf-`` + lowercase unpadded base32 of the fingerprint's digest.

    InputError for a string that is not a controller fingerprint (``SHA256:`` + base64
    of 32 bytes).
    """
    head, _, encoded = fingerprint.partition(":")
    try:
        digest = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if head != "SHA256" or len(digest) != 32:
        raise InputError(f"not a key fingerprint: {fingerprint[:80]!r}")
    name = FLEET_SECRET_PREFIX + base64.b32encode(digest).decode().rstrip("=").lower()
    # 22 + 52 characters: far below the limit; the checks keep it so if the scheme changes.
    assert len(name) <= _MAX_NAME
    assert _DNS_SUBDOMAIN.match(name)
    assert name != domain_keys.DEFAULT_KEY_PREFIX
    return name


def label_for_state(state: domain_keys.KeyState) -> str:
    """The key label a key in *state* should carry in a cluster (only ``active`` loads)."""
    return {domain_keys.KeyState.ACTIVE: domain_keys.KEY_LABEL_ACTIVE,
            domain_keys.KeyState.RETIRED: LABEL_RETIRED,
            domain_keys.KeyState.COMPROMISED: domain_keys.KEY_LABEL_COMPROMISED}[state]


def is_managed(secret: Mapping[str, Any]) -> bool:
    """Was this key Secret written by sealfleet (``sealfleet.io/managed: "true"``)?"""
    annotations = (secret.get("metadata") or {}).get("annotations") or {}
    return isinstance(annotations, Mapping) and annotations.get(MANAGED_ANNOTATION) == "true"


def fleet_key_secret_manifest(key: domain_keys.SealingKey, *, namespace: str, job_id: str,
                              label: str = domain_keys.KEY_LABEL_ACTIVE) -> dict[str, Any]:
    """The key Secret sealfleet writes for *key*: the controller's own layout (type
    ``kubernetes.io/tls``, PKCS#1 ``tls.key``, the certificate in ``tls.crt``) under the
    fleet name, with sealfleet's annotations.  Not yet checked: see
    :func:`check_fleet_key_secret`."""
    manifest = domain_keys.key_secret_manifest(
        key, namespace=namespace, name=fleet_key_secret_name(key.fingerprint),
        label_value=label)
    manifest["metadata"]["annotations"] = {MANAGED_ANNOTATION: "true",
                                           FINGERPRINT_ANNOTATION: key.fingerprint,
                                           JOB_ANNOTATION: job_id}
    return manifest


def check_fleet_key_secret(manifest: Mapping[str, Any], fingerprint: str, *,
                           key_prefix: str = domain_keys.DEFAULT_KEY_PREFIX) -> KeySecret:
    """Read *manifest* as the controller will, before it is written; InputError if it
    would not load it as the key *fingerprint*.

    An ``active`` key Secret the controller cannot parse crashes it at start (it indexes
    the certificates of a failed parse, sealed-secrets.md §2), so a Secret is written only
    when: its ``tls.key`` is an RSA private key that is consistent, its ``tls.crt`` holds
    a certificate of that same key (the controller requires one and never checks the
    pair), it is the expected key, its type is ``kubernetes.io/tls``, and its name is not
    the controller's legacy name (which could never be retired by its label).
    """
    name = str((manifest.get("metadata") or {}).get("name") or "")
    if name in (domain_keys.DEFAULT_KEY_PREFIX, key_prefix):
        raise InputError(f"Secret {name!r}: the controller's legacy name is loaded whatever "
                         "its label; sealfleet never writes it")
    if manifest.get("type") != "kubernetes.io/tls":
        raise InputError(f"Secret {name!r}: type must be kubernetes.io/tls")
    secret = read_key_secret(manifest)
    if secret.certificate is None:
        raise InputError(f"Secret {name!r}: data['tls.crt'] holds no certificate (the "
                         "controller would crash on it)")
    if secret.problem is not None:
        raise InputError(f"Secret {name!r}: {secret.problem}")
    if secret.fingerprint != fingerprint:
        raise InputError(f"Secret {name!r}: holds {secret.fingerprint}, not {fingerprint}")
    secret.load()  # InputError: not a consistent RSA key
    return secret


def same_key_material(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Do two key Secrets hold byte-identical ``tls.crt`` and ``tls.key``?"""
    def material(secret: Mapping[str, Any]) -> tuple[bytes, bytes] | None:
        data = secret.get("data") or {}
        try:
            return (base64.b64decode(str(data.get("tls.crt") or ""), validate=True),
                    base64.b64decode(str(data.get("tls.key") or ""), validate=True))
        except (binascii.Error, ValueError):
            return None
    mine, theirs = material(a), material(b)
    return mine is not None and mine == theirs and bool(mine[1])
