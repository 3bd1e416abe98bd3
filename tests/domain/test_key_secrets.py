"""Key Secrets are fingerprinted without the slow checked parse, and parsed only on demand."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.domain import key_secrets
from sealfleet.domain.keys import KEY_LABEL, SealingKey, key_secret_manifest, private_key_pem
from sealfleet.errors import InputError


def test_fingerprint_comes_from_the_private_key_without_loading_it(
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    manifest = key_secret_manifest(key, name="k1")
    manifest["metadata"]["creationTimestamp"] = "2026-01-02T03:04:05Z"
    found = key_secrets.read_key_secret(manifest)
    assert found.fingerprint == key.fingerprint
    assert found.active
    assert not found.compromised
    assert found.not_before == key.not_before
    assert found.creation_timestamp is not None
    assert found.load().fingerprint == key.fingerprint
    assert manifest["data"]["tls.key"] not in repr(found)


def test_pkcs8_keys_and_a_mismatched_certificate(rsa2048_keys: list[SealingKey]) -> None:
    key, other = rsa2048_keys[:2]
    manifest: dict[str, Any] = key_secret_manifest(key, name="k2", label_value="compromised")
    pkcs8 = key.private_key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
    manifest["data"]["tls.key"] = base64.b64encode(pkcs8).decode()
    manifest["data"]["tls.crt"] = base64.b64encode(other.certificate.pem).decode()
    found = key_secrets.read_key_secret(manifest)
    # As in the controller, the key id comes from the private key, not the certificate.
    assert found.fingerprint == key.fingerprint
    loaded = found.load()
    assert loaded.fingerprint == key.fingerprint
    assert loaded.not_before == other.not_before
    assert found.compromised
    assert not found.active


@pytest.mark.parametrize("tls_key", ["%%%", base64.b64encode(b"-----BEGIN X-----\nAAAA\n").decode(),
                                     ""])
def test_unreadable_keys_are_input_errors_without_the_value(tls_key: str) -> None:
    secret = {"metadata": {"name": "bad", "labels": {KEY_LABEL: "active"}},
              "data": {"tls.key": tls_key}}
    with pytest.raises(InputError) as caught:
        key_secrets.read_key_secret(secret)
    if tls_key:
        assert tls_key not in str(caught.value)


def test_an_inconsistent_private_key_is_refused_before_any_use(
        rsa2048_keys: list[SealingKey]) -> None:
    numbers = rsa2048_keys[0].private_key.private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=numbers.p, q=numbers.q, d=numbers.d, dmp1=numbers.dmp1 + 2, dmq1=numbers.dmq1,
        iqmp=numbers.iqmp, public_numbers=numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    manifest = key_secret_manifest(rsa2048_keys[0], name="bad")
    manifest["data"]["tls.key"] = base64.b64encode(private_key_pem(broken)).decode()
    found = key_secrets.read_key_secret(manifest)  # the public half is fine
    with pytest.raises(InputError, match="not a consistent RSA private key"):
        found.load()
