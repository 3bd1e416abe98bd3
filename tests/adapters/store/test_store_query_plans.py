"""The API's reads are answered from the indexes, never by scanning the inventory table.

Each read runs on a real connection with a trace callback; every statement it issued
that touches ``sealed_secrets`` is then explained by SQLite.  A bare scan of the table
(or sorting a whole result to page through it) would make every API call cost the
size of the fleet's inventory: 100k+ rows.  Dropping or reordering an index, or
rewriting a query so it can no longer use one, fails here.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from store_builders import sealed

from sealfleet.adapters.store import Store, codec, inventory_reads, keys_sql
from sealfleet.adapters.store.connection import connect
from sealfleet.domain.staleness import SecretState

S = SecretState
CURSOR = codec.encode_cursor("c1", "ns", "b")
Read = Callable[[sqlite3.Connection], Any]

READS: dict[str, Read] = {
    "state counts": inventory_reads.state_counts,
    "key usage": keys_sql.key_usage,
    "secrets of a cluster": lambda conn: inventory_reads.sealed_secrets_of_cluster(conn, "c1"),
    "secrets using a key": lambda conn: inventory_reads.sealed_secrets_using_key(conn, "K1"),
    "secrets using a key in a cluster": lambda conn: inventory_reads.sealed_secrets_using_key(
        conn, "K1", cluster="c1"),
}
PAGES: dict[str, dict[str, Any]] = {
    "page": {},
    "page after a cursor": {"cursor": CURSOR},
    "page of a cluster": {"cluster": "c1"},
    "page of a namespace": {"cluster": "c1", "namespace": "ns", "cursor": CURSOR},
    "page of a state": {"state": S.STALE},
    "page of a state in a cluster": {"state": S.STALE, "cluster": "c1", "cursor": CURSOR},
}
for label, filters in PAGES.items():
    READS[label] = lambda conn, f=filters: inventory_reads.list_sealed_secrets(  # type: ignore[misc]
        conn, **{"cluster": None, "namespace": None, "state": None, "cursor": None,
                 "limit": 10, **f})

BARE_SCAN = re.compile(r"^SCAN sealed_secrets$")


@pytest.fixture
async def inventory(db_path: Path) -> Path:
    async with Store.open(db_path) as store:
        await store.inventory.upsert_sealed_secrets([
            sealed("c1", "ns", "a"), sealed("c1", "ns", "b", ["K1", "K2"], state=S.STALE),
            sealed("c1", "other", "c", ["K2"], state=S.STALE), sealed("c2", "ns", "a", [None],
                                                                      state=S.UNKNOWN)])
    return db_path


def plans(path: Path, read: Read) -> list[tuple[str, list[str]]]:
    """(statement, plan lines) for each statement *read* ran against sealed_secrets."""
    conn = connect(path, read_only=True)
    try:
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        assert read(conn) is not None
        conn.set_trace_callback(None)
        return [(sql, [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)])
                for sql in statements if "sealed_secrets" in sql]
    finally:
        conn.close()


@pytest.mark.parametrize("name", list(READS))
async def test_reads_use_an_index_and_never_sort_the_inventory(inventory: Path,
                                                               name: str) -> None:
    explained = plans(inventory, READS[name])
    assert explained, "the read issued no query on sealed_secrets"
    for sql, lines in explained:
        assert not any(BARE_SCAN.match(line) for line in lines), (sql, lines)
        if name.startswith("page"):
            # Keyset pages come in index order: LIMIT stops early, nothing is sorted...
            assert not any("TEMP B-TREE" in line for line in lines), (sql, lines)
        if "cursor" in PAGES.get(name, {}):
            # ... and a cursor is a seek, not a walk from the start of the cluster.
            assert any(line.startswith("SEARCH") and ">" in line for line in lines), (sql, lines)


async def test_the_plan_check_sees_a_bare_scan(inventory: Path) -> None:
    """The check above can fail: a query on an unindexed column is reported as a scan."""
    explained = plans(inventory, lambda conn: conn.execute(
        "SELECT count(*) FROM sealed_secrets WHERE uid = 'x'").fetchall())
    assert any(BARE_SCAN.match(line) for _, lines in explained for line in lines)


async def test_a_cursor_outside_the_filtered_cluster_pages_correctly(inventory: Path) -> None:
    async with Store.open(inventory) as store:
        pages = store.inventory
        before = codec.encode_cursor("c0", "zz", "zz")
        after = codec.encode_cursor("c1", "zz", "zz")
        page, _ = await pages.list_sealed_secrets(cluster="c1", cursor=before)
        assert [(r.namespace, r.name) for r in page] == [("ns", "a"), ("ns", "b"), ("other", "c")]
        assert await pages.list_sealed_secrets(cluster="c1", namespace="ns", cursor=after) == (
            [], None)
        page, _ = await pages.list_sealed_secrets(cluster="c1", namespace="other",
                                                  cursor=CURSOR)
        assert [r.name for r in page] == ["c"]
        page, _ = await pages.list_sealed_secrets(cluster="c2", cursor=CURSOR)
        assert [r.name for r in page] == ["a"]
