"""Store failures are ours and say what they are: busy (retry), not a database, health."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sealfleet.adapters.store import Store
from sealfleet.errors import StoreBusyError, StoreError, TransientError


def hold_write_lock(path: Path) -> sqlite3.Connection:
    """Another process's connection in the middle of a long exclusive transaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


async def test_a_lock_held_elsewhere_is_a_transient_busy_error_and_health_shows_it(
        db_path: Path) -> None:
    async with Store.open(db_path, busy_timeout=0) as store:
        await store.inventory.upsert_cluster("a")
        assert store.health.ok
        other = hold_write_lock(db_path)
        try:
            with pytest.raises(StoreBusyError) as busy:
                await store.inventory.record_cluster_status("a", reachable=True)
            assert isinstance(busy.value, StoreError)
            assert isinstance(busy.value, TransientError)   # the retry helper retries it
            assert str(busy.value).startswith(f"{db_path}: database is busy")
            first = store.health
            assert not first.ok
            assert (first.last_error, first.consecutive_failures) == (str(busy.value), 1)
            assert first.failing_since is not None
            with pytest.raises(StoreBusyError):
                await store.inventory.upsert_cluster("b")
            assert store.health.consecutive_failures == 2
            assert store.health.failing_since == first.failing_since   # since the first
            # Readers are not blocked by another process's write lock (WAL).
            assert [c.name for c in await store.inventory.list_clusters()] == ["a"]
        finally:
            other.execute("ROLLBACK")
            other.close()
        await store.inventory.upsert_cluster("b")
        assert store.health.ok
        assert (store.health.last_error, store.health.failing_since) == (None, None)


async def test_a_refusal_by_a_transaction_is_not_a_health_problem(store: Store) -> None:
    with pytest.raises(StoreError, match="no such key"):
        await store.keys.set_key_state("SHA256:nope", "retired", actor="test")
    await store.jobs.create_job("sync", {}, [], job_id="j")
    with pytest.raises(StoreError, match="job j already exists"):
        await store.jobs.create_job("sync", {}, [], job_id="j")
    assert store.health.ok


async def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    garbage = tmp_path / "inventory.db"
    garbage.write_bytes(b"this is not a database" * 100)
    for options in ({}, {"migrate": False}):
        with pytest.raises(StoreError) as refused:
            async with Store.open(garbage, **options):  # type: ignore[arg-type]
                pass
        assert str(refused.value) == f"{garbage} is not an SQLite database"
    assert garbage.read_bytes() == b"this is not a database" * 100
