"""The backup format: age around the controller's key List, opened by Debian's age CLI too."""

from __future__ import annotations

import base64
import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pyrage import x25519

from age_cli import age_binary, age_decrypt, age_decrypt_with_passphrase, age_keygen
from sealfleet.adapters import backup
from sealfleet.adapters.store.records import KeyRecord
from sealfleet.domain import documents, keyfiles
from sealfleet.domain import keys as domain_keys
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import ConfigError, DecryptionError, InputError

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
PASSPHRASE = "correct horse battery staple"


def record(key: SealingKey, **changes: object) -> KeyRecord:
    fields: dict[str, object] = {"fingerprint": key.fingerprint, "not_before": key.not_before,
                                 "not_after": key.not_after, "source": "cluster",
                                 "has_private_key": True}
    return KeyRecord(**{**fields, **changes})  # type: ignore[arg-type]


def key_material_forms(key: SealingKey) -> list[bytes]:
    """Encodings of a private key that must never appear outside the envelope."""
    der = key.private_key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
    pem = key.private_key_pem()
    return [der[:64], pem, base64.b64encode(pem)[:64]]


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def identity(tmp_path: Path) -> tuple[backup.Identities, backup.Recipients]:
    generated = x25519.Identity.generate()
    identity_file = private_file(tmp_path / "identity.txt", f"# test\n{generated}\n")
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# the backup key\n\n{generated.to_public()}\n")
    return (backup.read_identity_file(identity_file),
            backup.read_recipients_file(recipients_file))


def test_x25519_round_trip_keeps_keys_and_their_fleet_facts(
        rsa2048_keys: list[SealingKey],
        identity: tuple[backup.Identities, backup.Recipients]) -> None:
    opener, recipients = identity
    first, second, third = rsa2048_keys
    records = [record(first, state="compromised", fleet_master=True),
               record(second, state="retired", source="generated"), record(third)]
    data = backup.write_backup(rsa2048_keys, records, recipients, now=NOW)
    entries = backup.read_backup(data, opener, source="backup.age")
    restored = {key.fingerprint: (key, facts) for key, facts in entries}
    assert set(restored) == {k.fingerprint for k in rsa2048_keys}
    for original in rsa2048_keys:
        key, facts = restored[original.fingerprint]
        assert key.private_key.private_numbers() == original.private_key.private_numbers()
        assert key.certificate.pem == original.certificate.pem
        assert facts.backed_up_at == NOW
    assert (restored[first.fingerprint][1].state, restored[first.fingerprint][1].fleet_master) \
        == ("compromised", True)
    assert (restored[second.fingerprint][1].state, restored[second.fingerprint][1].source) \
        == ("retired", "generated")
    assert restored[third.fingerprint][1].state == "active"


def test_nothing_readable_outside_the_envelope(
        rsa2048_keys: list[SealingKey],
        identity: tuple[backup.Identities, backup.Recipients]) -> None:
    data = backup.write_backup(rsa2048_keys, [], identity[1], now=NOW)
    assert data.startswith(b"age-encryption.org/v1\n")
    for key in rsa2048_keys:
        for form in key_material_forms(key):
            assert form not in data
        assert key.fingerprint.encode() not in data
        assert key.certificate.pem[30:90] not in data
    assert b"sealfleet" not in data
    assert b"kube-system" not in data


@pytest.fixture(scope="module")
def passphrase_backup(rsa2048_keys: list[SealingKey]) -> bytes:
    """One passphrase backup for the module: scrypt costs about a second per use."""
    return backup.write_backup(rsa2048_keys[:1], [], backup.Passphrase(PASSPHRASE, "pass"),
                               now=NOW)


def test_passphrase_round_trip(tmp_path: Path, rsa2048_keys: list[SealingKey],
                               passphrase_backup: bytes) -> None:
    passphrase = backup.read_passphrase_file(private_file(tmp_path / "pass", PASSPHRASE + "\n"))
    assert passphrase.value == PASSPHRASE           # the file's newline is not part of it
    assert PASSPHRASE not in repr(passphrase)
    data = passphrase_backup
    assert b"-> scrypt " in data
    ((key, _),) = backup.read_backup(data, passphrase, source="b.age")
    assert key.fingerprint == rsa2048_keys[0].fingerprint
    wrong = backup.Passphrase("not the passphrase at all", "other-pass")
    with pytest.raises(DecryptionError) as caught:
        backup.read_backup(data, wrong, source="b.age")
    assert str(caught.value) == ("b.age: the passphrase in other-pass does not open it "
                                 "(wrong passphrase, or a damaged file)")


