"""Writing the fleet's key Secrets into a cluster over HTTPS: once, never over other key
material, never a Secret the controller could not load; relabelling; reading holdings."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from sealfleet.adapters.kube import fleet_keys
from sealfleet.adapters.kube.client import Conflict
from sealfleet.domain import key_secrets
from sealfleet.domain.keys import (
    KEY_LABEL,
    SealingKey,
    key_secret_manifest,
    sealing_key_from_private_key,
)
from sealfleet.errors import InputError

NS = "kube-system"


def key_secrets_in(cluster: Any) -> dict[str, dict[str, Any]]:
    items, _ = cluster.store.list("secrets", NS)
    return {item["metadata"]["name"]: item for item in items}


async def test_ensuring_a_key_twice_writes_one_secret(cluster: Any,
                                                      rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    async with cluster.client() as client:
        first = await fleet_keys.ensure_key_secret(client, NS, key, "job-1")
        second = await fleet_keys.ensure_key_secret(client, NS, key, "job-2")
    assert first.outcome is fleet_keys.Ensured.CREATED
    assert second.outcome is fleet_keys.Ensured.UNCHANGED
    assert first.name == second.name == key_secrets.fleet_key_secret_name(key.fingerprint)
    assert second.resource_version == first.resource_version  # nothing was written again
    stored = key_secrets_in(cluster)
    assert list(stored) == [first.name]
    secret = stored[first.name]
    assert secret["metadata"]["annotations"]["sealfleet.io/job-id"] == "job-1"
    assert secret["metadata"]["labels"] == {KEY_LABEL: "active"}
    assert key_secrets.read_key_secret(secret).load().fingerprint == key.fingerprint


async def test_other_key_material_under_the_keys_name_is_never_overwritten(
        cluster: Any, rsa2048_keys: list[SealingKey]) -> None:
    key, other = rsa2048_keys[0], rsa2048_keys[1]
    name = key_secrets.fleet_key_secret_name(key.fingerprint)
    squatter = cluster.store.create("secrets", NS, key_secret_manifest(other, name=name))
    async with cluster.client() as client:
        with pytest.raises(fleet_keys.KeyMaterialConflict) as caught:
            await fleet_keys.ensure_key_secret(client, NS, key, "job-1")
    assert other.fingerprint in str(caught.value)
    assert key.fingerprint in str(caught.value)
    assert "PRIVATE" not in str(caught.value)
    assert key_secrets_in(cluster)[name] == squatter


async def test_a_key_secret_the_controller_cannot_load_is_refused_before_writing(
        cluster: Any, rsa2048_keys: list[SealingKey]) -> None:
    key, other = rsa2048_keys[0], rsa2048_keys[1]
    mismatched = SealingKey(key.private_key, other.certificate)
    bare = sealing_key_from_private_key(key.private_key)  # imported without a certificate
    async with cluster.client() as client:
        for broken in (mismatched, bare):
            with pytest.raises(InputError) as caught:
                await fleet_keys.ensure_key_secret(client, NS, broken, "job-1")
            assert "tls.crt" in str(caught.value)
    assert key_secrets_in(cluster) == {}


async def test_relabel_with_and_without_a_precondition_and_never_the_legacy_name(
        cluster: Any, rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    cluster.store.create("secrets", NS, key_secret_manifest(rsa2048_keys[1],
                                                            name="sealed-secrets-key"))
    async with cluster.client() as client:
        ensured = await fleet_keys.ensure_key_secret(client, NS, key, "job-1")
        version = await fleet_keys.set_key_label(client, NS, ensured.name, "retired",
                                                 resource_version=ensured.resource_version)
        with pytest.raises(Conflict):
            await fleet_keys.set_key_label(client, NS, ensured.name, "compromised",
                                           resource_version=ensured.resource_version)
        await fleet_keys.set_key_label(client, NS, ensured.name, "active",
                                       resource_version=version)
        with pytest.raises(InputError, match="whatever its label"):
            await fleet_keys.set_key_label(client, NS, "sealed-secrets-key", "retired")
        again = await fleet_keys.ensure_key_secret(client, NS, key, "job-2")
    assert again.label == "active"
    labels = {name: s["metadata"]["labels"] for name, s in key_secrets_in(cluster).items()}
    assert labels == {ensured.name: {KEY_LABEL: "active"},
                      "sealed-secrets-key": {KEY_LABEL: "active"}}


async def test_holdings_are_every_labelled_key_secret_and_the_legacy_one(
        cluster: Any, rsa2048_keys: list[SealingKey]) -> None:
    first, second, third = rsa2048_keys
    legacy = key_secret_manifest(first, name="sealed-secrets-key")
    del legacy["metadata"]["labels"]  # a pre-0.9 install's key: no label at all
    cluster.store.create("secrets", NS, legacy)
    cluster.store.create("secrets", NS, key_secret_manifest(
        second, name="sealed-secrets-keyabcde", label_value="compromised"))
    broken = key_secret_manifest(third, name="sealed-secrets-keybroke")
    broken["data"]["tls.key"] = base64.b64encode(b"not a key").decode()
    cluster.store.create("secrets", NS, broken)
    cluster.store.create("secrets", NS, {"metadata": {"name": "unrelated"},
                                         "data": {"a": "YQ=="}})
    async with cluster.client() as client:
        await fleet_keys.ensure_key_secret(client, NS, third, "job-1")
        holdings = await fleet_keys.read_key_holdings(client, NS)
    held = {h.secret_name: h for h in holdings.held}
    ours = key_secrets.fleet_key_secret_name(third.fingerprint)
    assert set(held) == {"sealed-secrets-key", "sealed-secrets-keyabcde", ours}
    assert held["sealed-secrets-key"].label is None
    assert held["sealed-secrets-key"].fingerprint == first.fingerprint
    assert held["sealed-secrets-keyabcde"].label == "compromised"
    assert held[ours].managed
    assert not held["sealed-secrets-keyabcde"].managed
    assert held[ours].not_before == third.not_before
    assert held[ours].created is not None
    assert [name for name, _ in holdings.malformed] == ["sealed-secrets-keybroke"]
