"""Genuine kubeseal output decrypts with the genuine controller key, byte for byte.

The vectors (shared/vectors/kubeseal-strict) are the only ground truth from the Go
tools; if these pass, sealfleet's layout, hashes, nonce and strict label are right.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealfleet.domain import attribution, documents, hybrid, keys, sealed_secrets
from sealfleet.domain.scopes import ANNOTATION_CLUSTER_WIDE, ANNOTATION_NAMESPACE_WIDE
from sealfleet.errors import DecryptionError

EXPECTED_FINGERPRINT = "SHA256:F11ReRmau3H0PSgUJ/vHN/gr/XKl3Ryao/6XITLiRCA"
STRICT_LABEL = b"my-namespace/my-secret"


def _vectors(directory: Path) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((directory / "vectors.json").read_text())["vectors"]
    return vectors


def _sealed_leaves(value: Any) -> Iterator[str]:
    """Every string leaf that looks like a 4096-bit sealed value (starts with ``Ag``)."""
    if isinstance(value, dict):
        for child in value.values():
            yield from _sealed_leaves(child)
    elif isinstance(value, list):
        for child in value:
            yield from _sealed_leaves(child)
    elif isinstance(value, str) and value.startswith("Ag") and len(value) > 600:
        yield value


def _vector_sealed_secret(directory: Path) -> dict[str, Any]:
    items = {f"item{i}": v["ciphertext"] for i, v in enumerate(_vectors(directory))}
    return {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
            "metadata": {"name": "my-secret", "namespace": "my-namespace"},
            "spec": {"template": {"metadata": {"name": "my-secret",
                                               "namespace": "my-namespace"}},
                     "encryptedData": items}}


def test_example_key_fingerprint_is_the_controllers_key_id(example_key: keys.SealingKey) -> None:
    assert example_key.fingerprint == EXPECTED_FINGERPRINT


def test_every_vector_ciphertext_decrypts_to_its_plaintext(
        strict_vectors_dir: Path, example_key: keys.SealingKey) -> None:
    vectors = _vectors(strict_vectors_dir)
    assert len(vectors) >= 5
    for vector in vectors:
        assert vector["scope"] == "strict"
        raw = base64.b64decode(vector["ciphertext"], validate=True)
        plaintext = vector["plaintext"].encode()
        assert raw[:2] == b"\x02\x00"
        assert len(raw) == 2 + 512 + len(plaintext) + 16
        label = f"{vector['namespace']}/{vector['name']}".encode()
        assert hybrid.decrypt([example_key.private_key], raw, label) == plaintext


def test_every_sealed_value_in_the_values_files_decrypts(
        strict_vectors_dir: Path, example_key: keys.SealingKey) -> None:
    known = {v["ciphertext"]: v["plaintext"].encode() for v in _vectors(strict_vectors_dir)}
    files = sorted(strict_vectors_dir.glob("*values.yaml"))
    assert len(files) == 3
    for path in files:
        (doc,) = documents.parse_documents(path.read_bytes(), source=path.name)
        leaves = list(_sealed_leaves(doc))
        assert leaves, f"{path.name}: no sealed value found"
        for leaf in leaves:
            plaintext = hybrid.decrypt([example_key.private_key], base64.b64decode(leaf),
                                       STRICT_LABEL)
            assert plaintext == known[leaf], path.name


def test_vectors_unseal_as_a_sealed_secret(strict_vectors_dir: Path,
                                          example_key: keys.SealingKey) -> None:
    sealed = _vector_sealed_secret(strict_vectors_dir)
    secret = sealed_secrets.unseal(sealed, [example_key.private_key])
    expected = {f"item{i}": base64.b64encode(v["plaintext"].encode()).decode()
                for i, v in enumerate(_vectors(strict_vectors_dir))}
    assert secret["data"] == expected
    assert secret["metadata"]["name"] == "my-secret"
    assert secret["metadata"]["namespace"] == "my-namespace"


@pytest.mark.parametrize("change", ["rename", "move", "namespace-wide", "cluster-wide"])
def test_strict_vectors_do_not_open_under_another_identity(
        strict_vectors_dir: Path, example_key: keys.SealingKey, change: str) -> None:
    sealed = copy.deepcopy(_vector_sealed_secret(strict_vectors_dir))
    metadata = sealed["metadata"]
    if change == "rename":
        metadata["name"] = "their-secret"
    elif change == "move":
        metadata["namespace"] = "other-namespace"
    elif change == "namespace-wide":
        metadata["annotations"] = {ANNOTATION_NAMESPACE_WIDE: "true"}
    else:
        metadata["annotations"] = {ANNOTATION_CLUSTER_WIDE: "true"}
    with pytest.raises(DecryptionError, match="no key could decrypt") as caught:
        sealed_secrets.unseal(sealed, [example_key.private_key])
    assert isinstance(caught.value, sealed_secrets.ItemsDecryptionError)
    assert sorted(caught.value.items) == sorted(sealed["spec"]["encryptedData"])


def test_only_the_template_annotation_is_ignored_for_the_label(
        strict_vectors_dir: Path, example_key: keys.SealingKey) -> None:
    """The controller reads the scope from the top-level metadata, never the template."""
    sealed = _vector_sealed_secret(strict_vectors_dir)
    sealed["spec"]["template"]["metadata"]["annotations"] = {ANNOTATION_CLUSTER_WIDE: "true"}
    assert sealed_secrets.decrypt_items(sealed, [example_key.private_key])


def test_vectors_are_attributed_to_the_example_key(
        strict_vectors_dir: Path, example_key: keys.SealingKey,
        rsa2048_keys: list[keys.SealingKey], rsa4096_key: keys.SealingKey) -> None:
    candidates = [*rsa2048_keys, rsa4096_key, example_key]
    for vector in _vectors(strict_vectors_dir):
        found = attribution.attribute_item(vector["ciphertext"], STRICT_LABEL, candidates)
        assert found.fingerprint == EXPECTED_FINGERPRINT
        # 2048-bit keys cannot have produced a 512-byte RSA part: never tried; the other
        # 4096-bit key is tried only when its modulus exceeds the RSA part's value.
        rsa_part, _ = hybrid.split(base64.b64decode(vector["ciphertext"]))
        other_n = attribution.candidate(rsa4096_key).modulus
        assert found.rsa_attempts == 1 + (int.from_bytes(rsa_part, "big") < other_n)
        moved = attribution.attribute_item(vector["ciphertext"], b"elsewhere/my-secret",
                                           candidates)
        assert moved.fingerprint is None
        assert moved.item_hash != found.item_hash
