"""Key material that contradicts its own row never stops the other keys, and is moved out.

The rows are written here exactly as older versions stored a key Secret whose tls.crt
and tls.key belonged to different keys: under the certificate's fingerprint with the
other key's private key, or under the private key's fingerprint with the other key's
certificate (the one that made every cluster fail after a restart).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from structlog.testing import capture_logs

from sealfleet.adapters.store import KeyEncryptionKey, Store, codec
from sealfleet.adapters.store.records import KeyMaterial
from sealfleet.domain.keys import SealingKey


def insert_key_row(conn: sqlite3.Connection, kek: KeyEncryptionKey, *, fingerprint: str,
                   private_from: SealingKey, certificate_from: SealingKey) -> bytes:
    """A sealing_keys row as an older sealfleet wrote it; returns its ciphertext."""
    der = private_from.private_key.private_bytes(serialization.Encoding.DER,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption())
    blob = kek.encrypt(der, fingerprint=fingerprint)
    now = codec.now()
    certificate = certificate_from.certificate
    conn.execute(
        "INSERT INTO sealing_keys (fingerprint, not_before, not_after, source, "
        "certificate_pem, private_key_ciphertext, kek_id, created_at, updated_at) "
        "VALUES (?, ?, ?, 'cluster', ?, ?, ?, ?, ?)",
        (fingerprint, codec.timestamp(certificate.not_before),
         codec.timestamp(certificate.not_after), certificate.pem.decode(), blob, kek.id, now,
         now))
    return blob


def no_key_material_in(text: str, *keys: SealingKey) -> bool:
    for key in keys:
        pem = key.private_key_pem().decode()
        if any(line in text for line in pem.splitlines()[1:-1]):
            return False
    return "PRIVATE KEY" not in text


async def test_a_contradicting_row_is_refused_and_the_others_still_load(
        store: Store, kek: KeyEncryptionKey, rsa2048_keys: list[SealingKey]) -> None:
    good, one, other = rsa2048_keys
    await store.keys.store_key_material([KeyMaterial(good, "generated")])
    # Written after the open-time check ran (as by a sealfleet that predates it).
    await store.write(insert_key_row, kek, fingerprint=one.fingerprint,
                      private_from=other, certificate_from=one)
    await store.write(insert_key_row, kek, fingerprint=other.fingerprint,
                      private_from=other, certificate_from=one)
    loaded = await store.keys.load_private_keys()
    assert [k.fingerprint for k in loaded.keys] == [good.fingerprint]
    reasons = {r.fingerprint: r.reason for r in loaded.rejected}
    assert reasons == {
        one.fingerprint: f"key material stored under {one.fingerprint} is not that key's: "
                         f"its private key is {other.fingerprint}",
        other.fingerprint: f"key material stored under {other.fingerprint} is not that "
                           f"key's: its certificate is for {one.fingerprint}",
    }
    assert all(no_key_material_in(reason, *rsa2048_keys) for reason in reasons.values())
    # The loaded key is the real one, not a mix.
    assert loaded.keys[0].private_key.private_numbers() == good.private_key.private_numbers()


async def test_open_moves_contradicting_material_out_of_the_keystore_once(
        db_path: Path, kek: KeyEncryptionKey, rsa2048_keys: list[SealingKey]) -> None:
    good, one, other = rsa2048_keys
    async with Store.open(db_path, kek=kek) as store:
        await store.keys.store_key_material([KeyMaterial(good, "cluster")])
        # Row of `one`: its own certificate, `other`'s private key.
        wrong_private = await store.write(insert_key_row, kek, fingerprint=one.fingerprint,
                                          private_from=other, certificate_from=one)
        # Row of `other`: its own private key, `one`'s certificate.
        wrong_certificate = await store.write(insert_key_row, kek,
                                              fingerprint=other.fingerprint,
                                              private_from=other, certificate_from=one)
    with capture_logs() as logs:
        async with Store.open(db_path, kek=kek) as store:
            keys = {k.fingerprint: k for k in await store.keys.list_keys()}
            loaded = await store.keys.load_private_keys()
            quarantined = await store.keys.quarantined_keys()
            audited = await store.audit.entries()
    moved = [e for e in logs if e["event"] == "store_key_material_quarantined"]
    assert sorted(e["fingerprint"] for e in moved) == sorted([one.fingerprint,
                                                             other.fingerprint])
    assert all(e["log_level"] == "warning" for e in moved)
    assert all(no_key_material_in(str(e), *rsa2048_keys) for e in moved)
    # The keystore now holds only the good key, and loads it with nothing refused.
    assert [k.fingerprint for k in loaded.keys] == [good.fingerprint]
    assert loaded.rejected == ()
    assert {f: k.has_private_key for f, k in keys.items()} == {
        good.fingerprint: True, one.fingerprint: False, other.fingerprint: False}
    # A certificate that is not its row's key goes too; one that is, stays.
    assert keys[one.fingerprint].certificate_pem == one.certificate.pem.decode()
    assert keys[other.fingerprint].certificate_pem is None
    assert {q.fingerprint for q in quarantined} == {one.fingerprint, other.fingerprint}
    assert [(e.event, e.details["fingerprint"]) for e in audited] == [
        ("key_material_quarantined", q.fingerprint) for q in quarantined]
    # The material is kept, still encrypted, for an operator to look at.
    conn = sqlite3.connect(db_path)
    kept = dict(conn.execute("SELECT fingerprint, private_key_ciphertext "
                             "FROM quarantined_key_material"))
    conn.close()
    assert kept == {one.fingerprint: wrong_private, other.fingerprint: wrong_certificate}
    # Once moved, it is not found again: no second log line, no second audit entry.
    with capture_logs() as logs:
        async with Store.open(db_path, kek=kek) as store:
            assert len(await store.audit.entries()) == 2
    assert not [e for e in logs if e["event"] == "store_key_material_quarantined"]


async def test_a_key_whose_certificate_is_another_keys_is_not_stored(
        store: Store, rsa2048_keys: list[SealingKey]) -> None:
    good, one, other = rsa2048_keys
    mismatched = SealingKey(other.private_key, one.certificate)
    with capture_logs() as logs:
        rejected = await store.keys.store_key_material([KeyMaterial(mismatched, "cluster"),
                                                        KeyMaterial(good, "cluster")])
    assert [r.fingerprint for r in rejected] == [one.fingerprint]
    assert other.fingerprint in rejected[0].reason
    assert [e["event"] for e in logs] == ["store_key_material_refused"]
    assert [k.fingerprint for k in await store.keys.list_keys()] == [good.fingerprint]
    assert [k.fingerprint for k in (await store.keys.load_private_keys()).keys] == [
        good.fingerprint]


def insert_inconsistent_row(conn: sqlite3.Connection, kek: KeyEncryptionKey, *,
                            key: SealingKey) -> None:
    """*key*'s row with private numbers that do not fit together (one CRT exponent off):
    OpenSSL's validation is skipped at load (it costs 40 CPU-ms a key), the cheap checks
    must still refuse it."""
    numbers = key.private_key.private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=numbers.p, q=numbers.q, d=numbers.d, dmp1=numbers.dmp1 + 2, dmq1=numbers.dmq1,
        iqmp=numbers.iqmp, public_numbers=numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    der = broken.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    now = codec.now()
    certificate = key.certificate
    conn.execute(
        "INSERT INTO sealing_keys (fingerprint, not_before, not_after, source, "
        "certificate_pem, private_key_ciphertext, kek_id, created_at, updated_at) "
        "VALUES (?, ?, ?, 'cluster', ?, ?, ?, ?, ?)",
        (key.fingerprint, codec.timestamp(certificate.not_before),
         codec.timestamp(certificate.not_after), certificate.pem.decode(),
         kek.encrypt(der, fingerprint=key.fingerprint), kek.id, now, now))


async def test_a_row_whose_private_numbers_do_not_fit_is_refused(
        store: Store, kek: KeyEncryptionKey, rsa2048_keys: list[SealingKey]) -> None:
    good, broken, _ = rsa2048_keys
    await store.keys.store_key_material([KeyMaterial(good, "generated")])
    await store.write(insert_inconsistent_row, kek, key=broken)
    loaded = await store.keys.load_private_keys()
    assert [k.fingerprint for k in loaded.keys] == [good.fingerprint]
    assert [(r.fingerprint, r.reason) for r in loaded.rejected] == [
        (broken.fingerprint, "decrypted material is not a consistent RSA private key")]
