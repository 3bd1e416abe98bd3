"""A wrong key-encryption key is refused when the store opens, not when a key is first needed."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from sealfleet.adapters.store import KeyEncryptionKey, Store, generate_kek_file, migrations
from sealfleet.adapters.store.records import KeyMaterial
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import StoreError


def verifier_rows(path: Path) -> list[tuple[str, int]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT kek_id, length(check_value) FROM kek_verifier").fetchall()
    finally:
        conn.close()


def before_0003(folder: Path) -> Path:
    """A migrations folder as shipped before the KEK check value existed."""
    folder.mkdir()
    for name in ("0001_initial", "0002_key_refs"):
        shutil.copy(migrations.default_migrations_dir() / f"{name}.sql", folder)
    return folder


@pytest.fixture
def other_kek(tmp_path: Path) -> KeyEncryptionKey:
    return KeyEncryptionKey.from_file(generate_kek_file(tmp_path / "other-kek"))


async def test_a_copy_opened_with_another_kek_is_refused_at_open_naming_both_files(
        db_path: Path, tmp_path: Path, kek: KeyEncryptionKey, other_kek: KeyEncryptionKey,
        rsa2048_keys: list[SealingKey]) -> None:
    async with Store.open(db_path, kek=kek) as store:
        await store.keys.store_key_material([KeyMaterial(rsa2048_keys[0], "generated")])
    assert verifier_rows(db_path) == [(kek.id, 12 + 28 + 16)]   # nonce, constant, tag
    copy = tmp_path / "copy.db"
    shutil.copy(db_path, copy)
    with pytest.raises(StoreError) as refused:
        async with Store.open(copy, kek=other_kek):
            pytest.fail("a store with the wrong KEK opened")
    message = str(refused.value)
    assert str(copy) in message
    assert str(other_kek.source) in message
    assert "wrong KEK file?" in message
    assert "\n" not in message
    # The right KEK still opens the copy, and loads the key.
    async with Store.open(copy, kek=kek) as store:
        loaded = await store.keys.load_private_keys()
    assert [k.fingerprint for k in loaded.keys] == [rsa2048_keys[0].fingerprint]


async def test_the_first_open_with_a_kek_adopts_it_even_with_no_keys_stored(
        db_path: Path, kek: KeyEncryptionKey, other_kek: KeyEncryptionKey) -> None:
    async with Store.open(db_path):           # e.g. `sealfleet db migrate`: no KEK
        pass
    assert verifier_rows(db_path) == []
    async with Store.open(db_path, kek=kek):
        pass
    assert [kek_id for kek_id, _ in verifier_rows(db_path)] == [kek.id]
    async with Store.open(db_path, kek=kek):  # reopening writes nothing new
        pass
    assert [kek_id for kek_id, _ in verifier_rows(db_path)] == [kek.id]
    with pytest.raises(StoreError, match=re.escape(f"{db_path}: key-encryption key "
                                                   f"{other_kek.source}")):
        async with Store.open(db_path, kek=other_kek):
            pass


async def test_without_a_kek_the_check_is_skipped(db_path: Path, kek: KeyEncryptionKey) -> None:
    """Read-only CLI commands open the store without a KEK: they neither check nor write."""
    async with Store.open(db_path, kek=kek):
        pass
    async with Store.open(db_path, migrate=False) as store:
        assert await store.keys.list_keys() == []
    assert [kek_id for kek_id, _ in verifier_rows(db_path)] == [kek.id]


async def test_a_database_from_before_the_check_is_adopted_only_by_its_keys_kek(
        db_path: Path, tmp_path: Path, kek: KeyEncryptionKey, other_kek: KeyEncryptionKey,
        rsa2048_keys: list[SealingKey]) -> None:
    async with Store.open(db_path, kek=kek, migrations_dir=before_0003(tmp_path / "old")
                          ) as store:
        await store.keys.store_key_material([KeyMaterial(rsa2048_keys[1], "cluster")])
    # Upgrading with another KEK: no check value yet, but the key rows name their KEK.
    with pytest.raises(StoreError) as refused:
        async with Store.open(db_path, kek=other_kek):
            pass
    assert re.fullmatch(
        re.escape(f"{db_path}: holds private keys encrypted under key-encryption key id "
                  f"{kek.id}, but {other_kek.source} has id {other_kek.id}: wrong KEK file?"),
        str(refused.value))
    async with Store.open(db_path, kek=kek) as store:
        assert len((await store.keys.load_private_keys()).keys) == 1
    assert [kek_id for kek_id, _ in verifier_rows(db_path)] == [kek.id]
    with pytest.raises(StoreError, match="is not this database's"):
        async with Store.open(db_path, kek=other_kek):
            pass


async def test_a_tampered_check_value_is_refused(db_path: Path, kek: KeyEncryptionKey) -> None:
    async with Store.open(db_path, kek=kek):
        pass
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE kek_verifier SET check_value = zeroblob(56)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="does not open its check value"):
        async with Store.open(db_path, kek=kek):
            pass


def test_a_check_value_opens_only_under_its_own_kek(kek: KeyEncryptionKey,
                                                    other_kek: KeyEncryptionKey) -> None:
    value = kek.check_value()
    assert kek.opens_check_value(value)
    assert value != kek.check_value()                    # a fresh nonce every time
    assert not other_kek.opens_check_value(value)
    assert not kek.opens_check_value(value[:-1] + bytes([value[-1] ^ 1]))
    assert not kek.opens_check_value(b"short")
