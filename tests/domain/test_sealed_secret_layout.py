"""The SealedSecret manifest is laid out as kubeseal lays it out (sealed-secrets.md §6)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sealfleet.domain import documents, hybrid, keys, sealed_secrets
from sealfleet.domain.scopes import (
    ANNOTATION_CLUSTER_WIDE,
    ANNOTATION_NAMESPACE_WIDE,
    Scope,
    encryption_label,
)
from sealfleet.errors import InputError


def _input_secret() -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": "db", "namespace": "team-a", "uid": "1234", "resourceVersion": "99",
            "generation": 3, "creationTimestamp": "2024-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}], "labels": {"app": "db"},
            "ownerReferences": [{"kind": "Deployment", "name": "x", "uid": "u"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                            "team": "a"},
        },
        "type": "kubernetes.io/basic-auth",
        "immutable": True,
        "data": {"username": base64.b64encode(b"admin").decode(),
                 "password": base64.b64encode(b"from-data").decode()},
        "stringData": {"password": "from-stringData"},
    }


def test_layout_matches_kubeseal(rsa2048_keys: list[keys.SealingKey]) -> None:
    key = rsa2048_keys[0]
    sealed = sealed_secrets.seal_secret(_input_secret(), key.public_key)
    assert list(sealed) == ["kind", "apiVersion", "metadata", "spec"]
    assert sealed["metadata"] == {"name": "db", "namespace": "team-a",
                                  "creationTimestamp": None}
    assert list(sealed["spec"]) == ["template", "encryptedData"]
    template = sealed["spec"]["template"]
    assert template["type"] == "kubernetes.io/basic-auth"
    assert template["immutable"] is True
    assert "data" not in template
    assert template["metadata"] == {"name": "db", "namespace": "team-a", "labels": {"app": "db"},
                                    "annotations": {"team": "a"}, "creationTimestamp": None}
    # Go's ObjectMeta field order, whatever order the input had.
    assert list(template["metadata"]) == ["name", "namespace", "creationTimestamp", "labels",
                                          "annotations"]
    assert list(sealed["metadata"]) == ["name", "namespace", "creationTimestamp"]
    assert list(sealed["spec"]["encryptedData"]) == ["password", "username"]  # sorted
    values = sealed_secrets.decrypt_items(sealed, [key.private_key])
    assert values == {"username": b"admin", "password": b"from-stringData"}  # stringData wins
    for value in sealed["spec"]["encryptedData"].values():
        assert "\n" not in value
        assert base64.b64encode(base64.b64decode(value, validate=True)).decode() == value


@pytest.mark.parametrize(("scope", "annotation"), [
    (Scope.NAMESPACE_WIDE, ANNOTATION_NAMESPACE_WIDE),
    (Scope.CLUSTER_WIDE, ANNOTATION_CLUSTER_WIDE),
])
def test_a_non_strict_scope_is_annotated_top_level_and_in_the_template(
        rsa2048_keys: list[keys.SealingKey], scope: Scope, annotation: str) -> None:
    sealed = sealed_secrets.seal_secret(_input_secret(), rsa2048_keys[0].public_key,
                                        scope=scope)
    assert sealed["metadata"]["annotations"] == {annotation: "true"}
    assert sealed["spec"]["template"]["metadata"]["annotations"] == {"team": "a",
                                                                     annotation: "true"}
    assert sealed_secrets.identity_of(sealed).scope is scope


def test_strict_flag_keeps_an_input_scope_annotation(rsa2048_keys: list[keys.SealingKey]) -> None:
    """kubeseal's --scope strict is the default value, so it does not strip annotations."""
    secret = _input_secret()
    secret["metadata"]["annotations"][ANNOTATION_CLUSTER_WIDE] = "true"
    sealed = sealed_secrets.seal_secret(secret, rsa2048_keys[0].public_key, scope=Scope.STRICT)
    assert sealed_secrets.identity_of(sealed).scope is Scope.CLUSTER_WIDE
    explicit = sealed_secrets.seal_secret(secret, rsa2048_keys[0].public_key,
                                          scope=Scope.NAMESPACE_WIDE)
    assert sealed_secrets.identity_of(explicit).scope is Scope.NAMESPACE_WIDE
    assert ANNOTATION_CLUSTER_WIDE not in explicit["spec"]["template"]["metadata"]["annotations"]


