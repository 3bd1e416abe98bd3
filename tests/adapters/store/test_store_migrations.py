"""The migration runner: ordered, atomic per migration, checksummed, read-only pending()."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from store_builders import sealed

from sealfleet.adapters.store import Store, codec, inventory_writes, migrations
from sealfleet.adapters.store.connection import connect
from sealfleet.errors import StoreError

SHIPPED = migrations.discover()


def schema(path: Path) -> list[tuple[str, str, str]]:
    """Every schema object except the runner's own bookkeeping, normalised."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master "
                            "WHERE name NOT LIKE 'sqlite_%' AND name != 'schema_migrations' "
                            "ORDER BY type, name").fetchall()
    finally:
        conn.close()
    return [(kind, name, " ".join((sql or "").split())) for kind, name, sql in rows]


def copy_first(count: int, target: Path) -> Path:
    target.mkdir()
    for migration in SHIPPED[:count]:
        shutil.copy(migrations.default_migrations_dir() / f"{migration.name}.sql", target)
    return target


def applied_names(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
    finally:
        conn.close()


def test_shipped_migrations_are_numbered_in_order_and_start_with_the_initial_schema() -> None:
    names = [m.name for m in SHIPPED]
    assert names[0] == "0001_initial"
    assert [int(n[:4]) for n in names] == list(range(1, len(names) + 1))


async def test_from_empty_applies_everything_and_records_checksums(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    async with Store.open(path) as store:
        assert store.applied_at_open == [m.name for m in SHIPPED]
        status = await store.migration_status()
    assert [name for name, _ in status] == [m.name for m in SHIPPED]
    assert all(applied_at is not None for _, applied_at in status)
    conn = sqlite3.connect(path)
    recorded = dict(conn.execute("SELECT name, checksum FROM schema_migrations"))
    conn.close()
    assert recorded == {m.name: m.checksum for m in SHIPPED}
    assert {"clusters", "sealing_keys", "sealed_secrets", "audit_log", "jobs", "job_items",
            "attributions", "watch_resource_versions", "cluster_keys"} <= {
        name for kind, name, _ in schema(path) if kind == "table"}


async def test_reopening_applies_nothing(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    async with Store.open(path):
        pass
    async with Store.open(path) as store:
        assert store.applied_at_open == []


@pytest.mark.parametrize("already", range(len(SHIPPED) + 1))
async def test_from_every_earlier_schema_reaches_the_same_schema(tmp_path: Path,
                                                                 already: int) -> None:
    """Apply the first *already* migrations, then open with all of them."""
    fresh = tmp_path / "fresh.db"
    async with Store.open(fresh):
        pass
    upgraded = tmp_path / "upgraded.db"
    if already:
        async with Store.open(upgraded, migrations_dir=copy_first(already, tmp_path / "old")):
            pass
        assert applied_names(upgraded) == [m.name for m in SHIPPED[:already]]
    async with Store.open(upgraded) as store:
        assert store.applied_at_open == [m.name for m in SHIPPED[already:]]
    assert schema(upgraded) == schema(fresh)
    assert applied_names(upgraded) == [m.name for m in SHIPPED]


async def test_0002_turns_stored_fingerprints_into_references_losing_nothing(
        tmp_path: Path) -> None:
    """Rows written under 0001 (fingerprints in ``keys``) read back the same after 0002."""
    records = [sealed("c1", "ns", "single", ["K1", "K1"]),
               sealed("c1", "ns", "multi", ["K2", None, "K1"]),
               sealed("c1", "ns", "none", [None]),
               sealed("c2", "ns", "odd", ["K3", "K2"], item_names=["[x", "tab\there"]),
               sealed("c2", "ns", "empty", [])]
    path = tmp_path / "inventory.db"
    async with Store.open(path, migrations_dir=copy_first(1, tmp_path / "old")):
        pass
    conn = connect(path)
    try:
        as_0001 = {fingerprint: fingerprint for fingerprint in codec.fingerprints_of(records)}
        # The columns 0001 has (later migrations added the managed_by ones).
        kept = [i for i, c in enumerate(codec.SEALED_SECRET_COLUMNS)
                if not c.startswith("managed_by")]
        columns = [codec.SEALED_SECRET_COLUMNS[i] for i in kept]
        rows = [tuple(row[i] for i in kept)
                for row in codec.sealed_secret_rows(records, as_0001)]
        conn.execute("BEGIN IMMEDIATE")
        inventory_writes.ensure_clusters(conn, ["c1", "c2"])
        conn.executemany(
            f"INSERT INTO sealed_secrets ({', '.join(columns)}, first_seen, "  # noqa: S608
            f"state_changed_at) VALUES ({', '.join('?' * len(columns))}, ?{len(columns)}, "
            f"?{len(columns)})", rows)
        conn.execute("COMMIT")
        assert conn.execute("SELECT keys FROM sealed_secrets WHERE name = 'multi'"
                            ).fetchone() == ("K2 K1",)
    finally:
        conn.close()
    async with Store.open(path) as store:
        assert store.applied_at_open[0] == "0002_key_refs"
        stored = [*await store.inventory.sealed_secrets_of_cluster("c1"),
                  *await store.inventory.sealed_secrets_of_cluster("c2")]
        # 0007 clears the resource versions, so that every object is listed (and its
        # GitOps labels recorded) once more; nothing else changes.
        assert sorted(stored, key=lambda r: (r.cluster, r.name)) == sorted(
            (dataclasses.replace(r, resource_version="") for r in records),
            key=lambda r: (r.cluster, r.name))
        usage = await store.keys.key_usage()
        assert {k: (v.sealed_secrets, v.items) for k, v in usage.items()} == {
            "K1": (2, 3), "K2": (2, 2), "K3": (1, 1)}
        assert await store.inventory.sealed_secrets_using_key("K2") == [("c1", "ns", "multi"),
                                                                        ("c2", "ns", "odd")]
        await store.inventory.upsert_sealed_secrets([sealed("c3", "ns", "new", ["K2", "K4"])])
        assert await store.inventory.sealed_secrets_using_key("K4") == [("c3", "ns", "new")]
    conn = sqlite3.connect(path)
    try:
        refs = dict(conn.execute("SELECT fingerprint, id FROM key_refs"))
        multi = conn.execute("SELECT keys FROM sealed_secrets WHERE name = 'multi'").fetchone()
    finally:
        conn.close()
    assert sorted(refs) == ["K1", "K2", "K3", "K4"]
    assert multi == (f"{refs['K2']} {refs['K1']}",)  # order kept: item lines index into it


async def test_failing_migration_rolls_back_entirely_and_stays_pending(tmp_path: Path) -> None:
    folder = copy_first(len(SHIPPED), tmp_path / "migrations")
    (folder / "9999_broken.sql").write_text(
        "CREATE TABLE half_done (x INTEGER);\n"
        "INSERT INTO half_done VALUES (1);\n"
        "ALTER TABLE clusters ADD COLUMN extra TEXT;\n"
        "SELECT * FROM no_such_table;\n")
    path = tmp_path / "inventory.db"
    with pytest.raises(StoreError, match=r"migration 9999_broken failed and was rolled back"):
        async with Store.open(path, migrations_dir=folder):
            pass
    conn = connect(path)
    try:
        assert [m.name for m in migrations.pending(conn, migrations.discover(folder))] == [
            "9999_broken"]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in conn.execute("PRAGMA table_info(clusters)")}
    finally:
        conn.close()
    assert "half_done" not in tables
    assert "extra" not in columns
    # The earlier migrations stay applied.
    assert applied_names(path) == [m.name for m in SHIPPED]


async def test_edited_applied_migration_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = copy_first(len(SHIPPED), tmp_path / "migrations")
    path = tmp_path / "inventory.db"
    async with Store.open(path, migrations_dir=folder):
        pass
    edited = folder / "0001_initial.sql"
    edited.write_text(edited.read_text() + "\n-- a harmless-looking comment\n")
    with pytest.raises(StoreError, match=r"migration 0001_initial was edited after it was applied"):
        async with Store.open(path, migrations_dir=folder):
            pass


async def test_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    folder = copy_first(len(SHIPPED), tmp_path / "migrations")
    (folder / "9998_future.sql").write_text("CREATE TABLE future (x INTEGER);\n")
    path = tmp_path / "inventory.db"
    async with Store.open(path, migrations_dir=folder):
        pass
    with pytest.raises(StoreError, match=r"9998_future .*newer version"):
        async with Store.open(path):
            pass


def test_pending_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "inventory.db"
    conn = connect(path)
    try:
        assert [m.name for m in migrations.pending(conn, SHIPPED)] == [m.name for m in SHIPPED]
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    finally:
        conn.close()


async def test_open_without_migrating_refuses_an_outdated_schema(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="sealfleet db migrate"):
        async with Store.open(tmp_path / "inventory.db", migrate=False):
            pass


@pytest.mark.parametrize("bad_name", ["1_short.sql", "0002-dash.sql", "0002_Upper.sql"])
def test_badly_named_migration_files_are_refused(tmp_path: Path, bad_name: str) -> None:
    folder = copy_first(1, tmp_path / "migrations")
    (folder / bad_name).write_text("SELECT 1;\n")
    with pytest.raises(StoreError, match=r"NNNN_lowercase_name\.sql"):
        migrations.discover(folder)


def test_two_migrations_with_one_number_are_refused(tmp_path: Path) -> None:
    folder = copy_first(1, tmp_path / "migrations")
    (folder / "0001_again.sql").write_text("SELECT 1;\n")
    with pytest.raises(StoreError, match="share the number 0001"):
        migrations.discover(folder)


@pytest.mark.parametrize("statement", ["BEGIN;", "COMMIT;", "end transaction;",
                                       "SAVEPOINT s;"])
def test_migrations_may_not_control_transactions(tmp_path: Path, statement: str) -> None:
    folder = copy_first(len(SHIPPED), tmp_path / "migrations")
    (folder / "9999_sneaky.sql").write_text(f"CREATE TABLE a (x);\n{statement}\n")
    conn = connect(tmp_path / "inventory.db")
    try:
        with pytest.raises(StoreError, match="9999_sneaky: must not contain transaction"):
            migrations.apply_pending(conn, migrations.discover(folder))
        assert "a" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()


def test_incomplete_last_statement_is_refused(tmp_path: Path) -> None:
    folder = copy_first(len(SHIPPED), tmp_path / "migrations")
    (folder / "9999_cut.sql").write_text("CREATE TABLE a (x);\nCREATE TABLE b (y)\n-- end\n")
    conn = connect(tmp_path / "inventory.db")
    try:
        with pytest.raises(StoreError, match="9999_cut: incomplete last statement"):
            migrations.apply_pending(conn, migrations.discover(folder))
    finally:
        conn.close()


def test_two_processes_migrating_at_once_both_succeed(tmp_path: Path) -> None:
    """Each migration is re-checked under the write lock, so the loser skips it."""
    path = tmp_path / "inventory.db"
    connect(path).close()
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def migrate() -> None:
        conn = connect(path)
        try:
            barrier.wait()
            results.append(migrations.apply_pending(conn, SHIPPED))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=migrate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(name for names in results for name in names) == sorted(
        m.name for m in SHIPPED)
    assert applied_names(path) == [m.name for m in SHIPPED]