def test_ssh_ed25519_recipient_round_trip(tmp_path: Path,
                                          rsa2048_keys: list[SealingKey]) -> None:
    ssh_key = ed25519.Ed25519PrivateKey.generate()
    public = ssh_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    (tmp_path / "recipients").write_text(public + " ops@example\n")
    identity_file = tmp_path / "id_ed25519"
    identity_file.write_bytes(ssh_key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()))
    identity_file.chmod(0o600)
    data = backup.write_backup(rsa2048_keys[:1], [],
                               backup.read_recipients_file(tmp_path / "recipients"), now=NOW)
    assert b"-> ssh-ed25519 " in data
    (entry,) = backup.read_backup(data, backup.read_identity_file(identity_file), source="b")
    assert entry[0].fingerprint == rsa2048_keys[0].fingerprint


def test_debian_age_cli_opens_the_backup_and_yields_the_kubeseal_key_list(
        tmp_path: Path, rsa2048_keys: list[SealingKey]) -> None:
    identity_file, recipient = age_keygen(tmp_path)
    (tmp_path / "recipients").write_text(recipient + "\n")
    records = [record(rsa2048_keys[0], state="compromised")]
    data = backup.write_backup(rsa2048_keys, records,
                               backup.read_recipients_file(tmp_path / "recipients"), now=NOW)
    (tmp_path / "keys.age").write_bytes(data)
    opened = age_decrypt(tmp_path / "keys.age", tmp_path / "keys.yaml", identity=identity_file)
    assert opened.returncode == 0, opened.stderr
    plaintext = (tmp_path / "keys.yaml").read_bytes()
    (listing,) = documents.parse_documents(plaintext)
    assert (listing["apiVersion"], listing["kind"]) == ("v1", "List")
    for secret in listing["items"]:
        assert (secret["kind"], secret["type"]) == ("Secret", "kubernetes.io/tls")
        assert secret["metadata"]["namespace"] == "kube-system"
        assert set(secret["data"]) == {"tls.crt", "tls.key"}
    labels = [s["metadata"]["labels"][domain_keys.KEY_LABEL] for s in listing["items"]]
    assert sorted(labels) == ["active", "active", "compromised"]
    # What --recovery-private-key reads (kubeseal's forms, sealfleet's reader).
    found = keyfiles.keys_from_bytes(plaintext, source="keys.yaml")
    assert {k.fingerprint for k in found} == {k.fingerprint for k in rsa2048_keys}


def test_debian_age_cli_opens_a_passphrase_backup(tmp_path: Path,
                                                  rsa2048_keys: list[SealingKey],
                                                  passphrase_backup: bytes) -> None:
    age_binary()
    (tmp_path / "keys.age").write_bytes(passphrase_backup)
    opened = age_decrypt_with_passphrase(tmp_path / "keys.age", tmp_path / "keys.yaml",
                                         passphrase=PASSPHRASE)
    assert opened.returncode == 0, opened.stderr
    (key,) = keyfiles.keys_from_bytes((tmp_path / "keys.yaml").read_bytes(), source="k")
    assert key.fingerprint == rsa2048_keys[0].fingerprint


def test_debian_age_cli_opens_an_ssh_ed25519_backup(tmp_path: Path,
                                                    rsa2048_keys: list[SealingKey]) -> None:
    age_binary()
    ssh_key = ed25519.Ed25519PrivateKey.generate()
    identity_file = tmp_path / "id_ed25519"
    identity_file.write_bytes(ssh_key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.OpenSSH,
                                                    serialization.NoEncryption()))
    identity_file.chmod(0o600)
    (tmp_path / "recipients").write_text(ssh_key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + "\n")
    data = backup.write_backup(rsa2048_keys[:1], [],
                               backup.read_recipients_file(tmp_path / "recipients"), now=NOW)
    (tmp_path / "keys.age").write_bytes(data)
    opened = age_decrypt(tmp_path / "keys.age", tmp_path / "keys.yaml", identity=identity_file)
    assert opened.returncode == 0, opened.stderr
    (key,) = keyfiles.keys_from_bytes((tmp_path / "keys.yaml").read_bytes(), source="k")
    assert key.fingerprint == rsa2048_keys[0].fingerprint


