"""Sealing keys as the controller makes, names, stores and orders them.

A sealing key is an RSA private key plus a self-signed certificate.  The controller
identifies keys by the SSH-style fingerprint of the public key (``SHA256:...``, what
``ssh-keygen -lf`` prints); sealfleet uses the same string everywhere as the key id.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import functools
import hashlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from sealfleet.errors import InputError

KEY_LABEL = "sealedsecrets.bitnami.com/sealed-secrets-key"
KEY_LABEL_ACTIVE = "active"
KEY_LABEL_COMPROMISED = "compromised"
DEFAULT_KEY_PREFIX = "sealed-secrets-key"
DEFAULT_KEY_TTL = dt.timedelta(hours=87600)
DEFAULT_KEY_BITS = 4096
# KeyUsage = EncipherOnly alone, DER BIT STRING 03 02 00 01.  cryptography refuses to
# build (or parse) this combination, so it goes in as raw bytes, exactly as Go emits it.
_KEY_USAGE_ENCIPHER_ONLY_DER = b"\x03\x02\x00\x01"


class KeyState(enum.StrEnum):
    """What the fleet may do with a key (the ``sealing_keys.state`` column)."""

    ACTIVE = "active"            # may seal and open
    RETIRED = "retired"          # kept for recovery; no cluster should load it
    COMPROMISED = "compromised"  # everything sealed with it must be resealed and rotated


class KeySource(enum.StrEnum):
    """Where sealfleet learned a key from (the ``sealing_keys.source`` column)."""

    CLUSTER = "cluster"          # read from a cluster's key Secret (private key held)
    GENERATED = "generated"      # made by sealfleet
    IMPORTED = "imported"        # brought by a user (backup, PEM pair)
    CERT_ONLY = "cert-only"      # only its certificate is known (least-privilege mode)


class SealingKeySource(enum.StrEnum):
    """How a cluster's sealing key was learned (``clusters.sealing_key_source``)."""

    CERT_PEM = "cert.pem"            # the controller served it at /v1/cert.pem
    NEWEST_ACTIVE = "newest-active"  # the controller's own rule over the key Secrets held


class Ordered(Protocol):
    """What the controller's key ordering needs: the certificate's NotBefore."""

    @property
    def not_before(self) -> dt.datetime: ...


OrderedT = TypeVar("OrderedT", bound=Ordered)
_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


def fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """The controller's key id: ``SHA256:`` + unpadded base64 of SHA-256(SSH wire key)."""
    openssh = public_key.public_bytes(serialization.Encoding.OpenSSH,
                                      serialization.PublicFormat.OpenSSH)
    wire = base64.b64decode(openssh.split(b" ")[1])
    digest = hashlib.sha256(wire).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Certificate:
    """The parts of a sealing certificate sealfleet uses.

    Never touch ``x509.Certificate.extensions`` on controller certificates: their
    EncipherOnly key usage makes cryptography raise.
    """

    public_key: rsa.RSAPublicKey
    not_before: dt.datetime
    not_after: dt.datetime
    pem: bytes
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", fingerprint(self.public_key))

    def is_expired(self, now: dt.datetime) -> bool:
        return now > self.not_after


@dataclass(frozen=True)
class SealingKey:
    """A private key with its certificate.  ``repr`` never shows key material."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate: Certificate

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    @property
    def not_before(self) -> dt.datetime:
        return self.certificate.not_before

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_after

    def private_key_pem(self) -> bytes:
        """PKCS#1 PEM (``RSA PRIVATE KEY``), the form the controller writes to ``tls.key``."""
        return private_key_pem(self.private_key)


def private_key_pem(private_key: rsa.RSAPrivateKey) -> bytes:
    return private_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption())


def generate_sealing_key(*, bits: int = DEFAULT_KEY_BITS, common_name: str = "",
                         now: dt.datetime | None = None,
                         ttl: dt.timedelta = DEFAULT_KEY_TTL) -> SealingKey:
    """Generate a key and certificate exactly as the controller's ``GeneratePrivateKeyAndCert``.

    RSA with e=65537, a random 128-bit serial, subject and issuer empty unless a CN is
    given, NotBefore now, NotAfter now + ttl, critical KeyUsage EncipherOnly and critical
    BasicConstraints CA, signed sha256WithRSAEncryption.
    """
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SealingKey(private_key, self_signed_certificate(private_key, common_name=common_name,
                                                           now=now, ttl=ttl))


