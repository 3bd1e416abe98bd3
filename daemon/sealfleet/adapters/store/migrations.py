"""Schema migrations: ordered, named, checksummed, each applied atomically.

Migrations are the ``NNNN_name.sql`` files of one directory, applied in name order.
Each is applied together with its ``schema_migrations`` record (name, SHA-256,
applied_at) in ONE transaction, so a failing migration leaves no trace and stays
pending.  At every start the checksums of applied migrations are compared with the
files: an edited released migration, or a database migrated by a newer sealfleet,
is a :class:`StoreError` naming the migration, never a silent divergence.

Where the files live: inside an installed wheel they are package data at
``sealfleet/migrations`` (pyproject force-includes the top-level ``migrations/``
folder there); in an editable checkout they are the repository's ``migrations/``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sealfleet.errors import StoreError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_RECORDS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name        TEXT PRIMARY KEY,
    checksum    TEXT NOT NULL,
    applied_at  TEXT NOT NULL
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class Migration:
    name: str          # file name without ".sql", e.g. "0001_initial"
    sql: str
    checksum: str      # SHA-256 hex of the file's bytes


@dataclass(frozen=True)
class MigrationStatus:
    name: str
    applied_at: dt.datetime | None


def default_migrations_dir() -> Path:
    """``sealfleet/migrations`` when installed from a wheel, else the checkout's folder."""
    packaged = resources.files("sealfleet") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[4] / "migrations"
    if checkout.is_dir():
        return checkout
    raise StoreError(f"no migrations found (looked in {packaged} and {checkout})")


def discover(directory: Path | None = None) -> list[Migration]:
    """All migrations of *directory*, in order; badly named .sql files are an error."""
    folder = directory or default_migrations_dir()
    migrations: list[Migration] = []
    numbers: dict[str, str] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise StoreError(f"migration file {path} is not named NNNN_lowercase_name.sql")
        if match.group(1) in numbers:
            raise StoreError(f"migrations {numbers[match.group(1)]} and {path.name} share "
                             "the number " + match.group(1))
        numbers[match.group(1)] = path.name
        data = path.read_bytes()
        migrations.append(Migration(name=path.stem, sql=data.decode("utf-8"),
                                    checksum=hashlib.sha256(data).hexdigest()))
    if not migrations:
        raise StoreError(f"no migrations found in {folder}")
    return migrations


def _applied(conn: sqlite3.Connection) -> dict[str, tuple[str, str]]:
    """name -> (checksum, applied_at); empty when the records table does not exist yet."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                          "AND name = 'schema_migrations'").fetchone()
    if not exists:
        return {}
    rows = conn.execute("SELECT name, checksum, applied_at FROM schema_migrations")
    return {name: (checksum, applied_at) for name, checksum, applied_at in rows}


def verify(conn: sqlite3.Connection, migrations: list[Migration]) -> None:
    """Fail if an applied migration was edited or is unknown to this version."""
    known = {m.name: m for m in migrations}
    for name, (checksum, _) in sorted(_applied(conn).items()):
        migration = known.get(name)
        if migration is None:
            raise StoreError(f"database has migration {name} applied, which this sealfleet "
                             "does not know: was it migrated by a newer version?")
        if migration.checksum != checksum:
            raise StoreError(f"migration {name} was edited after it was applied "
                             f"(checksum {checksum[:12]}... in the database, "
                             f"{migration.checksum[:12]}... on disk); add a new migration "
                             "instead of editing a released one")


def pending(conn: sqlite3.Connection, migrations: list[Migration]) -> list[Migration]:
    """Migrations not applied yet, in order.  Read-only: creates nothing."""
    applied = _applied(conn)
    return [m for m in migrations if m.name not in applied]


def status(conn: sqlite3.Connection, migrations: list[Migration]) -> list[MigrationStatus]:
    applied = _applied(conn)
    return [MigrationStatus(m.name, dt.datetime.fromisoformat(applied[m.name][1])
                            if m.name in applied else None) for m in migrations]


def apply_pending(conn: sqlite3.Connection, migrations: list[Migration]) -> list[str]:
    """Verify, then apply every pending migration, each in its own transaction.

    *conn* must be in autocommit mode (``isolation_level=None``).  Returns the names
    applied.  On failure the failing migration is rolled back entirely (earlier ones
    stay applied) and a StoreError names it.  Another process migrating the same file
    at the same time is harmless: each migration is re-checked under the write lock.
    """
    verify(conn, migrations)
    applied: list[str] = []
    for migration in pending(conn, migrations):
        statements = split_statements(migration)
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_RECORDS_DDL)
            if conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?",
                            (migration.name,)).fetchone():
                conn.execute("ROLLBACK")  # applied meanwhile by another process
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (name, checksum, applied_at) "
                         "VALUES (?, ?, ?)",
                         (migration.name, migration.checksum,
                          dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"migration {migration.name} failed and was rolled back: "
                             f"{exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(migration.name)
    verify(conn, migrations)
    return applied


_TRANSACTION_CONTROL = re.compile(r"^(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b",
                                  re.IGNORECASE)


def split_statements(migration: Migration) -> list[str]:
    """The migration's SQL statements, one by one, so the runner owns the transaction.

    (``executescript`` would commit first; and a migration must not carry its own
    BEGIN/COMMIT, which would break the one-transaction guarantee.)
    """
    statements: list[str] = []
    buffer = ""
    for line in migration.sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if _code(buffer):
        raise StoreError(f"migration {migration.name}: incomplete last statement "
                         "(missing ';'?)")
    statements = [s for s in statements if _code(s)]
    for statement in statements:
        if _TRANSACTION_CONTROL.match(_code(statement)):
            raise StoreError(f"migration {migration.name}: must not contain transaction "
                             "control (BEGIN/COMMIT/...); the runner wraps each migration "
                             "in one transaction")
    return statements


def _code(sql: str) -> str:
    """*sql* without ``--`` comment lines and surrounding whitespace."""
    return "\n".join(line for line in sql.splitlines()
                     if line.strip() and not line.lstrip().startswith("--")).strip()