def test_a_kubectl_key_list_encrypted_with_the_age_cli_reads_as_a_backup(
        tmp_path: Path, rsa2048_keys: list[SealingKey]) -> None:
    """The other direction: a user's own `kubectl get ... | age -r` backup restores."""
    identity_file, recipient = age_keygen(tmp_path)
    manifests = [domain_keys.key_secret_manifest(rsa2048_keys[0], name="sealed-secrets-keyab"),
                 domain_keys.key_secret_manifest(rsa2048_keys[1], name="sealed-secrets-keycd",
                                                 label_value="compromised")]
    listing = {"apiVersion": "v1", "kind": "List", "items": manifests,
               "metadata": {"resourceVersion": ""}}
    (tmp_path / "keys.yaml").write_text(documents.dump_yaml(listing))
    subprocess.run([age_binary(), "-r", recipient, "-o", str(tmp_path / "keys.age"),
                    str(tmp_path / "keys.yaml")], check=True, capture_output=True, timeout=60)
    entries = backup.read_backup((tmp_path / "keys.age").read_bytes(),
                                 backup.read_identity_file(identity_file), source="keys.age")
    facts = {key.fingerprint: f for key, f in entries}
    assert facts[rsa2048_keys[0].fingerprint].state == "active"
    assert facts[rsa2048_keys[1].fingerprint].state == "compromised"
    assert facts[rsa2048_keys[1].fingerprint].source is None
    assert facts[rsa2048_keys[1].fingerprint].secret_name == "sealed-secrets-keycd"


def test_label_follows_the_fleet_state_and_a_key_without_certificate_has_none(
        rsa2048_keys: list[SealingKey]) -> None:
    bare = domain_keys.sealing_key_from_private_key(rsa2048_keys[2].private_key)
    bare = SealingKey(bare.private_key, domain_keys.Certificate(
        public_key=bare.public_key, not_before=NOW - dt.timedelta(days=9),
        not_after=NOW + dt.timedelta(days=99), pem=b""))
    keys = [rsa2048_keys[0], rsa2048_keys[1], bare]
    text = backup.plaintext_key_list(keys, [record(rsa2048_keys[1], state="retired")], now=NOW)
    assert text.startswith(b"# sealfleet key backup (format 1): 3 sealing key(s)")
    (listing,) = documents.parse_documents(text)
    by_fingerprint = {s["metadata"]["annotations"]["sealfleet/fingerprint"]: s
                      for s in listing["items"]}
    assert by_fingerprint[rsa2048_keys[0].fingerprint]["metadata"]["labels"] == {
        domain_keys.KEY_LABEL: "active"}
    assert by_fingerprint[rsa2048_keys[1].fingerprint]["metadata"]["labels"] == {
        domain_keys.KEY_LABEL: "retired"}
    bare_secret = by_fingerprint[bare.fingerprint]
    assert "labels" not in bare_secret["metadata"]      # a controller must never load it
    assert set(bare_secret["data"]) == {"tls.key"}
    restored = {k.fingerprint: k for k, _ in backup.read_backup(text, None, source="k")}
    assert (restored[bare.fingerprint].not_before, restored[bare.fingerprint].not_after) == (
        bare.not_before.replace(microsecond=0), bare.not_after.replace(microsecond=0))


def test_a_secret_whose_certificate_is_another_keys_refuses_the_whole_file(
        rsa2048_keys: list[SealingKey]) -> None:
    good = domain_keys.key_secret_manifest(rsa2048_keys[0], name="good")
    mixed = domain_keys.key_secret_manifest(rsa2048_keys[1], name="mixed")
    mixed["data"]["tls.crt"] = base64.b64encode(rsa2048_keys[2].certificate.pem).decode()
    text = documents.dump_yaml({"apiVersion": "v1", "kind": "List", "items": [good, mixed]})
    with pytest.raises(InputError) as caught:
        backup.read_backup(text.encode(), None, source="keys.yaml")
    message = str(caught.value)
    assert message.startswith("keys.yaml: Secret 1 (mixed): refused: data['tls.crt'] is the "
                              f"certificate of {rsa2048_keys[2].fingerprint}")
    assert "\n" not in message
    assert "PRIVATE" not in message


