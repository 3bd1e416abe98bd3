"""``keys generate`` and ``keys fingerprint`` through the real entry point."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from sealfleet.domain import documents, keyfiles, keys, sealed_secrets

if TYPE_CHECKING:  # fixtures' types only; conftest modules are not importable
    from tests.cli.conftest import Cli, KeyFiles

EXAMPLE_FINGERPRINT = "SHA256:F11ReRmau3H0PSgUJ/vHN/gr/XKl3Ryao/6XITLiRCA"


def test_generate_writes_key_cert_and_secret(cli: Cli, tmp_path: Path) -> None:
    cert, key, secret = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "s.yaml"
    run = cli("keys", "generate", "--cert-out", cert, "--key-out", key, "--secret-out", secret,
              "--namespace", "sealed-secrets", "--cn", "fleet", "--bits", "2048")
    assert run.code == 0, run.stderr
    fingerprint = run.stdout.strip()
    assert fingerprint.startswith("SHA256:")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    assert parsed.subject.rfc4514_string() == "CN=fleet"
    public = parsed.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 2048
    (manifest,) = documents.parse_documents(secret.read_bytes())
    assert manifest["metadata"]["namespace"] == "sealed-secrets"
    assert manifest["metadata"]["generateName"] == "sealed-secrets-key"
    assert manifest["metadata"]["labels"] == {
        "sealedsecrets.bitnami.com/sealed-secrets-key": "active"}
    assert manifest["type"] == "kubernetes.io/tls"
    (from_secret,) = keyfiles.keys_from_bytes(secret.read_bytes(), source="s")
    assert from_secret.fingerprint == fingerprint
    for path in (cert, key, secret):
        check = cli("keys", "fingerprint", path)
        assert check.code == 0, check.stderr
        assert check.stdout.split()[0] == fingerprint
    # The generated pair works end to end: seal with the cert, unseal with the Secret.
    sealed = cli("seal", "--cert", cert, stdin="kind: Secret\nmetadata: {name: a, namespace: b}"
                 "\nstringData: {k: v}\n")
    assert sealed.code == 0, sealed.stderr
    opened = cli("unseal", "--recovery-private-key", secret, stdin=sealed.stdout)
    assert opened.code == 0, opened.stderr
    assert json.loads(opened.stdout)["data"] == {"k": "dg=="}


def test_generate_defaults_to_the_controllers_4096_bits(cli: Cli, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    run = cli("keys", "generate", "--cert-out", cert, "--key-out", key)
    assert run.code == 0, run.stderr
    loaded = keys.load_certificate(cert.read_bytes())
    assert loaded.public_key.key_size == 4096
    assert x509.load_pem_x509_certificate(cert.read_bytes()).subject == x509.Name([])
    assert loaded.not_after - loaded.not_before == keys.DEFAULT_KEY_TTL


def test_generate_refuses_to_overwrite_and_bad_sizes(cli: Cli, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    key.write_text("precious")
    run = cli("keys", "generate", "--cert-out", cert, "--key-out", key, "--bits", "2048")
    assert run.code == 2
    assert f"{key}: already exists (use --force to replace it)" in run.stderr
    assert key.read_text() == "precious"
    assert not cert.exists()
    small = cli("keys", "generate", "--cert-out", cert, "--key-out", tmp_path / "n.pem",
                "--bits", "1024")
    assert small.code == 2
    assert "--bits must be" in small.stderr
    same = cli("keys", "generate", "--cert-out", cert, "--key-out", cert, "--bits", "2048")
    assert same.code == 2
    forced = cli("keys", "generate", "--cert-out", cert, "--key-out", key, "--bits", "2048",
                 "--force", "--secret-out", tmp_path / "s.json", "--secret-name", "master")
    assert forced.code == 0, forced.stderr
    manifest = json.loads((tmp_path / "s.json").read_text())
    assert manifest["metadata"]["name"] == "master"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_fingerprint_of_the_genuine_example_key(cli: Cli, strict_vectors_dir: Path) -> None:
    run = cli("keys", "fingerprint", strict_vectors_dir / "example-key.yaml")
    assert run.code == 0, run.stderr
    assert run.stdout == f"{EXAMPLE_FINGERPRINT} kube-system/sealed-secrets-keygvqgl\n"


def test_fingerprint_of_a_list_from_stdin(cli: Cli, key_files: list[KeyFiles]) -> None:
    listing = {"apiVersion": "v1", "kind": "List",
               "items": [keys.key_secret_manifest(k.key, name=f"k{i}")
                         for i, k in enumerate(key_files)]}
    run = cli("keys", "fingerprint", "-", stdin=json.dumps(listing))
    assert run.code == 0, run.stderr
    assert run.stdout.splitlines() == [f"{k.key.fingerprint} kube-system/k{i}"
                                       for i, k in enumerate(key_files)]


def test_fingerprint_bad_inputs(cli: Cli, tmp_path: Path) -> None:
    missing = cli("keys", "fingerprint", tmp_path / "nope.pem")
    assert missing.code == 2
    assert "nope.pem: cannot read" in missing.stderr
    sealed = tmp_path / "sealed.json"
    sealed.write_text(json.dumps({"kind": sealed_secrets.KIND, "metadata": {"name": "x"}}))
    wrong = cli("keys", "fingerprint", sealed)
    assert wrong.code == 2
    assert f"{sealed}: document 0: expected a Secret, a List or a PEM key" in wrong.stderr
    usage = cli("keys")
    assert usage.code == 2
