"""Round trips and scope isolation, as properties over scopes, values and key sizes."""

from __future__ import annotations

import base64
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealfleet.domain import attribution, hybrid, keys, sealed_secrets
from sealfleet.domain.scopes import Scope, encryption_label
from sealfleet.errors import DecryptionError

# RSA work dominates; a handful of examples per property keeps the suite fast while
# still mixing scopes, key sizes and binary values.
FEW = settings(max_examples=12, deadline=None,
               suppress_health_check=[HealthCheck.too_slow])

dns_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,14}[a-z0-9])?", fullmatch=True)
item_name = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True)
values = st.dictionaries(item_name, st.binary(max_size=300), min_size=1, max_size=4)
scopes = st.sampled_from(list(Scope))


def _secret(namespace: str, name: str, data: dict[str, bytes]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


@pytest.fixture(scope="module")
def all_keys(rsa2048_keys: list[keys.SealingKey],
             rsa4096_key: keys.SealingKey) -> list[keys.SealingKey]:
    return [*rsa2048_keys, rsa4096_key]


@FEW
@given(scope=scopes, namespace=dns_label, name=dns_label, data=values,
       key_index=st.integers(min_value=0, max_value=3))
def test_seal_then_unseal_returns_every_value(all_keys: list[keys.SealingKey], scope: Scope,
                                              namespace: str, name: str,
                                              data: dict[str, bytes], key_index: int) -> None:
    key = all_keys[key_index]
    sealed = sealed_secrets.seal_secret(_secret(namespace, name, data), key.public_key,
                                        scope=scope)
    assert sealed_secrets.identity_of(sealed).scope is scope
    modulus_bytes = key.private_key.key_size // 8
    for item, value in sealed["spec"]["encryptedData"].items():
        raw = base64.b64decode(value, validate=True)
        assert struct.unpack(">H", raw[:2])[0] == modulus_bytes
        assert len(raw) == 2 + modulus_bytes + len(data[item]) + 16
    # Every key is tried, as the controller does; the right one opens it.
    assert sealed_secrets.decrypt_items(sealed, [k.private_key for k in all_keys]) == data
    unsealed = sealed_secrets.unseal(sealed, [key.private_key])
    assert {k: base64.b64decode(v) for k, v in unsealed["data"].items()} == data


@FEW
@given(scope=scopes, namespace=dns_label, name=dns_label, other=dns_label,
       value=st.binary(max_size=64))
def test_a_value_opens_only_under_the_identity_its_scope_binds(
        rsa2048_keys: list[keys.SealingKey], scope: Scope, namespace: str, name: str,
        other: str, value: bytes) -> None:
    key = rsa2048_keys[0]
    sealed = hybrid.encrypt(key.public_key, value, encryption_label(scope, namespace, name))

    def opens(ns: str, nm: str) -> bool:
        try:
            return hybrid.decrypt([key.private_key], sealed,
                                  encryption_label(scope, ns, nm)) == value
        except DecryptionError:
            return False

    assert opens(namespace, name)
    renamed_ok = opens(namespace, other)
    moved_ok = opens(other, name)
    if scope is Scope.STRICT:
        assert renamed_ok == (other == name)
        assert moved_ok == (other == namespace)
    elif scope is Scope.NAMESPACE_WIDE:
        assert renamed_ok
        assert moved_ok == (other == namespace)
    else:
        assert renamed_ok
        assert moved_ok


@pytest.mark.parametrize("size", [0, 1, 1 << 20])
@pytest.mark.parametrize("scope", list(Scope))
def test_empty_and_one_mebibyte_values_round_trip_with_both_key_sizes(
        rsa2048_keys: list[keys.SealingKey], rsa4096_key: keys.SealingKey, size: int,
        scope: Scope) -> None:
    value = os.urandom(size)
    for key in (rsa2048_keys[0], rsa4096_key):
        sealed = sealed_secrets.seal_secret(_secret("ns", "big", {"blob": value}),
                                            key.public_key, scope=scope)
        assert sealed_secrets.decrypt_items(sealed, [key.private_key]) == {"blob": value}


@FEW
@given(sealer=st.integers(min_value=0, max_value=3), order=st.permutations(range(4)),
       scope=scopes, value=st.binary(max_size=32))
def test_attribution_names_the_key_that_sealed_the_item(
        all_keys: list[keys.SealingKey], sealer: int, order: list[int], scope: Scope,
        value: bytes) -> None:
    label = encryption_label(scope, "team-a", "db")
    ciphertext = base64.b64encode(
        hybrid.encrypt(all_keys[sealer].public_key, value, label)).decode()
    candidates = [all_keys[i] for i in order]
    found = attribution.attribute_item(ciphertext, label, candidates)
    assert found.fingerprint == all_keys[sealer].fingerprint
    same_size = [k for k in candidates
                 if k.private_key.key_size == all_keys[sealer].private_key.key_size]
    assert 1 <= found.rsa_attempts <= len(same_size)
    others = [k for k in candidates if k.fingerprint != all_keys[sealer].fingerprint]
    assert attribution.attribute_item(ciphertext, label, others).fingerprint is None


def test_attribution_of_garbage_is_unknown_not_an_error(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    for garbage in ("not base64!", base64.b64encode(b"\x01").decode(), ""):
        found = attribution.attribute_item(garbage, b"", rsa2048_keys)
        assert found.fingerprint is None
        assert found.rsa_attempts == 0


def test_every_item_gets_its_own_session_key(rsa2048_keys: list[keys.SealingKey]) -> None:
    """Same value twice: different ciphertexts (the zero nonce is safe only this way)."""
    key = rsa2048_keys[0]
    sealed = sealed_secrets.seal_secret(
        {"metadata": {"name": "a", "namespace": "b"}, "stringData": {"x": "same", "y": "same"}},
        key.public_key)
    first, second = sealed["spec"]["encryptedData"].values()
    assert first != second
    rsa_first, _ = hybrid.split(base64.b64decode(first))
    rsa_second, _ = hybrid.split(base64.b64decode(second))
    label = encryption_label(Scope.STRICT, "b", "a")
    assert (hybrid.unwrap_session_key(key.private_key, rsa_first, label)
            != hybrid.unwrap_session_key(key.private_key, rsa_second, label))
