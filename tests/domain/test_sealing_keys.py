"""Generated keys and certificates match the controller's, checked on the raw DER.

cryptography cannot parse the controller's EncipherOnly key usage, so the extensions
are read with a minimal DER walker instead of ``cert.extensions``; the genuine
controller certificate from the vectors is the reference they must match.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import SignatureAlgorithmOID

from sealfleet.domain import key_secrets, keyfiles, keys
from sealfleet.errors import InputError

OID_KEY_USAGE = bytes([0x55, 0x1D, 0x0F])           # 2.5.29.15
OID_BASIC_CONSTRAINTS = bytes([0x55, 0x1D, 0x13])   # 2.5.29.19


def _der(data: bytes, pos: int) -> tuple[int, bytes, int]:
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    return tag, data[pos:pos + length], pos + length


def _children(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(data):
        tag, value, pos = _der(data, pos)
        yield tag, value


def raw_extensions(cert: x509.Certificate) -> list[tuple[bytes, bool, bytes]]:
    """(OID bytes, critical, extnValue) for each extension, straight from the TBS DER."""
    _, tbs, _ = _der(cert.tbs_certificate_bytes, 0)
    for tag, value in _children(tbs):
        if tag == 0xA3:  # [3] EXPLICIT Extensions
            _, sequence, _ = _der(value, 0)
            result = []
            for _, extension in _children(sequence):
                parts = list(_children(extension))
                critical = len(parts) == 3 and parts[1] == (0x01, b"\xff")
                result.append((parts[0][1], critical, parts[-1][1]))
            return result
    return []


def _x509(cert: keys.Certificate) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert.pem)


def _controller_cert(example_key: keys.SealingKey) -> x509.Certificate:
    return _x509(example_key.certificate)


def test_the_controller_certificate_has_the_documented_form(
        example_key: keys.SealingKey) -> None:
    """Guards the reference itself: EncipherOnly (03 02 00 01) and CA, both critical."""
    cert = _controller_cert(example_key)
    assert raw_extensions(cert) == [(OID_KEY_USAGE, True, b"\x03\x02\x00\x01"),
                                    (OID_BASIC_CONSTRAINTS, True, b"\x30\x03\x01\x01\xff")]
    with pytest.raises(ValueError, match="encipher_only"):
        _ = cert.extensions  # the cryptography pitfall that keeps us on raw DER


@pytest.mark.parametrize("bits", [2048, 4096])
def test_generated_certificate_matches_the_controllers(
        example_key: keys.SealingKey, rsa2048_keys: list[keys.SealingKey],
        rsa4096_key: keys.SealingKey, bits: int) -> None:
    key = rsa4096_key if bits == 4096 else rsa2048_keys[0]
    cert = _x509(key.certificate)
    reference = _controller_cert(example_key)
    assert raw_extensions(cert) == raw_extensions(reference)
    assert cert.subject.public_bytes() == b"\x30\x00" == reference.subject.public_bytes()
    assert cert.issuer.public_bytes() == b"\x30\x00"
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.RSA_WITH_SHA256
    assert cert.signature_algorithm_oid == reference.signature_algorithm_oid
    assert 0 < cert.serial_number < 2**128
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(hours=87600)
    assert (reference.not_valid_after_utc - reference.not_valid_before_utc
            == dt.timedelta(hours=87600))
    assert abs(dt.datetime.now(dt.UTC) - cert.not_valid_before_utc) < dt.timedelta(hours=1)
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == bits
    assert public.public_numbers().e == 65537
    assert public.public_numbers() == key.private_key.public_key().public_numbers()
    assert cert.verify_directly_issued_by(cert) is None


def test_serials_are_random_and_use_the_full_128_bits(
        rsa2048_keys: list[keys.SealingKey], rsa4096_key: keys.SealingKey) -> None:
    serials = {_x509(k.certificate).serial_number for k in [*rsa2048_keys, rsa4096_key]}
    assert len(serials) == 4
    assert max(serials).bit_length() > 100  # four 128-bit draws all below 2^100: ~2^-110


def test_common_name_goes_into_subject_and_issuer(rsa2048_keys: list[keys.SealingKey]) -> None:
    cert = _x509(keys.self_signed_certificate(rsa2048_keys[0].private_key,
                                              common_name="sealed-secret"))
    assert cert.subject.rfc4514_string() == "CN=sealed-secret"
    assert cert.issuer == cert.subject


def _ssh_fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """An independent SSH wire encoding: string "ssh-rsa", mpint e, mpint n."""
    def string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    def mpint(value: int) -> bytes:
        return string(value.to_bytes(value.bit_length() // 8 + 1, "big"))

    numbers = public_key.public_numbers()
    wire = string(b"ssh-rsa") + mpint(numbers.e) + mpint(numbers.n)
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def test_fingerprint_is_the_ssh_style_sha256_of_the_public_key(
        rsa2048_keys: list[keys.SealingKey], example_key: keys.SealingKey) -> None:
    for key in [*rsa2048_keys, example_key]:
        assert key.fingerprint == _ssh_fingerprint(key.public_key)
        assert keys.fingerprint(key.certificate.public_key) == key.fingerprint


def test_key_secret_manifest_is_what_the_controller_writes(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    key = rsa2048_keys[0]
    manifest: dict[str, Any] = keys.key_secret_manifest(key)
    assert manifest["type"] == "kubernetes.io/tls"
    assert manifest["metadata"] == {
        "namespace": "kube-system", "generateName": "sealed-secrets-key",
        "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}}
    key_pem = base64.b64decode(manifest["data"]["tls.key"])
    assert key_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1
    assert base64.b64decode(manifest["data"]["tls.crt"]) == key.certificate.pem
    back = key_secrets.load_key_secret(manifest)
    assert back.fingerprint == key.fingerprint
    assert back.not_before == key.not_before
    named = keys.key_secret_manifest(key, name="fleet-master", namespace="sealed-secrets")
    assert named["metadata"]["name"] == "fleet-master"
    assert "generateName" not in named["metadata"]


def test_newest_key_is_decided_by_certificate_not_before(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    made = [keys.SealingKey(k.private_key,
                            keys.self_signed_certificate(k.private_key,
                                                         now=base + dt.timedelta(days=d)))
            for k, d in zip(rsa2048_keys, [5, 30, 10], strict=True)]
    newest = keys.most_recent_key(made)
    assert newest is not None
    assert newest.fingerprint == rsa2048_keys[1].fingerprint
    assert keys.most_recent_key([]) is None


def test_most_recent_key_breaks_not_before_ties_by_first_created_secret(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    """As the controller: registered in creationTimestamp order (whole seconds), replaced
    only by a strictly later NotBefore, so of equal NotBefores the first created wins."""
    base = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    same = [keys.SealingKey(k.private_key, keys.self_signed_certificate(k.private_key, now=base))
            for k in rsa2048_keys]
    created = {same[0].fingerprint: base + dt.timedelta(seconds=20),
               same[1].fingerprint: base + dt.timedelta(seconds=5, microseconds=900_000),
               same[2].fingerprint: base + dt.timedelta(seconds=5, microseconds=100_000)}
    newest = keys.most_recent_key(same, created=lambda k: created[k.fingerprint])
    # 1 and 2 were created in the same whole second: the stable sort keeps their order.
    assert newest is same[1]
    assert keys.most_recent_key(reversed(same), created=lambda k: created[k.fingerprint]) \
        is same[2]
    # Without creation times the order given stands in for it.
    assert keys.most_recent_key(same) is same[0]


def test_key_files_accept_pkcs1_pkcs8_bundles_and_lists(
        rsa2048_keys: list[keys.SealingKey], example_key: keys.SealingKey) -> None:
    first, second, _ = rsa2048_keys
    pkcs8 = first.private_key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
    (from_pkcs8,) = keyfiles.keys_from_bytes(pkcs8, source="k8")
    assert from_pkcs8.fingerprint == first.fingerprint
    bundle = second.certificate.pem + first.private_key_pem() + second.private_key_pem()
    loaded = keyfiles.keys_from_bytes(bundle, source="bundle")
    assert [k.fingerprint for k in loaded] == [first.fingerprint, second.fingerprint]
    assert loaded[1].not_before == second.not_before  # paired with its certificate
    assert loaded[0].not_before.year == 1970           # no certificate: never "newest"
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [keys.key_secret_manifest(first, name="a"),
                         keys.key_secret_manifest(example_key, name="b")]}
    loaded = keyfiles.keys_from_bytes(json.dumps(listing).encode(), source="list")
    assert [k.fingerprint for k in loaded] == [first.fingerprint, example_key.fingerprint]
    assert keyfiles.dedupe([*loaded, *loaded]) == loaded


@pytest.mark.parametrize(("content", "message"), [
    (b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
     "encrypted private keys are not supported"),
    (b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
     "PEM block 0: not a PEM private key"),
    (b"kind: ConfigMap\nmetadata: {name: x}\n", "document 0: expected a Secret"),
    (b"kind: Secret\nmetadata: {name: x}\ndata: {}\n", "document 0 (x): Secret has no"),
    (b"kind: Secret\nmetadata: {name: x}\ndata: {tls.key: '!!'}\n", "not valid base64"),
    (b"", "no private key found"),
])
def test_bad_key_files_name_the_file_and_the_document(content: bytes, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as caught:
        keyfiles.keys_from_bytes(content, source="keys.yaml")
    assert str(caught.value).startswith("keys.yaml: ")


def test_identities_cover_certificates_keys_and_secrets(
        rsa2048_keys: list[keys.SealingKey], example_key: keys.SealingKey) -> None:
    key = rsa2048_keys[0]
    both = keyfiles.identities_from_bytes(key.certificate.pem + key.private_key_pem(),
                                          source="pem")
    assert [(i.fingerprint, i.kind) for i in both] == [(key.fingerprint, "certificate"),
                                                       (key.fingerprint, "private key")]
    secret = json.dumps(keys.key_secret_manifest(example_key, name="k", namespace="ns"))
    (identity,) = keyfiles.identities_from_bytes(secret.encode(), source="secret")
    assert (identity.fingerprint, identity.name) == (example_key.fingerprint, "ns/k")
    with pytest.raises(InputError, match="no certificate, private key or key Secret"):
        keyfiles.identities_from_bytes(b"-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----",
                                       source="pub")


def test_a_certificate_read_again_is_parsed_once_and_a_bad_one_fails_every_time(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    pem = rsa2048_keys[0].certificate.pem
    first = keys.load_certificate(bytes(pem))
    assert keys.load_certificate(bytes(pem)) is first       # equal bytes: the same parse
    assert first.fingerprint == rsa2048_keys[0].fingerprint
    for _ in range(2):                                       # failures are not remembered
        with pytest.raises(InputError, match="no PEM certificate"):
            keys.load_certificate(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