def test_a_fingerprint_annotation_naming_another_key_is_refused(
        rsa2048_keys: list[SealingKey]) -> None:
    text = backup.plaintext_key_list(rsa2048_keys[:1], now=NOW).replace(
        rsa2048_keys[0].fingerprint.encode(), rsa2048_keys[1].fingerprint.encode())
    with pytest.raises(InputError, match="fingerprint annotation names another key"):
        backup.read_backup(text, None, source="k")


def test_wrong_opener_errors_say_what_to_use(
        tmp_path: Path, rsa2048_keys: list[SealingKey],
        identity: tuple[backup.Identities, backup.Recipients]) -> None:
    opener, recipients = identity
    data = backup.write_backup(rsa2048_keys[:1], [], recipients, now=NOW)
    other = private_file(tmp_path / "other.txt", f"{x25519.Identity.generate()}\n")
    with pytest.raises(DecryptionError, match=r"^b.age: no identity in .*other.txt opens it"):
        backup.read_backup(data, backup.read_identity_file(other), source="b.age")
    with pytest.raises(DecryptionError, match=r"not encrypted with a passphrase .*X25519.*"
                                              r"use --identity-file"):
        backup.read_backup(data, backup.Passphrase(PASSPHRASE, "p"), source="b.age")
    with pytest.raises(InputError, match="is age-encrypted: give --identity-file"):
        backup.read_backup(data, None, source="b.age")
    with pytest.raises(DecryptionError, match="damaged"):
        backup.read_backup(data[:len(data) // 2], opener, source="b.age")
    with pytest.raises(InputError, match="not an age-encrypted file"):
        backup.decrypt_backup(b"apiVersion: v1\n", opener, source="b.age")


def test_recipient_and_identity_files_are_checked_without_quoting_them(tmp_path: Path) -> None:
    bad = tmp_path / "recipients"
    bad.write_text("age1qqqqqqqqqqqq-not-bech32\n")
    with pytest.raises(InputError, match=r"recipients: line 1: not a valid recipient$"):
        backup.read_recipients_file(bad)
    bad.write_text("# only a comment\nAGE-SECRET-KEY-1SHOULDNOTBEHERE\n")
    with pytest.raises(InputError) as caught:
        backup.read_recipients_file(bad)
    assert "line 2: not an age X25519 recipient" in str(caught.value)
    assert "SHOULDNOTBEHERE" not in str(caught.value)
    bad.write_text("")
    with pytest.raises(InputError, match="no recipients"):
        backup.read_recipients_file(bad)
    identity = private_file(tmp_path / "identity", "AGE-SECRET-KEY-1SECRETBITSHERE\n")
    with pytest.raises(InputError) as caught:
        backup.read_identity_file(identity)
    assert "line 1: not an age identity" in str(caught.value)
    assert "SECRETBITS" not in str(caught.value)


def test_group_writable_recipients_and_shared_secrets_are_refused(tmp_path: Path) -> None:
    recipients = tmp_path / "recipients"
    recipients.write_text(f"{x25519.Identity.generate().to_public()}\n")
    recipients.chmod(0o664)
    with pytest.raises(InputError, match="lets group or others change the recipients; "
                                         "run: chmod go-w"):
        backup.read_recipients_file(recipients)
    for path, reader in ((tmp_path / "identity", backup.read_identity_file),
                         (tmp_path / "pass", backup.read_passphrase_file)):
        path.write_text(f"{x25519.Identity.generate()}\n")
        os.chmod(path, 0o644)
        with pytest.raises(ConfigError, match=r"mode 0644 lets group or others access it"):
            reader(path)


def test_a_short_or_empty_passphrase_is_refused(tmp_path: Path,
                                                rsa2048_keys: list[SealingKey]) -> None:
    with pytest.raises(InputError, match="shorter than 12 characters"):
        backup.write_backup(rsa2048_keys[:1], [], backup.Passphrase("hunter2", "pass"))
    with pytest.raises(InputError, match="the passphrase is empty"):
        backup.read_passphrase_file(private_file(tmp_path / "empty", "\n"))
