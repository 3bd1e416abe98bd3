"""Automatic backups after a new key, their retention, and restoring keys into a store."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pyrage import x25519

from sealfleet.adapters import backup
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import KeyMaterial
from sealfleet.app import backups
from sealfleet.app.config import settings_from_mapping
from sealfleet.app.keystore import Keystore
from sealfleet.domain.keys import KeySource, KeyState, SealingKey
from sealfleet.errors import ConfigError, FleetError, InputError

T0 = dt.datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)


@pytest.fixture
def age_identity() -> x25519.Identity:
    return x25519.Identity.generate()


@pytest.fixture
def policy(tmp_path: Path, age_identity: x25519.Identity) -> backups.BackupPolicy:
    recipients = tmp_path / "recipients"
    recipients.write_text(f"{age_identity.to_public()}\n")
    settings = settings_from_mapping(
        {"backup": {"dir": "backups", "keep": 3, "recipients_file": "recipients"}},
        base_dir=tmp_path, env={})
    made = backups.BackupPolicy.from_settings(settings.backup)
    assert made is not None
    return made


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "inventory.db",
                          kek=KeyEncryptionKey(os.urandom(32))) as opened:
        yield opened


def opener(identity: x25519.Identity) -> backup.Identities:
    return backup.Identities((identity,), "identity")


# ------------------------------------------------------------------ policy from config


def test_backups_are_off_unless_the_config_says_how_to_encrypt(tmp_path: Path) -> None:
    settings = settings_from_mapping({}, base_dir=tmp_path, env={"STATE_DIRECTORY": "/srv/s"})
    assert settings.backup.dir == Path("/srv/s/backups")
    assert settings.backup.keep == 10
    assert backups.BackupPolicy.from_settings(settings.backup) is None


@pytest.mark.parametrize(("table", "expected"), [
    ({"keep": 0}, "backup.keep: input should be greater than or equal to 1"),
    ({"keep": "5"}, "backup.keep: input should be a valid integer"),
    ({"dir": "b"}, "backup: dir is set but neither recipients_file nor passphrase_file"),
    ({"recipients_file": "r", "passphrase_file": "p"},
     "backup: recipients_file and passphrase_file are both set"),
])
def test_backup_settings_errors_name_the_key(tmp_path: Path, table: dict[str, object],
                                             expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        settings_from_mapping({"backup": table}, base_dir=tmp_path, env={})


def test_a_bad_passphrase_file_stops_the_policy_with_the_key_named(tmp_path: Path) -> None:
    passphrase = tmp_path / "pass"
    passphrase.write_text("long enough passphrase\n")
    passphrase.chmod(0o640)
    settings = settings_from_mapping({"backup": {"passphrase_file": "pass"}},
                                     base_dir=tmp_path, env={})
    with pytest.raises(ConfigError, match=r"^sealfleet.toml: backup.passphrase_file: backup "
                                          r"passphrase .*pass: mode 0640"):
        backups.BackupPolicy.from_settings(settings.backup, where="sealfleet.toml: backup")
    passphrase.write_text("short\n")
    passphrase.chmod(0o600)
    with pytest.raises(ConfigError, match="shorter than 12 characters"):
        backups.BackupPolicy.from_settings(settings.backup)
    passphrase.write_text("long enough passphrase\n")
    made = backups.BackupPolicy.from_settings(settings.backup)
    assert made is not None
    assert isinstance(made.encryption, backup.Passphrase)
    assert "long enough" not in repr(made)


# ------------------------------------------------------------------ writing and pruning


def test_file_names_sort_by_time_and_name_the_key_set() -> None:
    name = backups.backup_file_name(T0, ["SHA256:b", "SHA256:a", "SHA256:a"])
    key_set = backups.key_set_id(["SHA256:a", "SHA256:b"])
    assert name == f"sealfleet-keys-20260506T070809.123Z-{key_set}.age"
    assert backups.BACKUP_FILE.match(name)
    later = backups.backup_file_name(T0 + dt.timedelta(milliseconds=1), ["SHA256:z"])
    assert sorted([later, name]) == [name, later]


async def test_a_backup_after_a_new_key_opens_and_is_owner_only(
        policy: backups.BackupPolicy, age_identity: x25519.Identity,
        rsa2048_keys: list[SealingKey]) -> None:
    path = await backups.write_after_new_key(policy, rsa2048_keys, [], now=T0)
    assert path.parent == policy.directory
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(policy.directory.stat().st_mode) == 0o700
    entries = backup.read_backup(path.read_bytes(), opener(age_identity), source=str(path))
    assert {key.fingerprint for key, _ in entries} == {k.fingerprint for k in rsa2048_keys}
    assert [p.name for p in policy.directory.iterdir()] == [path.name]   # no temporary left


async def test_retention_keeps_the_newest_and_touches_nothing_else(
        policy: backups.BackupPolicy, rsa2048_keys: list[SealingKey]) -> None:
    policy.directory.mkdir()
    unrelated = ["notes.txt", "sealfleet-keys-manual.age", "sealfleet-keys-20200101T000000.000Z"
                 "-0000000g.age", ".sealfleet-keys-x.age.tmp"]
    for name in unrelated:
        (policy.directory / name).write_text("keep me")
    written = [await backups.write_after_new_key(policy, rsa2048_keys[:1 + i % 2], [],
                                                 now=T0 + dt.timedelta(minutes=i))
               for i in range(6)]
    assert backups.backup_files(policy.directory) == written[-policy.keep:]
    assert sorted(p.name for p in policy.directory.iterdir()) == sorted(
        [*unrelated, *(p.name for p in written[-policy.keep:])])


async def test_the_backup_just_written_survives_a_clock_that_went_back(
        policy: backups.BackupPolicy, rsa2048_keys: list[SealingKey]) -> None:
    for i in range(policy.keep):
        await backups.write_after_new_key(policy, rsa2048_keys, [],
                                          now=T0 + dt.timedelta(days=1, minutes=i))
    newest_key_set = await backups.write_after_new_key(policy, rsa2048_keys[:1], [], now=T0)
    remaining = backups.backup_files(policy.directory)
    assert newest_key_set in remaining
    assert len(remaining) == policy.keep


async def test_nothing_to_back_up_is_an_error(policy: backups.BackupPolicy) -> None:
    with pytest.raises(FleetError, match="no private keys to back up"):
        await backups.write_after_new_key(policy, [], [], now=T0)


async def test_backing_up_the_keystore_takes_every_stored_key(
        store: Store, policy: backups.BackupPolicy, age_identity: x25519.Identity,
        rsa2048_keys: list[SealingKey]) -> None:
    keystore = Keystore(store)
    await keystore.adopt(rsa2048_keys[:1], source=KeySource.GENERATED)
    # Stored past the keystore (as a job's journal write does), not in its memory yet:
    await store.keys.store_key_material([KeyMaterial(key=rsa2048_keys[1], source="generated")])
    await store.keys.set_key_state(rsa2048_keys[1].fingerprint, KeyState.RETIRED,
                                   actor="test", reason="test")
    assert rsa2048_keys[1].fingerprint not in keystore
    path = await backups.back_up_keystore(policy, keystore, store)
    facts = {f.fingerprint: f for _, f in backup.read_backup(
        path.read_bytes(), opener(age_identity), source="b")}
    assert set(facts) == {k.fingerprint for k in rsa2048_keys[:2]}
    assert facts[rsa2048_keys[1].fingerprint].state == "retired"
    assert facts[rsa2048_keys[0].fingerprint].source == "generated"


# ------------------------------------------------------------------ import


async def test_import_restores_keys_and_states_into_an_empty_store(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    text = backup.plaintext_key_list(rsa2048_keys, [])
    entries = backup.read_backup(text, None, source="keys.yaml")
    compromised = rsa2048_keys[0].fingerprint
    entries = [(key, facts if key.fingerprint != compromised else backup.BackedUpKey(
        fingerprint=compromised, state="compromised", source="cluster", fleet_master=False,
        secret_name="", backed_up_at=None)) for key, facts in entries]
    keystore = Keystore(store)
    result = await backups.import_keys(store, keystore, entries, actor="test",
                                       origin="keys.yaml")
    assert set(result.added) == {k.fingerprint for k in rsa2048_keys}
    assert result.states == ((compromised, "compromised"),)
    assert keystore.compromised == {compromised}
    records = {r.fingerprint: r for r in await store.keys.list_keys()}
    assert all(r.has_private_key for r in records.values())
    assert records[compromised].state == "compromised"
    assert {r.source for r in records.values()} == {"imported"}
    loaded = await store.keys.load_private_keys()
    assert {k.fingerprint for k in loaded.keys} == {k.fingerprint for k in rsa2048_keys}
    audit = await store.audit.entries()
    assert any(e.event == "key_state_changed" and e.details["reason"] == "restored from keys.yaml"
               for e in audit)


async def test_import_never_relaxes_a_state_and_reports_keys_already_held(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    await Keystore(store).adopt([key], source=KeySource.CLUSTER)
    await store.keys.set_key_state(key.fingerprint, KeyState.COMPROMISED, actor="test",
                                   reason="test")
    entries = backup.read_backup(backup.plaintext_key_list([key]), None, source="old.yaml")
    result = await backups.import_keys(store, Keystore(store), entries, actor="test",
                                       origin="old.yaml")
    assert (result.added, result.already_held, result.states) == ((), (key.fingerprint,), ())
    (record,) = await store.keys.list_keys()
    assert (record.state, record.source) == ("compromised", "cluster")


def test_a_pem_pair_of_two_keys_is_refused(rsa2048_keys: list[SealingKey]) -> None:
    mine, other = rsa2048_keys[:2]
    with pytest.raises(InputError) as caught:
        backups.key_from_pem_pair(other.certificate.pem, mine.private_key_pem(),
                                  cert_source="cert.pem", key_source="key.pem")
    assert str(caught.value) == (f"cert.pem: refused: the certificate is for {other.fingerprint}"
                                 f" but key.pem is the private key of {mine.fingerprint}")
    key, facts = backups.key_from_pem_pair(mine.certificate.pem, mine.private_key_pem(),
                                           cert_source="c", key_source="k")
    assert (key.fingerprint, facts.state, facts.source) == (mine.fingerprint, "active",
                                                            "imported")


async def test_a_backup_follows_every_new_key_and_a_restart_with_nothing_new_writes_none(
        policy: backups.BackupPolicy, store: Store, rsa2048_keys: list[SealingKey],
        age_identity: x25519.Identity) -> None:
    """The race of sealed-secrets #359: a key made between two manual backups is lost."""
    import asyncio

    from polling import eventually

    keystore = Keystore(store)
    await keystore.adopt(rsa2048_keys[:1], source=KeySource.CLUSTER)
    keeper = asyncio.create_task(backups.BackupKeeper(policy, keystore, store).run())
    try:
        async def files(count: int) -> list[Path]:
            found = backups.backup_files(policy.directory)
            return found if len(found) == count else []

        (first,) = await eventually(lambda: files(1))
        await keystore.adopt(rsa2048_keys[1:2], source=KeySource.CLUSTER)  # a new key
        _, second = await eventually(lambda: files(2))
    finally:
        keeper.cancel()
    opened = backup.read_backup(second.read_bytes(), opener(age_identity), source=str(second))
    assert {key.fingerprint for key, _ in opened} == {k.fingerprint for k in rsa2048_keys[:2]}
    # The next start: same keys (the fleet refreshes the keystore first), no new file.
    restarted = Keystore(store)
    await restarted.refresh()
    assert restarted.fingerprints() == {k.fingerprint for k in rsa2048_keys[:2]}
    keeper = asyncio.create_task(backups.BackupKeeper(policy, restarted, store).run())
    await asyncio.sleep(0.5)
    keeper.cancel()
    assert backups.backup_files(policy.directory) == [first, second]
