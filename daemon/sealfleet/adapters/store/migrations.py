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
    stay applied) and a StoreError names it.
    """
    verify(conn, migrations)
    applied: list[str] = []
    for migration in pending(conn, migrations):
        now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
        # executescript() runs the whole file; BEGIN/COMMIT are part of the script so the
        # schema change and its record commit together.  Names and checksums are
        # validated ([0-9a-z_] and hex), so quoting them into the script is safe.
        script = (f"BEGIN IMMEDIATE;\n{_RECORDS_DDL};\n{migration.sql}\n;\n"
                  "INSERT INTO schema_migrations (name, checksum, applied_at) VALUES "
                  f"('{migration.name}', '{migration.checksum}', '{now}');\nCOMMIT;")
        try:
            conn.executescript(script)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"migration {migration.name} failed and was rolled back: "
                             f"{exc}") from exc
        applied.append(migration.name)
    return applied
