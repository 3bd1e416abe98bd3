"""Checks the store makes of its keystore when it opens with a KEK, before anything runs.

1. The KEK is this database's (migration 0003).  A copy of the database opened with
   another KEK used to report ready and fail only when a stored key was first
   needed; now :func:`verify_kek` refuses it at open, naming the database and the KEK
   file.  The check value is written on the first open with a KEK, provided every
   stored key row names that same KEK id (a database from before 0003 is adopted by
   the KEK its keys are under, and refused by any other).
2. No stored key contradicts its own row (migration 0004).  Material whose private
   key or certificate belongs to another key than its row's (a key Secret with
   mismatched tls.crt and tls.key, stored as it came by older versions) is found by
   :func:`contradicting` and moved out of the keystore by
   ``keys_sql.quarantine_key_material``, once: after the move it is no longer there.

SQL cannot do (2) itself (the material is encrypted), hence a check at open rather
than a migration.  Decryption happens between the read and the write transactions,
never inside one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from sealfleet.adapters.store import codec, key_material
from sealfleet.adapters.store.kek import KeyEncryptionKey
from sealfleet.adapters.store.key_material import EncryptedKey, Refusal
from sealfleet.errors import StoreError

_TABLES = ("kek_verifier", "quarantined_key_material")


def schema_ready(conn: sqlite3.Connection) -> bool:
    """Whether migrations 0003 and 0004 are applied (not so in tests of older schemas)."""
    found = {name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)", _TABLES)}
    return found == set(_TABLES)


def verify_kek(conn: sqlite3.Connection, kek: KeyEncryptionKey, database: Path) -> bool:
    """Refuse a KEK that is not the database's; True when this call adopted it.

    A transaction body (run on the writer thread by ``Store.open``).
    """
    row = conn.execute("SELECT kek_id, check_value FROM kek_verifier WHERE id = 1").fetchone()
    if row is not None:
        kek_id, check_value = row
        if kek_id != kek.id:
            raise StoreError(f"{database}: key-encryption key {kek.source} (id {kek.id}) is "
                             f"not this database's (it was set up with KEK id {kek_id}): "
                             "wrong KEK file?")
        if not kek.opens_check_value(bytes(check_value)):
            raise StoreError(f"{database}: key-encryption key {kek.source} has this "
                             "database's KEK id but does not open its check value "
                             "(kek_verifier row tampered with?)")
        return False
    others = sorted(kek_id for (kek_id,) in conn.execute(
        "SELECT DISTINCT kek_id FROM sealing_keys WHERE kek_id IS NOT NULL AND kek_id != ?",
        (kek.id,)))
    if others:
        raise StoreError(f"{database}: holds private keys encrypted under key-encryption key "
                         f"id {', '.join(others)}, but {kek.source} has id {kek.id}: "
                         "wrong KEK file?")
    conn.execute("INSERT INTO kek_verifier (id, kek_id, check_value, created_at) "
                 "VALUES (1, ?, ?, ?)", (kek.id, kek.check_value(), codec.now()))
    return True


def contradicting(rows: Sequence[EncryptedKey],
                  kek: KeyEncryptionKey) -> list[tuple[EncryptedKey, Refusal]]:
    """The rows whose material decrypts but is not the row's key (plain CPU work)."""
    found = []
    for row in rows:
        result = key_material.open_key(row, kek)
        if isinstance(result, Refusal) and result.contradicts_row:
            found.append((row, result))
    return found