def test_namespace_and_name_flags(rsa2048_keys: list[keys.SealingKey]) -> None:
    key = rsa2048_keys[0].public_key
    secret = {"kind": "Secret", "metadata": {"name": "a"}, "stringData": {"k": "v"}}
    sealed = sealed_secrets.seal_secret(secret, key, namespace="ns", name="b")
    assert sealed["metadata"]["name"] == "b"
    assert sealed["metadata"]["namespace"] == "ns"
    assert sealed["spec"]["template"]["metadata"]["name"] == "b"
    with pytest.raises(InputError, match="namespace mismatch"):
        sealed_secrets.seal_secret(_input_secret(), key, namespace="other")
    with pytest.raises(InputError, match="has no namespace"):
        sealed_secrets.seal_secret(secret, key)
    cluster_wide = sealed_secrets.seal_secret(secret, key, scope=Scope.CLUSTER_WIDE)
    assert "namespace" not in cluster_wide["metadata"]


@pytest.mark.parametrize(("secret", "message"), [
    ({"kind": "ConfigMap", "metadata": {"name": "a", "namespace": "b"}}, "expected kind Secret"),
    ({"kind": "Secret", "metadata": {"name": "a", "namespace": "b"}}, "no data and no stringData"),
    ({"kind": "Secret", "metadata": {"name": "a", "namespace": "b"}, "data": {"k": "%%"}},
     "item 'k': data value is not valid base64"),
    ({"kind": "Secret", "metadata": {"name": "a", "namespace": "b"}, "stringData": {"k": 5}},
     "item 'k': stringData value must be a string"),
    ({"kind": "Secret", "metadata": {"namespace": "b"}, "stringData": {"k": "v"}},
     "has no name"),
])
def test_bad_secrets_are_input_errors(rsa2048_keys: list[keys.SealingKey],
                                      secret: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        sealed_secrets.seal_secret(secret, rsa2048_keys[0].public_key)


def test_empty_secret_needs_allow_empty_data(rsa2048_keys: list[keys.SealingKey]) -> None:
    secret = {"kind": "Secret", "metadata": {"name": "a", "namespace": "b"}}
    sealed = sealed_secrets.seal_secret(secret, rsa2048_keys[0].public_key,
                                        allow_empty_data=True)
    assert sealed["spec"]["encryptedData"] == {}
    assert sealed_secrets.unseal(sealed, [rsa2048_keys[0].private_key])["data"] == {}


def test_unseal_rebuilds_the_secret_with_template_data(rsa2048_keys: list[keys.SealingKey]) -> None:
    key = rsa2048_keys[0]
    sealed = sealed_secrets.seal_secret(_input_secret(), key.public_key)
    sealed["metadata"]["uid"] = "ss-uid"
    sealed["spec"]["template"]["data"] = {"plain.conf": "x=1"}
    secret = sealed_secrets.unseal(sealed, [key.private_key])
    assert secret["kind"] == "Secret"
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert secret["immutable"] is True
    assert secret["metadata"]["labels"] == {"app": "db"}
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret", "name": "db",
         "uid": "ss-uid", "controller": True}]
    assert base64.b64decode(secret["data"]["plain.conf"]) == b"x=1"
    assert base64.b64decode(secret["data"]["username"]) == b"admin"


