"""``db migrate``, ``db status`` and ``db kek-generate``: the inventory database by hand.

The daemon applies pending migrations itself at start; these commands exist so an
operator can migrate before starting a new version (and see what it will do), check
a database without touching it (``status`` opens it read-only and never creates it),
and create the key-encryption key with the right permissions from the first byte.
The database is named with ``--database PATH`` or found through the daemon's config
(``-c CONFIG``, ``[store] database``).
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from sealfleet.adapters.store import generate_kek_file, migrations
from sealfleet.adapters.store.connection import connect, translate
from sealfleet.app import preflight
from sealfleet.app.cli.main import DEFAULT_CONFIG_PATH
from sealfleet.errors import StoreError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = subparsers.add_parser("db", help="inventory database: migrations and the KEK")
    commands = group.add_subparsers(dest="db_command", metavar="COMMAND",
                                    parser_class=type(group))

    migrate = commands.add_parser(
        "migrate", help="apply pending schema migrations",
        description="Apply every pending migration, each in its own transaction, after "
                    "checking that the applied ones were not edited. Creates the database "
                    "(mode 0600) if it does not exist.")
    _add_location(migrate)
    migrate.set_defaults(handler=run_migrate)

    status = commands.add_parser(
        "status", help="list migrations: applied (with time) or pending",
        description="Show each migration and when it was applied; read-only. Exit 0 when "
                    "the schema is up to date, 1 when migrations are pending.")
    _add_location(status)
    status.set_defaults(handler=run_status)

    kek = commands.add_parser(
        "kek-generate", help="create a key-encryption key file (32 random bytes, mode 0600)",
        description="Write a new key-encryption key for the store's private keys. Refuses "
                    "to overwrite an existing file: losing the KEK loses every stored key.")
    kek.add_argument("path", metavar="PATH", help="file to create")
    kek.set_defaults(handler=run_kek_generate)


def _add_location(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database", metavar="PATH", type=Path,
                       help="SQLite file (overrides the config)")
    where.add_argument("-c", "--config", metavar="CONFIG", type=Path,
                       help="daemon config whose [store] database to use "
                            f"(default {DEFAULT_CONFIG_PATH})")


def _database(args: argparse.Namespace) -> tuple[Path, str | None]:
    """The database file, and how errors should name it (config file and key, if any)."""
    if args.database is not None:
        return Path(args.database), None
    from sealfleet.app.config import load_settings  # only when asked: pydantic is heavy

    settings = load_settings(args.config or DEFAULT_CONFIG_PATH)
    return Path(settings.store.database), preflight.where(settings, "store.database")


def run_migrate(args: argparse.Namespace) -> int:
    path, where = _database(args)
    # Something else than SQLite at the path, or a directory we cannot write, is the
    # caller's to fix (exit 2), not a failure of the migration (exit 1).
    preflight.check_database(path, where=where, writable=True)
    known = migrations.discover()
    conn = connect(path)
    try:
        applied = migrations.apply_pending(conn, known)
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc
    finally:
        conn.close()
    for name in applied:
        print(f"applied {name}")
    print(f"{path}: schema up to date ({len(known)} migrations"
          f"{', ' + str(len(applied)) + ' applied now' if applied else ''})")
    return 0


def run_status(args: argparse.Namespace) -> int:
    path, where = _database(args)
    if not path.is_file():
        raise StoreError(f"{path}: no such database (run `sealfleet db migrate` to create it)")
    preflight.check_database(path, where=where, writable=False)
    known = migrations.discover()
    conn = connect(path, read_only=True)
    try:
        migrations.verify(conn, known)
        statuses = migrations.status(conn, known)
    except sqlite3.Error as exc:
        raise translate(exc, path) from exc
    finally:
        conn.close()
    width = max(len(s.name) for s in statuses)
    for entry in statuses:
        when = entry.applied_at.isoformat() if entry.applied_at else "pending"
        print(f"{entry.name:<{width}}  {when}")
    pending = sum(1 for s in statuses if s.applied_at is None)
    print(f"{path}: {pending} pending" if pending else f"{path}: up to date")
    return 1 if pending else 0


def run_kek_generate(args: argparse.Namespace) -> int:
    path = generate_kek_file(args.path)
    print(f"wrote {path} (32 random bytes, mode 0600); back it up: without it the stored "
          "private keys cannot be decrypted")
    return 0

