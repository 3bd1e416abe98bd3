"""Sealing keys in the store: public facts, fleet master set, and private keys under the KEK."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sealfleet.adapters.store import KeyEncryptionKey, Store, generate_kek_file
from sealfleet.adapters.store.records import KeyMaterial, KeyRecord
from sealfleet.domain.keys import SealingKey, sealing_key_from_private_key
from sealfleet.errors import ConfigError, StoreError

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def record(fingerprint: str, **changes: object) -> KeyRecord:
    fields: dict[str, object] = {"fingerprint": fingerprint, "not_before": T0,
                                 "not_after": T0 + dt.timedelta(days=3650), "source": "cluster"}
    return KeyRecord(**{**fields, **changes})  # type: ignore[arg-type]


def private_key_forms(key: SealingKey) -> dict[str, bytes]:
    """Every encoding of the private key that must never reach the database file."""
    numbers = key.private_key.private_numbers()
    der1 = key.private_key.private_bytes(serialization.Encoding.DER,
                                         serialization.PrivateFormat.TraditionalOpenSSL,
                                         serialization.NoEncryption())
    der8 = key.private_key.private_bytes(serialization.Encoding.DER,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    pem8 = key.private_key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
    forms = {"pkcs1 pem": key.private_key_pem(), "pkcs8 pem": pem8, "pkcs1 der": der1,
             "pkcs8 der": der8, "pkcs1 der base64": base64.b64encode(der1),
             "pkcs8 der base64": base64.b64encode(der8),
             "pkcs1 pem base64 (tls.key)": base64.b64encode(key.private_key_pem())}
    for name in ("p", "q", "d"):
        value: int = getattr(numbers, name)
        forms[f"prime/exponent {name}"] = value.to_bytes((value.bit_length() + 7) // 8, "big")
    # A PEM body line is a distinctive 64-character run of the base64.
    forms["pem body line"] = key.private_key_pem().splitlines()[5]
    return forms


def database_files(db_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in db_path.parent.glob(db_path.name + "*")}


async def test_private_keys_round_trip_and_never_touch_disk_in_plaintext(
        db_path: Path, kek: KeyEncryptionKey, rsa2048_keys: list[SealingKey]) -> None:
    async with Store.open(db_path, kek=kek) as store:
        await store.keys.store_key_material([KeyMaterial(k, "generated") for k in rsa2048_keys])
        await store.keys.upsert_keys([record(rsa2048_keys[0].fingerprint, source="cert-only")])
        loaded = (await store.keys.load_private_keys()).keys
        # Checked while the WAL (and -shm) still hold the fresh pages, then after close.
        files_open = database_files(db_path)
    files_closed = database_files(db_path)
    assert any(name.endswith("-wal") for name in files_open)
    by_fingerprint = {k.fingerprint: k for k in loaded}
    assert set(by_fingerprint) == {k.fingerprint for k in rsa2048_keys}
    for key in rsa2048_keys:
        assert by_fingerprint[key.fingerprint].private_key.private_numbers() == \
            key.private_key.private_numbers()
        assert by_fingerprint[key.fingerprint].certificate.pem == key.certificate.pem
        for form, needle in private_key_forms(key).items():
            for name, content in {**files_open, **files_closed}.items():
                assert needle not in content, f"{form} of {key.fingerprint} found in {name}"
    # The certificate is public and is stored (sanity check that the scan looks at the data).
    cert_body = rsa2048_keys[0].certificate.pem.splitlines()[3]
    assert any(cert_body in content for content in files_closed.values())


async def test_key_facts_keep_the_private_key_and_never_relax_state(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    await store.keys.store_key_material([KeyMaterial(key, "cluster")])
    await store.keys.upsert_keys([record(key.fingerprint, state="compromised")])
    await store.keys.upsert_keys([record(key.fingerprint, state="active")])  # a cluster relabels it
    (listed,) = await store.keys.list_keys()
    assert (listed.state, listed.has_private_key, listed.source) == ("compromised", True,
                                                                      "cluster")
    # A certificate-less record does not override the certificate's validity.
    assert listed.not_before == key.not_before
    assert listed.certificate_pem == key.certificate.pem.decode()
    # Only an explicit, audited state change relaxes it.
    await store.keys.set_key_state(key.fingerprint, "retired", actor="alice", reason="rotated out")
    (listed,) = await store.keys.list_keys()
    assert listed.state == "retired"
    (entry,) = await store.audit.entries()
    assert (entry.event, entry.actor, entry.details) == (
        "key_state_changed", "alice",
        {"fingerprint": key.fingerprint, "from": "compromised", "to": "retired",
         "reason": "rotated out"})
    with pytest.raises(StoreError, match="no such key"):
        await store.keys.set_key_state("SHA256:nope", "retired", actor="alice")
    with pytest.raises(StoreError, match="unknown key state"):
        await store.keys.set_key_state(key.fingerprint, "lost", actor="alice")


async def test_cert_only_source_gives_way_to_a_real_one(store: Store) -> None:
    await store.keys.upsert_keys([record("K1", source="cert-only")])
    await store.keys.upsert_keys([record("K1", source="cluster")])
    await store.keys.upsert_keys([record("K1", source="imported")])
    (listed,) = await store.keys.list_keys()
    assert (listed.source, listed.has_private_key) == ("cluster", False)


async def test_fleet_master_set_applies_to_keys_seen_later(store: Store) -> None:
    await store.keys.upsert_keys([record("K1"), record("K2")])
    await store.keys.set_fleet_master(["K2", "K3"])
    await store.keys.upsert_keys([record("K3")])
    assert {k.fingerprint: k.fleet_master for k in await store.keys.list_keys()} == {
        "K1": False, "K2": True, "K3": True}
    await store.keys.set_fleet_master(["K1"])
    assert {k.fingerprint: k.fleet_master for k in await store.keys.list_keys()} == {
        "K1": True, "K2": False, "K3": False}


async def test_without_a_kek_private_keys_are_neither_loaded_nor_stored(
        db_path: Path, kek: KeyEncryptionKey, rsa2048_keys: list[SealingKey]) -> None:
    async with Store.open(db_path, kek=kek) as store:
        await store.keys.store_key_material([KeyMaterial(rsa2048_keys[0], "generated")])
    async with Store.open(db_path) as store:
        with pytest.raises(StoreError, match="no key-encryption key is configured"):
            await store.keys.load_private_keys()
        with pytest.raises(StoreError, match="no key-encryption key configured"):
            await store.keys.store_key_material([KeyMaterial(rsa2048_keys[1], "generated")])


async def test_ciphertext_moved_to_another_key_row_does_not_decrypt(
        db_path: Path, kek: KeyEncryptionKey, rsa2048_keys: list[SealingKey]) -> None:
    first, second = rsa2048_keys[:2]
    async with Store.open(db_path, kek=kek) as store:
        await store.keys.store_key_material([KeyMaterial(first, "generated"),
                                             KeyMaterial(second, "generated")])
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE sealing_keys SET private_key_ciphertext = (SELECT private_key_ciphertext "
                 "FROM sealing_keys WHERE fingerprint = ?) WHERE fingerprint = ?",
                 (first.fingerprint, second.fingerprint))
    conn.commit()
    conn.close()
    async with Store.open(db_path, kek=kek) as store:
        loaded = await store.keys.load_private_keys()
        # Not decryptable is not proof of a bad key: refused, but left where it is.
        assert all(k.has_private_key for k in await store.keys.list_keys())
    assert [k.fingerprint for k in loaded.keys] == [first.fingerprint]
    (rejected,) = loaded.rejected
    assert rejected.fingerprint == second.fingerprint
    assert re.search("does not authenticate", rejected.reason)


async def test_key_without_certificate_keeps_its_recorded_validity(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    bare = sealing_key_from_private_key(rsa2048_keys[2].private_key)  # e.g. a bare PEM file
    await store.keys.store_key_material([KeyMaterial(bare, "imported")])
    (loaded,) = (await store.keys.load_private_keys()).keys
    assert loaded.fingerprint == bare.fingerprint
    assert (loaded.not_before, loaded.not_after) == (bare.not_before, bare.not_after)
    (listed,) = await store.keys.list_keys()
    assert listed.certificate_pem is None


def test_kek_file_must_be_private(tmp_path: Path) -> None:
    path = generate_kek_file(tmp_path / "kek")
    assert os.stat(path).st_mode & 0o777 == 0o600
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: mode 0640") + ".*chmod 600"):
        KeyEncryptionKey.from_file(path)
    os.chmod(path, 0o604)
    with pytest.raises(ConfigError, match="group or others"):
        KeyEncryptionKey.from_file(path)
    os.chmod(path, 0o400)
    assert len(KeyEncryptionKey.from_file(path).id) == 16


def test_kek_file_problems_name_the_file(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 31)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match=re.escape(f"{short}: expected 32 bytes, found 31")):
        KeyEncryptionKey.from_file(short)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'missing'}: cannot read")):
        KeyEncryptionKey.from_file(tmp_path / "missing")
    existing = generate_kek_file(tmp_path / "kek")
    before = existing.read_bytes()
    with pytest.raises(StoreError, match="refusing to overwrite"):
        generate_kek_file(existing)
    assert existing.read_bytes() == before


def test_kek_id_identifies_without_revealing(tmp_path: Path) -> None:
    one = KeyEncryptionKey.from_file(generate_kek_file(tmp_path / "one"))
    two = KeyEncryptionKey.from_file(generate_kek_file(tmp_path / "two"))
    assert one.id != two.id
    assert one.id not in one.key.hex()
    assert one.key.hex() not in repr(one)