def test_go_maps_in_metadata_are_sorted_and_unknown_fields_kept_last(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    secret = {"kind": "Secret", "stringData": {"k": "v"},
              "metadata": {"annotations": {"z": "1", "a": "2"}, "labels": {"y": "1", "b": "2"},
                           "x-custom": 1, "namespace": "ns", "generateName": "g-",
                           "name": "n"}}
    sealed = sealed_secrets.seal_secret(secret, rsa2048_keys[0].public_key)
    meta = sealed["spec"]["template"]["metadata"]
    assert list(meta) == ["name", "generateName", "namespace", "creationTimestamp", "labels",
                          "annotations", "x-custom"]
    assert list(meta["labels"]) == ["b", "y"]
    assert list(meta["annotations"]) == ["a", "z"]
    secret_out = sealed_secrets.unseal(sealed, [rsa2048_keys[0].private_key])
    assert list(secret_out) == ["kind", "apiVersion", "metadata", "data"]


def test_legacy_spec_data_is_accepted(rsa2048_keys: list[keys.SealingKey]) -> None:
    key = rsa2048_keys[0]
    inner = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "old", "namespace": "n"},
             "data": {"k": base64.b64encode(b"legacy").decode()}}
    blob = hybrid.encrypt(key.public_key, json.dumps(inner).encode(),
                          encryption_label(Scope.STRICT, "n", "old"))
    sealed = {"kind": "SealedSecret", "metadata": {"name": "old", "namespace": "n"},
              "spec": {"data": base64.b64encode(blob).decode()}}
    assert sealed_secrets.decrypt_items(sealed, [key.private_key]) == {"k": b"legacy"}
    resealed = sealed_secrets.reencrypt(sealed, [key.private_key], rsa2048_keys[1].public_key)
    assert "data" not in resealed["spec"]
    assert sealed_secrets.decrypt_items(resealed, [rsa2048_keys[1].private_key]) == {
        "k": b"legacy"}
    both = {**sealed, "spec": {**sealed["spec"], "encryptedData": {"k": "AA=="}}}
    with pytest.raises(InputError, match="both"):
        sealed_secrets.decrypt_items(both, [key.private_key])
    with pytest.raises(InputError, match="both"):
        sealed_secrets.unseal(both, [key.private_key])
    with pytest.raises(sealed_secrets.ItemsDecryptionError, match=r"'spec\.data'"):
        sealed_secrets.unseal(sealed, [rsa2048_keys[1].private_key])


