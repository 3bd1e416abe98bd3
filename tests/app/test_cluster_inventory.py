"""Parsing SealedSecrets for the inventory (``domain/observed``): never raises, names what
is wrong, keeps the rest; the cluster inventory records a malformed one once."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from sealfleet.app.cluster import inventory
from sealfleet.domain import observed
from sealfleet.domain.attribution import item_hash
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.domain.staleness import SecretState


@pytest.fixture(scope="module")
def sealed(rsa2048_keys: list[SealingKey]) -> dict[str, Any]:
    secret = {"metadata": {"name": "db", "namespace": "apps"},
              "stringData": {"password": "p", "user": "u"}}
    document = seal_secret(secret, rsa2048_keys[0].public_key)
    document["metadata"].update(uid="u-1", resourceVersion="42", generation=3)
    document["status"] = {"conditions": [{"type": "Synced", "status": "False",
                                          "message": "no key could decrypt secret"}]}
    return document


def test_a_well_formed_sealed_secret_yields_items_hashed_with_their_label(
        sealed: dict[str, Any]) -> None:
    parsed = observed.parse(sealed)
    assert parsed.malformed_reason is None
    assert parsed.ref == ("apps", "db")
    assert (parsed.uid, parsed.resource_version, parsed.generation) == ("u-1", "42", 3)
    assert parsed.scope is Scope.STRICT
    assert [name for name, _, _ in parsed.items] == ["password", "user"]
    for _, hashed, ciphertext in parsed.items:
        assert hashed == item_hash(ciphertext, parsed.label)
    assert parsed.synced is False
    assert parsed.synced_message == "no key could decrypt secret"


def test_when_it_was_sealed_comes_from_creation_and_the_last_spec_write(
        sealed: dict[str, Any]) -> None:
    document = {**sealed, "metadata": {
        **sealed["metadata"], "creationTimestamp": "2026-02-01T00:00:00Z",
        "managedFields": [{"manager": "kubeseal", "operation": "Update",
                           "time": "2026-04-01T12:00:00Z", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:spec": {"f:encryptedData": {}}}}]}}
    assert observed.parse(document).sealed_at == (
        dt.datetime(2026, 4, 1, 12, tzinfo=dt.UTC), dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    assert observed.parse(sealed).sealed_at == ()  # no timestamps: no time prior


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: d.pop("spec"), "spec is missing"),
    (lambda d: d["spec"].update(encryptedData=["x"]), "spec.encryptedData is not a mapping"),
    (lambda d: d["metadata"].pop("name"), "metadata.namespace or metadata.name is missing"),
    (lambda d: d["spec"]["encryptedData"].update(user=7), "item 'user': value is not a string"),
    (lambda d: d["spec"].update(data="AAAA"), "uses both spec.encryptedData and spec.data"),
])
def test_structurally_malformed_objects_get_a_reason_and_no_items(
        sealed: dict[str, Any], mutate: Any, reason: str) -> None:
    document = {**sealed, "metadata": dict(sealed["metadata"]),
                "spec": {**sealed["spec"], "encryptedData": dict(sealed["spec"]["encryptedData"])}}
    mutate(document)
    parsed = observed.parse(document)
    assert parsed.malformed_reason is not None
    assert reason in parsed.malformed_reason
    assert parsed.items == []


def test_a_bad_item_is_named_and_the_good_items_are_kept(sealed: dict[str, Any]) -> None:
    garbage = base64.b64encode(b"not a sealed value").decode()
    document = {**sealed, "spec": {**sealed["spec"], "encryptedData": {
        **sealed["spec"]["encryptedData"], "broken": garbage, "notb64": "%%%"}}}
    parsed = observed.parse(document)
    assert parsed.malformed_reason is not None
    assert "'broken': not a sealed value" in parsed.malformed_reason
    assert "'notb64': not valid base64" in parsed.malformed_reason
    assert garbage not in parsed.malformed_reason  # reasons never carry values
    assert [name for name, _, _ in parsed.items] == ["broken", "notb64", "password", "user"]


def test_malformed_entries_stay_unknown_and_queue_one_record(sealed: dict[str, Any]) -> None:
    cluster = inventory.ClusterInventory("c1")
    parsed = observed.parse({**sealed, "spec": None})
    cluster.note_malformed(parsed, dt.datetime.now(dt.UTC))
    pending = cluster.take_pending()
    assert [r.state for r in pending.upserts] == [SecretState.UNKNOWN]
    assert pending.upserts[0].malformed_reason == parsed.malformed_reason
    assert cluster.unchanged(sealed)  # same resourceVersion: skipped until it changes
    assert not cluster.unchanged({**sealed, "metadata": {**sealed["metadata"],
                                                         "resourceVersion": "43"}})


def test_an_object_of_very_many_items_is_attributed_only_up_to_a_bound(
        rsa2048_keys: list[SealingKey]) -> None:
    secret = {"metadata": {"name": "big", "namespace": "apps"},
              "stringData": {f"k{i:03d}": "v" for i in range(observed.MAX_ATTRIBUTED_ITEMS + 5)}}
    document = seal_secret(secret, rsa2048_keys[0].public_key)
    document["metadata"].update(uid="u-2", resourceVersion="7")
    parsed = observed.parse(document)
    assert len(parsed.items) == observed.MAX_ATTRIBUTED_ITEMS + 5
    assert len(parsed.attributed_items) == observed.MAX_ATTRIBUTED_ITEMS
    assert parsed.malformed_reason is not None
    assert f"only the first {observed.MAX_ATTRIBUTED_ITEMS} are attributed" \
        in parsed.malformed_reason
