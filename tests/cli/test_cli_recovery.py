"""``unseal``, ``reencrypt`` and ``validate`` through the real entry point."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives import serialization

from sealfleet.domain import documents, hybrid, keys, sealed_secrets
from sealfleet.domain.scopes import Scope, encryption_label

if TYPE_CHECKING:  # fixtures' types only; conftest modules are not importable
    from tests.cli.conftest import Cli, KeyFiles

EXAMPLE_FINGERPRINT = "SHA256:F11ReRmau3H0PSgUJ/vHN/gr/XKl3Ryao/6XITLiRCA"
CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
             "data": {"a": "b"}}


def _vectors(directory: Path) -> list[dict[str, Any]]:
    vectors: list[dict[str, Any]] = json.loads((directory / "vectors.json").read_text())["vectors"]
    return vectors


def _vector_file(directory: Path, target: Path, *, name: str = "my-secret",
                 namespace: str = "my-namespace") -> Path:
    """A SealedSecret made of the genuine kubeseal ciphertexts, as a YAML file."""
    sealed = {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
              "metadata": {"name": name, "namespace": namespace},
              "spec": {"template": {"metadata": {"name": "my-secret",
                                                 "namespace": "my-namespace"},
                                    "type": "Opaque"},
                       "encryptedData": {f"v{i}": v["ciphertext"]
                                         for i, v in enumerate(_vectors(directory))}}}
    target.write_text(documents.dump_yaml(sealed))
    return target


def _seal(key: keys.SealingKey, name: str, values: dict[str, str]) -> dict[str, Any]:
    return sealed_secrets.seal_secret(
        {"kind": "Secret", "metadata": {"name": name, "namespace": "ns"}, "stringData": values},
        key.public_key)


def test_unseal_genuine_kubeseal_vectors(cli: Cli, strict_vectors_dir: Path,
                                         tmp_path: Path) -> None:
    sealed = _vector_file(strict_vectors_dir, tmp_path / "sealed.yaml")
    run = cli("unseal", "--recovery-private-key", strict_vectors_dir / "example-key.yaml",
              "-f", sealed, "-o", "yaml")
    assert run.code == 0, run.stderr
    (secret,) = documents.parse_documents(run.stdout)
    assert secret["kind"] == "Secret"
    assert secret["type"] == "Opaque"
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        f"v{i}": v["plaintext"] for i, v in enumerate(_vectors(strict_vectors_dir))}


@pytest.mark.parametrize(("name", "namespace"), [("renamed", "my-namespace"),
                                                 ("my-secret", "elsewhere")])
def test_renamed_or_moved_vectors_fail_with_no_key_could_decrypt(
        cli: Cli, strict_vectors_dir: Path, tmp_path: Path, name: str, namespace: str) -> None:
    sealed = _vector_file(strict_vectors_dir, tmp_path / "sealed.yaml", name=name,
                          namespace=namespace)
    key = strict_vectors_dir / "example-key.yaml"
    run = cli("unseal", "--recovery-private-key", key, "-f", sealed)
    assert run.code == 1
    assert run.stdout == ""
    assert f"{sealed}: document 0 ({namespace}/{name}): no key could decrypt item(s) 'v0'" in (
        run.stderr)
    assert len(run.stderr.strip().splitlines()) == 1
    check = cli("validate", "--recovery-private-key", key, "-f", sealed)
    assert check.code == 1
    assert f"({namespace}/{name}): item 'v0': no key could decrypt it" in check.stderr


def test_recovery_keys_comma_separated_repeated_and_listed(
        cli: Cli, key_files: list[KeyFiles], tmp_path: Path) -> None:
    docs = [_seal(k.key, f"s{i}", {"v": f"value-{i}"}) for i, k in enumerate(key_files)]
    sealed = tmp_path / "all.json"
    sealed.write_text(documents.dump_all(docs, "json"))
    listing = tmp_path / "list.yaml"
    listing.write_text(documents.dump_yaml({"apiVersion": "v1", "kind": "List", "items": [
        keys.key_secret_manifest(key_files[2].key, name="k2")]}))
    run = cli("unseal", "--recovery-private-key", f"{key_files[0].private_key},"
              f"{key_files[1].secret}", "--recovery-private-key", listing, "-f", sealed)
    assert run.code == 0, run.stderr
    secrets = documents.parse_documents(run.stdout)
    assert [base64.b64decode(s["data"]["v"]) for s in secrets] == [
        b"value-0", b"value-1", b"value-2"]
    partial = cli("unseal", "--recovery-private-key", key_files[0].private_key, "-f", sealed)
    assert partial.code == 1
    assert "document 1 (ns/s1): no key could decrypt item(s) 'v'" in partial.stderr


def test_unseal_writes_plaintext_owner_only(cli: Cli, key_files: list[KeyFiles],
                                            tmp_path: Path) -> None:
    sealed = json.dumps(_seal(key_files[0].key, "s", {"v": "x"}))
    target = tmp_path / "secret.yaml"
    run = cli("unseal", "--recovery-private-key", key_files[0].private_key, "-w", target,
              stdin=sealed)
    assert run.code == 0, run.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert documents.parse_documents(target.read_text())[0]["data"] == {"v": "eA=="}


def test_validate_reports_every_failing_document_and_item(
        cli: Cli, key_files: list[KeyFiles], tmp_path: Path) -> None:
    good = _seal(key_files[0].key, "good", {"a": "1", "b": "2"})
    bad = _seal(key_files[0].key, "bad", {"a": "1", "b": "2"})
    bad["spec"]["encryptedData"]["b"] = _seal(key_files[1].key, "bad", {"b": "2"})[
        "spec"]["encryptedData"]["b"]
    bad["spec"]["encryptedData"]["c"] = "AAEC"
    path = tmp_path / "bundle.yaml"
    path.write_text(documents.dump_all([good, CONFIGMAP, bad], "yaml"))
    failing = cli("validate", "--recovery-private-key", key_files[0].private_key, "-f", path)
    assert failing.code == 1
    assert (f"{path}: document 2 (ns/bad): item 'b': no key could decrypt it; "
            "item 'c': too short to be a sealed value") in failing.stderr
    assert "good" not in failing.stderr
    passing = cli("validate", "--recovery-private-key",
                  f"{key_files[0].private_key},{key_files[1].private_key}", "-f", path)
    assert passing.code == 1  # 'c' is garbage whatever the keys
    path.write_text(documents.dump_all([good, CONFIGMAP], "yaml"))
    ok = cli("validate", "--recovery-private-key", key_files[0].secret, "-f", path)
    assert ok.code == 0, ok.stderr
    assert "1 SealedSecret(s), 2 item(s): all decrypt" in ok.stdout


def test_validate_the_genuine_vectors(cli: Cli, strict_vectors_dir: Path,
                                      tmp_path: Path) -> None:
    sealed = _vector_file(strict_vectors_dir, tmp_path / "sealed.yaml")
    run = cli("validate", "--recovery-private-key", strict_vectors_dir / "example-key.yaml",
              stdin=sealed.read_bytes())
    assert run.code == 0, run.stderr


def test_reencrypt_multi_document_to_stdout(cli: Cli, key_files: list[KeyFiles],
                                            tmp_path: Path) -> None:
    old, new = key_files[0], key_files[1]
    docs = [_seal(old.key, "a", {"x": "1"}), CONFIGMAP, _seal(old.key, "b", {"y": "2"})]
    path = tmp_path / "bundle.yaml"
    path.write_text(documents.dump_all(docs, "yaml"))
    run = cli("reencrypt", "--cert", new.cert, "--recovery-private-key", old.private_key,
              "-f", path)
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("---\n")  # keeps the input's format
    out = documents.parse_documents(run.stdout)
    assert out[1] == CONFIGMAP
    for before, after in ((docs[0], out[0]), (docs[2], out[2])):
        assert after["metadata"] == before["metadata"]
        assert after["spec"]["template"] == before["spec"]["template"]
        assert sealed_secrets.decrypt_items(after, [new.key.private_key]) == (
            sealed_secrets.decrypt_items(before, [old.key.private_key]))
    assert "re-encrypted 2 SealedSecret(s)" in run.stderr
    assert path.read_text() == documents.dump_all(docs, "yaml")  # not in place


def test_reencrypt_in_place_is_idempotent(cli: Cli, key_files: list[KeyFiles],
                                          tmp_path: Path) -> None:
    old, new = key_files[0], key_files[2]
    path = tmp_path / "sealed.json"
    path.write_text(documents.dump(_seal(old.key, "a", {"x": "1"}), "json"))
    path.chmod(0o640)
    args = ("reencrypt", "--cert", new.cert, "--recovery-private-key",
            f"{old.private_key},{new.private_key}", "-f", path, "--in-place")
    first = cli(*args)
    assert first.code == 0, first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    after_first = path.read_text()
    assert after_first.startswith("{")
    (doc,) = documents.parse_documents(after_first)
    assert sealed_secrets.decrypt_items(doc, [new.key.private_key]) == {"x": b"1"}
    second = cli(*args)
    assert second.code == 0, second.stderr
    assert "1 already sealed with it" in second.stderr
    assert path.read_text() == after_first


def test_reencrypt_failure_writes_nothing(cli: Cli, key_files: list[KeyFiles],
                                          tmp_path: Path) -> None:
    path = tmp_path / "sealed.yaml"
    original = documents.dump_all([_seal(key_files[0].key, "a", {"x": "1"}),
                                   _seal(key_files[1].key, "b", {"y": "2"})], "yaml")
    path.write_text(original)
    run = cli("reencrypt", "--cert", key_files[2].cert, "--recovery-private-key",
              key_files[0].private_key, "-f", path, "--in-place")
    assert run.code == 1
    assert "document 1 (ns/b): no key could decrypt item(s) 'y'" in run.stderr
    assert path.read_text() == original


def test_reencrypt_refuses_an_expired_target(cli: Cli, key_files: list[KeyFiles],
                                             expired_cert: Path) -> None:
    run = cli("reencrypt", "--cert", expired_cert, "--recovery-private-key",
              key_files[0].private_key, stdin=json.dumps(_seal(key_files[0].key, "a", {"x": "1"})))
    assert run.code == 2
    assert "expired certificate" in run.stderr


def test_reencrypt_in_place_needs_a_file(cli: Cli, key_files: list[KeyFiles]) -> None:
    run = cli("reencrypt", "--cert", key_files[0].cert, "--recovery-private-key",
              key_files[0].private_key, "--in-place", stdin="{}")
    assert run.code == 2
    assert "--in-place needs -f FILE" in run.stderr


def test_namespace_flag_places_manifests_without_one(cli: Cli, key_files: list[KeyFiles],
                                                     tmp_path: Path) -> None:
    """A kustomize-style manifest has no namespace; -n supplies it for the label."""
    old, new = key_files[0], key_files[1]
    sealed = _seal(old.key, "app", {"x": "1"})
    del sealed["metadata"]["namespace"]
    path = tmp_path / "base.yaml"
    path.write_text(documents.dump_yaml(sealed))
    unplaced = cli("unseal", "--recovery-private-key", old.private_key, "-f", path)
    assert unplaced.code == 2
    assert "has no metadata.namespace: pass -n NAMESPACE" in unplaced.stderr
    wrong = cli("validate", "--recovery-private-key", old.private_key, "-n", "other", "-f", path)
    assert wrong.code == 1
    run = cli("unseal", "--recovery-private-key", old.private_key, "-n", "ns", "-f", path)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["metadata"]["namespace"] == "ns"
    moved = cli("reencrypt", "--cert", new.cert, "--recovery-private-key", old.private_key,
                "-n", "ns", "-f", path, "--in-place")
    assert moved.code == 0, moved.stderr
    (after,) = documents.parse_documents(path.read_text())
    assert "namespace" not in after["metadata"]  # the manifest stays namespace-free
    check = cli("validate", "--recovery-private-key", new.private_key, "-n", "ns", "-f", path)
    assert check.code == 0, check.stderr
    mismatch = cli("unseal", "--recovery-private-key", old.private_key, "-n", "x",
                   stdin=json.dumps(_seal(old.key, "a", {"x": "1"})))
    assert mismatch.code == 2
    assert "namespace mismatch" in mismatch.stderr


def test_unseal_a_legacy_spec_data_sealed_secret_with_a_pkcs8_key(
        cli: Cli, key_files: list[KeyFiles], tmp_path: Path) -> None:
    """Pre-encryptedData SealedSecrets (one blob of the whole Secret) still unseal."""
    key = key_files[0].key
    pkcs8 = tmp_path / "key-pkcs8.pem"
    pkcs8.write_bytes(key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    inner = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "legacy", "namespace": "ns", "labels": {"era": "v1"}},
             "data": {"token": base64.b64encode(b"old-token").decode()}}
    blob = hybrid.encrypt(key.public_key, json.dumps(inner).encode(),
                          encryption_label(Scope.STRICT, "ns", "legacy"))
    legacy = {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
              "metadata": {"name": "legacy", "namespace": "ns"},
              "spec": {"data": base64.b64encode(blob).decode()}}
    path = tmp_path / "legacy.yaml"
    path.write_text(documents.dump_all([_seal(key, "modern", {"v": "new"}), legacy], "yaml"))
    run = cli("unseal", "--recovery-private-key", pkcs8, "-f", path, "-o", "yaml")
    assert run.code == 0, run.stderr
    modern, old = documents.parse_documents(run.stdout)
    assert base64.b64decode(modern["data"]["v"]) == b"new"
    assert base64.b64decode(old["data"]["token"]) == b"old-token"
    assert (old["metadata"]["labels"], old["type"]) == ({"era": "v1"}, "Opaque")
    wrong = cli("unseal", "--recovery-private-key", key_files[1].private_key,
                stdin=documents.dump_json(legacy))
    assert wrong.code == 1
    assert ("<stdin>: document 0 (ns/legacy): no key could decrypt item(s) 'spec.data'"
            in wrong.stderr)