def test_legacy_spec_data_unseals_into_the_secret_sealed_inside(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    """As the controller does: labels, annotations and type come from the sealed Secret;
    name and namespace from the SealedSecret (whose label opened it)."""
    key = rsa2048_keys[0]
    inner = {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "inner-name", "namespace": "n", "labels": {"app": "old"},
                          "annotations": {"note": "kept"}},
             "type": "kubernetes.io/basic-auth",
             "data": {"username": base64.b64encode(b"admin").decode()},
             "stringData": {"password": "s3cret"}}
    blob = hybrid.encrypt(key.public_key, json.dumps(inner).encode(),
                          encryption_label(Scope.STRICT, "n", "old"))
    sealed = {"kind": "SealedSecret", "apiVersion": "bitnami.com/v1alpha1",
              "metadata": {"name": "old", "namespace": "n", "uid": "u-1"},
              "spec": {"data": base64.b64encode(blob).decode()}}
    secret = sealed_secrets.unseal(sealed, [key.private_key])
    assert secret["type"] == "kubernetes.io/basic-auth"
    assert (secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("old", "n")
    assert secret["metadata"]["labels"] == {"app": "old"}
    assert secret["metadata"]["annotations"] == {"note": "kept"}
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == {
        "username": b"admin", "password": b"s3cret"}
    # Re-encrypting (like the controller's rotation) turns the blob into items and a
    # template made from the sealed Secret: nothing it carried is lost.
    resealed = sealed_secrets.reencrypt(sealed, [key.private_key], rsa2048_keys[1].public_key)
    assert list(resealed["spec"]) == ["template", "encryptedData"]
    assert resealed["spec"]["template"] == {
        "metadata": {"name": "old", "namespace": "n", "creationTimestamp": None,
                     "labels": {"app": "old"}, "annotations": {"note": "kept"}},
        "type": "kubernetes.io/basic-auth"}
    again = sealed_secrets.unseal(resealed, [rsa2048_keys[1].private_key])
    assert {k: v for k, v in again.items() if k != "metadata"} == {
        k: v for k, v in secret.items() if k != "metadata"}
    assert again["metadata"] == secret["metadata"]
    not_a_secret = hybrid.encrypt(key.public_key, b"[1, 2]",
                                  encryption_label(Scope.STRICT, "n", "old"))
    broken = {**sealed, "spec": {"data": base64.b64encode(not_a_secret).decode()}}
    with pytest.raises(InputError, match=r"spec\.data does not hold a JSON Secret"):
        sealed_secrets.unseal(broken, [key.private_key])


def test_reencrypt_keeps_scope_metadata_and_item_names(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    old, new, _ = rsa2048_keys
    sealed = sealed_secrets.seal_secret(_input_secret(), old.public_key,
                                        scope=Scope.NAMESPACE_WIDE)
    resealed = sealed_secrets.reencrypt(sealed, [new.private_key, old.private_key],
                                        new.public_key)
    assert resealed["metadata"] == sealed["metadata"]
    assert resealed["spec"]["template"] == sealed["spec"]["template"]
    assert list(resealed["spec"]["encryptedData"]) == list(sealed["spec"]["encryptedData"])
    assert sealed_secrets.decrypt_items(resealed, [new.private_key]) == (
        sealed_secrets.decrypt_items(sealed, [old.private_key]))
    with pytest.raises(sealed_secrets.ItemsDecryptionError):
        sealed_secrets.decrypt_items(resealed, [old.private_key])


def test_failing_items_names_each_problem(rsa2048_keys: list[keys.SealingKey]) -> None:
    key = rsa2048_keys[0]
    sealed = sealed_secrets.seal_secret(_input_secret(), key.public_key)
    sealed["spec"]["encryptedData"]["broken"] = "%%%"
    sealed["spec"]["encryptedData"]["short"] = "AAE="
    other = sealed_secrets.seal_secret(_input_secret(), rsa2048_keys[1].public_key)
    sealed["spec"]["encryptedData"]["foreign"] = other["spec"]["encryptedData"]["username"]
    assert sealed_secrets.failing_items(sealed, [key.private_key]) == {
        "broken": "not valid base64", "short": "too short to be a sealed value",
        "foreign": "no key could decrypt it"}


def test_ciphertext_fingerprint_ignores_order_and_sees_every_change() -> None:
    first = sealed_secrets.ciphertext_fingerprint({"a": "1", "b": "2"})
    assert first == sealed_secrets.ciphertext_fingerprint({"b": "2", "a": "1"})
    assert first != sealed_secrets.ciphertext_fingerprint({"a": "1", "c": "2"})
    assert first != sealed_secrets.ciphertext_fingerprint({"a": "1", "b": "3"})
    assert first != sealed_secrets.ciphertext_fingerprint({"a": "1"})


def test_documents_read_yaml_and_json_streams() -> None:
    yaml_stream = b"---\na: 1\n---\n# only a comment\n---\nb: 2021-01-25T11:11:20Z\n"
    assert documents.parse_documents(yaml_stream) == [{"a": 1}, {"b": "2021-01-25T11:11:20Z"}]
    json_stream = b'{"a": 1}\n{"b": [1, 2]}\n'
    assert documents.parse_documents(json_stream) == [{"a": 1}, {"b": [1, 2]}]
    with pytest.raises(InputError, match=r"^in\.json: document 1: invalid JSON"):
        documents.parse_documents(b'{"a": 1}\n{"b": ', source="in.json")
    with pytest.raises(InputError, match=r"^in\.yaml: document 1: expected a mapping"):
        documents.parse_documents(b"a: 1\n---\n- x\n", source="in.yaml")
    with pytest.raises(InputError, match=r"^in\.yaml: invalid YAML at line 2"):
        documents.parse_documents(b"a: 1\na: 2\n", source="in.yaml")


def test_output_formats_follow_kubeseal() -> None:
    doc = {"kind": "SealedSecret", "apiVersion": "v1", "spec": {"b": "x", "a": None}}
    as_json = documents.dump(doc, "json")
    assert as_json.endswith("}\n")
    assert json.loads(as_json) == doc
    assert as_json.index("kind") < as_json.index("apiVersion")
    as_yaml = documents.dump(doc, "yaml")
    assert as_yaml.startswith("---\n")
    assert as_yaml.index("apiVersion") < as_yaml.index("kind")  # keys sorted
    assert documents.parse_documents(as_yaml) == [doc]
    long_value = "A" * 5000
    assert f"v: {long_value}\n" in documents.dump_yaml({"v": long_value})  # never folded