def self_signed_certificate(private_key: rsa.RSAPrivateKey, *, common_name: str = "",
                            now: dt.datetime | None = None,
                            ttl: dt.timedelta = DEFAULT_KEY_TTL) -> Certificate:
    not_before = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else [])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(secrets.randbits(128))
        .not_valid_before(not_before)
        .not_valid_after(not_before + ttl)
        .add_extension(x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE,
                                                  _KEY_USAGE_ENCIPHER_ONLY_DER), critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    return _certificate_from_x509(cert)


def _certificate_from_x509(cert: x509.Certificate) -> Certificate:
    public_key = cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise InputError("certificate does not hold an RSA public key")
    return Certificate(public_key=public_key, not_before=cert.not_valid_before_utc,
                       not_after=cert.not_valid_after_utc,
                       pem=cert.public_bytes(serialization.Encoding.PEM))


# Certificates parsed, by their PEM: a scan reads each sealing certificate two or three
# times within seconds (the key Secret's tls.crt, the controller's /v1/cert.pem, the
# store), and a parse with its fingerprint was ~80 us each, a few percent of the event
# loop's first pass.  Certificates are immutable, so one may be shared; the bound keeps
# this to what the clusters scanning at once read, not the fleet.
_PARSED_CERTIFICATES = 256


@functools.lru_cache(maxsize=_PARSED_CERTIFICATES)
def load_certificate(pem: bytes) -> Certificate:
    """Parse the *first* certificate of a PEM bundle, as kubeseal and the controller do."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise InputError("no PEM certificate found") from None
    return _certificate_from_x509(certs[0])


def load_private_key_pem(pem: bytes) -> rsa.RSAPrivateKey:
    """Parse a PKCS#1 or PKCS#8 PEM RSA private key (unencrypted)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise InputError("not a PEM private key (PKCS#1 or PKCS#8)") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm for odd key types
        raise InputError("unsupported private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InputError("private key is not RSA")
    return key


def sealing_key_from_private_key(private_key: rsa.RSAPrivateKey,
                                 certificate: Certificate | None = None) -> SealingKey:
    """Pair a private key with its certificate, or a placeholder one derived from it.

    Without a certificate (a bare PEM key file) validity is unknown; the placeholder
    certificate carries the epoch as NotBefore so it never wins "newest key".
    """
    if certificate is None:
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        certificate = Certificate(public_key=private_key.public_key(), not_before=epoch,
                                  not_after=epoch + DEFAULT_KEY_TTL, pem=b"")
    return SealingKey(private_key, certificate)


def key_secret_manifest(key: SealingKey, *, namespace: str = "kube-system",
                        name: str | None = None, prefix: str = DEFAULT_KEY_PREFIX,
                        label_value: str = KEY_LABEL_ACTIVE,
                        extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A key Secret as the controller's ``writeKey`` creates it (generateName unless *name*)."""
    metadata: dict[str, Any] = {"namespace": namespace,
                                "labels": {**(extra_labels or {}), KEY_LABEL: label_value}}
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = prefix
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(key.certificate.pem).decode(),
            "tls.key": base64.b64encode(key.private_key_pem()).decode(),
        },
    }


def most_recent_key(
        keys: Iterable[OrderedT], *,
        created: Callable[[OrderedT], dt.datetime | None] | None = None) -> OrderedT | None:
    """The controller's ``mostRecentKey``: the key that seals, of those it loaded.

    The controller registers its keys sorted by the Secrets' creationTimestamp at
    whole-second resolution (a stable sort), and a key replaces the current one only
    when its certificate NotBefore is *strictly* later.  So the latest NotBefore wins,
    and of keys with the same NotBefore the one whose Secret was created first.  With
    no *created* (or None for a key), the order of *keys* stands in for creation order.
    This is the one place "newest key" is computed (``../shared/docs/sealed-secrets.md``
    §3, "Startup sequence").
    """
    ordered = list(keys)
    if created is not None:
        def creation(key: OrderedT) -> dt.datetime:
            when = created(key)
            return when.replace(microsecond=0) if when is not None else _NEVER
        ordered.sort(key=creation)
    best: OrderedT | None = None
    for key in ordered:
        if best is None or key.not_before > best.not_before:
            best = key
    return best
