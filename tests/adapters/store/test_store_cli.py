"""`sealfleet db ...` through the real entry point (``python -m sealfleet``)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sealfleet.adapters.store import migrations

SHIPPED = [m.name for m in migrations.discover()]


def sealfleet(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEALFLEET_DEBUG", "CREDENTIALS_DIRECTORY", "STATE_DIRECTORY")}
    result = subprocess.run([sys.executable, "-m", "sealfleet", *map(str, args)],
                            capture_output=True, text=True, timeout=60, env=env, cwd=cwd,
                            check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_migrate_creates_a_private_database_then_status_reports_it(tmp_path: Path) -> None:
    db = tmp_path / "state" / "inventory.db"
    missing = sealfleet("db", "status", "--database", db)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"sealfleet: error: {db}: no such database "
                                      "(run `sealfleet db migrate` to create it)")
    assert not db.exists()

    first = sealfleet("db", "migrate", "--database", db)
    assert first.returncode == 0, first.stderr
    assert [line for line in first.stdout.splitlines() if line.startswith("applied")] == [
        f"applied {name}" for name in SHIPPED]
    assert db.stat().st_mode & 0o777 == 0o600

    again = sealfleet("db", "migrate", "--database", db)
    assert again.returncode == 0
    assert "applied" not in again.stdout.replace("applied now", "")
    assert again.stdout.strip().endswith(f"({len(SHIPPED)} migrations)")

    status = sealfleet("db", "status", "--database", db)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == SHIPPED
    assert all("pending" not in line for line in lines[:-1])
    assert lines[-1] == f"{db}: up to date"


def test_status_of_an_unmigrated_database_lists_pending_and_changes_nothing(
        tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    sqlite3.connect(db).close()  # an empty file: exists, no schema
    status = sealfleet("db", "status", "--database", db)
    assert status.returncode == 1
    assert [line.split() for line in status.stdout.splitlines()[:-1]] == [
        [name, "pending"] for name in SHIPPED]
    assert status.stdout.splitlines()[-1] == f"{db}: {len(SHIPPED)} pending"
    assert db.stat().st_size == 0


def test_edited_migration_is_reported_by_status_and_migrate(tmp_path: Path) -> None:
    db = tmp_path / "inventory.db"
    assert sealfleet("db", "migrate", "--database", db).returncode == 0
    conn = sqlite3.connect(db)
    conn.execute("UPDATE schema_migrations SET checksum = 'feed' WHERE name = ?", (SHIPPED[0],))
    conn.commit()
    conn.close()
    for command in ("status", "migrate"):
        result = sealfleet("db", command, "--database", db)
        assert result.returncode == 1
        assert f"migration {SHIPPED[0]} was edited after it was applied" in result.stderr


def test_database_found_through_the_daemon_config(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "sealfleet.toml"
    config.parent.mkdir()
    config.write_text('[store]\ndatabase = "../var/inventory.db"\nkek_file = "kek"\n')
    migrate = sealfleet("db", "migrate", "-c", config)
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / "var" / "inventory.db").is_file()
    status = sealfleet("db", "status", "--config", config)
    assert status.returncode == 0
    assert status.stdout.splitlines()[-1].endswith("var/inventory.db: up to date")
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\ndatabse = 'x'\n")
    result = sealfleet("db", "status", "-c", bad)
    assert result.returncode == 2
    assert result.stderr.startswith(f"sealfleet: error: {bad}")
    assert len(result.stderr.splitlines()) == 1


def test_database_and_config_are_exclusive(tmp_path: Path) -> None:
    result = sealfleet("db", "status", "--database", tmp_path / "x.db", "-c", tmp_path / "c")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


def test_kek_generate_writes_a_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    first = sealfleet("db", "kek-generate", path)
    assert first.returncode == 0, first.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    key = path.read_bytes()
    assert len(key) == 32
    assert key.hex() not in first.stdout
    second = sealfleet("db", "kek-generate", path)
    assert second.returncode == 1
    assert "refusing to overwrite" in second.stderr
    assert path.read_bytes() == key
    assert sealfleet("db", "kek-generate", tmp_path / "no" / "dir" / "kek").returncode == 1


def test_a_file_that_is_not_a_database_is_named_not_an_internal_error(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.txt"
    garbage.write_text("certainly not SQLite\n" * 50)
    for command in ("status", "migrate"):
        result = sealfleet("db", command, "--database", garbage)
        assert result.returncode == 2   # a wrong input file is a usage error
        assert result.stderr == f"sealfleet: error: {garbage} is not an SQLite database\n"
    assert garbage.read_text() == "certainly not SQLite\n" * 50
