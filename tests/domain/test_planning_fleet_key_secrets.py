"""The key Secrets sealfleet writes: their names, their layout, and the check that keeps a
Secret the controller could not load (or would load as another key) from being written."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from sealfleet.domain import key_secrets
from sealfleet.domain.keys import (
    KEY_LABEL,
    KeyState,
    SealingKey,
    fingerprint,
    sealing_key_from_private_key,
    self_signed_certificate,
)
from sealfleet.errors import InputError

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def fingerprint_of(digest: bytes) -> str:
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@given(st.binary(min_size=32, max_size=32))
def test_fleet_names_are_dns_names_never_the_legacy_one_and_one_per_key(digest: bytes) -> None:
    name = key_secrets.fleet_key_secret_name(fingerprint_of(digest))
    assert DNS_SUBDOMAIN.match(name)
    assert len(name) <= 253
    assert name.startswith("sealed-secrets-key-sf-")
    assert name != "sealed-secrets-key"
    other = hashlib.sha256(digest).digest()
    assert key_secrets.fleet_key_secret_name(fingerprint_of(other)) != name
    assert key_secrets.fleet_key_secret_name(fingerprint_of(digest)) == name


@pytest.mark.parametrize("text", ["", "SHA256:", "MD5:" + "A" * 43, "SHA256:" + "A" * 42,
                                  "SHA256:not base64!", "SHA256:" + "A" * 44])
def test_a_string_that_is_no_fingerprint_has_no_fleet_name(text: str) -> None:
    with pytest.raises(InputError, match="not a key fingerprint"):
        key_secrets.fleet_key_secret_name(text)


def test_the_manifest_is_the_controllers_layout_with_sealfleets_annotations(
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    manifest = key_secrets.fleet_key_secret_manifest(key, namespace="kube-system", job_id="j-1")
    metadata = manifest["metadata"]
    assert metadata["name"] == key_secrets.fleet_key_secret_name(key.fingerprint)
    assert metadata["namespace"] == "kube-system"
    assert metadata["labels"] == {KEY_LABEL: "active"}
    assert metadata["annotations"] == {"sealfleet.io/managed": "true",
                                       "sealfleet.io/fingerprint": key.fingerprint,
                                       "sealfleet.io/job-id": "j-1"}
    assert manifest["type"] == "kubernetes.io/tls"
    assert base64.b64decode(manifest["data"]["tls.key"]).startswith(
        b"-----BEGIN RSA PRIVATE KEY-----")
    checked = key_secrets.check_fleet_key_secret(manifest, key.fingerprint)
    assert checked.fingerprint == key.fingerprint
    assert checked.problem is None
    assert key_secrets.read_key_secret(manifest).load().fingerprint == key.fingerprint
    assert key_secrets.is_managed(manifest)


def test_retired_and_compromised_keys_carry_labels_the_controller_does_not_load() -> None:
    assert key_secrets.label_for_state(KeyState.ACTIVE) == "active"
    assert key_secrets.label_for_state(KeyState.RETIRED) == "retired"
    assert key_secrets.label_for_state(KeyState.COMPROMISED) == "compromised"


def _inconsistent(key: SealingKey) -> SealingKey:
    """The same public key with a private exponent that does not fit it."""
    numbers = key.private_key.private_numbers()
    broken = rsa.RSAPrivateNumbers(numbers.p, numbers.q, numbers.d + 2, numbers.dmp1,
                                   numbers.dmq1, numbers.iqmp, numbers.public_numbers)
    private = broken.private_key(unsafe_skip_rsa_key_validation=True)
    return SealingKey(private, self_signed_certificate(private))


@pytest.mark.parametrize("case", ["mismatched-certificate", "no-certificate",
                                  "inconsistent-key", "other-key", "legacy-name", "custom-prefix",
                                  "wrong-type"])
def test_what_the_controller_could_not_load_as_this_key_is_refused(
        rsa2048_keys: list[SealingKey], case: str) -> None:
    key, other = rsa2048_keys[0], rsa2048_keys[1]
    expected, prefix = key.fingerprint, "sealed-secrets-key"
    if case == "mismatched-certificate":
        written = SealingKey(key.private_key, other.certificate)
    elif case == "no-certificate":  # a key imported as a bare PEM file
        written = sealing_key_from_private_key(key.private_key)
    elif case == "inconsistent-key":
        written = _inconsistent(key)
    else:
        written = key
    manifest = key_secrets.fleet_key_secret_manifest(written, namespace="kube-system",
                                                     job_id="j")
    if case == "other-key":
        expected = other.fingerprint
    elif case == "legacy-name":
        manifest["metadata"]["name"] = "sealed-secrets-key"
    elif case == "custom-prefix":
        prefix = manifest["metadata"]["name"]
    elif case == "wrong-type":
        manifest["type"] = "Opaque"
    with pytest.raises(InputError) as caught:
        key_secrets.check_fleet_key_secret(manifest, expected, key_prefix=prefix)
    assert "PRIVATE KEY" not in str(caught.value)
    assert manifest["data"]["tls.key"][:40] not in str(caught.value)


def test_same_key_material_compares_the_bytes(rsa2048_keys: list[SealingKey]) -> None:
    key, other = rsa2048_keys[0], rsa2048_keys[1]
    mine = key_secrets.fleet_key_secret_manifest(key, namespace="ns", job_id="a")
    again = key_secrets.fleet_key_secret_manifest(key, namespace="other", job_id="b")
    theirs = key_secrets.fleet_key_secret_manifest(other, namespace="ns", job_id="a")
    assert key_secrets.same_key_material(mine, again)
    assert not key_secrets.same_key_material(mine, theirs)
    assert not key_secrets.same_key_material(mine, {"data": {"tls.key": "%%%"}})
    assert fingerprint(key.public_key) == key.fingerprint
