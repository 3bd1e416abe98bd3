"""Clusters, SealedSecrets, attribution cache, watch positions and the audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from store_builders import T0, sealed

from sealfleet.adapters.store import Store, inventory_writes
from sealfleet.adapters.store.records import (
    AuditEntry,
    ClusterRegistration,
    ClusterStatus,
    ItemFact,
    KeyHolding,
    KeyHoldings,
    KeyUsage,
    MalformedKeySecret,
)
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import InputError, StoreError

S = SecretState


async def test_clusters_status_and_removal(store: Store) -> None:
    inventory = store.inventory
    await inventory.upsert_cluster("b", server="https://b:6443")
    await inventory.upsert_cluster("a", server="https://a:6443", controller_namespace="sealed",
                                   controller_name="ctl")
    await inventory.record_cluster_status("a", reachable=False, last_error="connection refused",
                                          last_scan_at=T0, scan_duration_ms=1234,
                                          sealing_key="K2", sealing_key_source="newest-active")
    await inventory.mark_cluster_removed("b")
    clusters = await inventory.list_clusters()
    assert [c.name for c in clusters] == ["a", "b"]
    a, b = clusters
    assert (a.server, a.controller_namespace, a.controller_name) == (
        "https://a:6443", "sealed", "ctl")
    assert (a.reachable, a.last_error, a.last_scan_at, a.scan_duration_ms) == (
        False, "connection refused", T0, 1234)
    assert (a.sealing_key, a.sealing_key_source, a.removed) == ("K2", "newest-active", False)
    assert b.removed is True
    assert b.removed_at is not None
    assert b.reachable is None
    # Recovery clears the error but keeps what it does not report; re-adding un-removes.
    await inventory.record_cluster_status("a", reachable=True)
    await inventory.upsert_cluster("b", server="https://b:6443")
    a, b = await inventory.list_clusters()
    assert (a.reachable, a.last_error, a.sealing_key) == (True, None, "K2")
    assert (b.removed, b.removed_at) == (False, None)


async def test_upsert_round_trips_records(store: Store) -> None:
    inventory = store.inventory
    record = sealed("c1", "ns", "db", ["K1", None, "K2"], state=S.UNKNOWN, synced=None)
    await inventory.upsert_sealed_secrets([record])
    assert await inventory.sealed_secrets_of_cluster("c1") == [record]
    # Unusual item names (tabs, a leading bracket) survive too.
    odd = sealed("c1", "ns", "odd", ["K1", "K1"], item_names=["[x", "tab\there\n"])
    await inventory.upsert_sealed_secrets([odd])
    assert (await inventory.sealed_secrets_of_cluster("c1"))[1] == odd


async def test_upsert_updates_in_place_and_tracks_first_seen(store: Store, db_path: Path) -> None:
    inventory = store.inventory
    later = T0 + dt.timedelta(hours=1)
    await inventory.upsert_sealed_secrets([sealed("c1", "ns", "a"), sealed("c1", "ns", "b")])
    await inventory.upsert_sealed_secrets([
        sealed("c1", "ns", "a", ["K2"], state=S.STALE, observed_at=later, rv="2"),
        sealed("c1", "ns", "b", observed_at=later, uid="recreated"),
    ])
    records = await inventory.sealed_secrets_of_cluster("c1")
    assert [(r.name, r.resource_version, r.state, r.items[0].fingerprint) for r in records] == [
        ("a", "2", S.STALE, "K2"), ("b", "1", S.CURRENT, "K1")]
    conn = sqlite3.connect(db_path)
    seen = {name: (first, last) for name, first, last in conn.execute(
        "SELECT name, first_seen, last_seen FROM sealed_secrets")}
    conn.close()
    # Same uid: first seen at T0.  A new uid under the old name is a new object.
    assert dt.datetime.fromisoformat(seen["a"][0]) == T0
    assert dt.datetime.fromisoformat(seen["b"][0]) == later
    assert dt.datetime.fromisoformat(seen["a"][1]) == later


async def test_delete_and_delete_not_seen_since(store: Store) -> None:
    inventory = store.inventory
    later = T0 + dt.timedelta(minutes=5)
    await inventory.upsert_sealed_secrets([sealed("c1", "ns", n) for n in "abcd"]
                                          + [sealed("c2", "ns", "a")])
    await inventory.delete_sealed_secrets("c1", [("ns", "a"), ("ns", "missing")])
    # A relist at `later` saw only c and d.
    await inventory.upsert_sealed_secrets([sealed("c1", "ns", n, observed_at=later) for n in "cd"])
    assert await inventory.delete_sealed_secrets_not_seen_since("c1", later) == 1
    assert [r.name for r in await inventory.sealed_secrets_of_cluster("c1")] == ["c", "d"]
    assert [r.name for r in await inventory.sealed_secrets_of_cluster("c2")] == ["a"]


async def test_state_counts_and_update_states(store: Store) -> None:
    inventory = store.inventory
    await inventory.upsert_sealed_secrets([
        sealed("c1", "ns", "a"), sealed("c1", "ns", "b", ["K0"], state=S.STALE),
        sealed("c1", "ns", "c", [None], state=S.UNKNOWN), sealed("c2", "x", "a"),
    ])
    assert await inventory.state_counts() == {
        "c1": {S.CURRENT: 1, S.STALE: 1, S.UNKNOWN: 1}, "c2": {S.CURRENT: 1}}
    await inventory.update_states("c1", [("ns", "a", S.COMPROMISED), ("ns", "b", S.STALE)])
    assert (await inventory.state_counts())["c1"] == {S.COMPROMISED: 1, S.STALE: 1, S.UNKNOWN: 1}


async def test_keyset_pagination_walks_everything_once_in_order(store: Store) -> None:
    inventory = store.inventory
    records = [sealed(c, ns, f"s{i}", state=S.STALE if i % 3 else S.CURRENT)
               for c in ("c2", "c1") for ns in ("b", "a") for i in range(7)]
    await inventory.upsert_sealed_secrets(records)
    expected = sorted((r.cluster, r.namespace, r.name) for r in records)

    async def walk(**filters: object) -> list[tuple[str, str, str]]:
        seen: list[tuple[str, str, str]] = []
        cursor = None
        while True:
            page, cursor = await inventory.list_sealed_secrets(limit=4, cursor=cursor,
                                                               **filters)  # type: ignore[arg-type]
            assert len(page) <= 4
            seen += [(r.cluster, r.namespace, r.name) for r in page]
            if cursor is None:
                return seen

    assert await walk() == expected
    assert await walk(cluster="c1") == [e for e in expected if e[0] == "c1"]
    assert await walk(cluster="c2", namespace="a") == [e for e in expected if e[:2] == ("c2", "a")]
    stale = {(r.cluster, r.namespace, r.name) for r in records if r.state is S.STALE}
    assert await walk(state="stale") == sorted(stale)
    assert await walk(state=S.STALE, cluster="c1") == sorted(e for e in stale if e[0] == "c1")
    page, cursor = await inventory.list_sealed_secrets(limit=len(records))
    assert len(page) == len(records)
    assert cursor is None


@pytest.mark.parametrize("bad", [{"cursor": "not-a-cursor"}, {"cursor": "WzFd"},
                                 {"state": "bogus"}, {"limit": 0}])
async def test_bad_listing_parameters_are_input_errors(store: Store,
                                                       bad: dict[str, object]) -> None:
    with pytest.raises(InputError):
        await store.inventory.list_sealed_secrets(**bad)  # type: ignore[arg-type]


async def test_key_usage_counts_items_secrets_and_holding_clusters(store: Store) -> None:
    inventory = store.inventory
    await inventory.replace_cluster_keys("c1", [
        KeyHolding("K1", "sealed-secrets-keyabc", "active", "10", T0, T0),
        KeyHolding("K2", "sealed-secrets-keydef", "compromised", "11", None, T0)])
    await inventory.replace_cluster_keys("c2", [KeyHolding("K1", "legacy", None, "3", None, T0)])
    await inventory.upsert_sealed_secrets([
        sealed("c1", "ns", "one", ["K1", "K1", "K1"]),
        sealed("c1", "ns", "mixed", ["K1", "K2", None], state=S.UNKNOWN),
        sealed("c2", "ns", "two", ["K2", "K2"], state=S.STALE),
        sealed("c2", "ns", "none", [None], state=S.UNKNOWN),
    ])
    usage = await store.keys.key_usage()
    assert usage == {
        "K1": KeyUsage(clusters=("c1", "c2"), items=4, sealed_secrets=2),
        "K2": KeyUsage(clusters=("c1",), items=3, sealed_secrets=2),
    }
    assert await inventory.sealed_secrets_using_key("K2") == [("c1", "ns", "mixed"),
                                                              ("c2", "ns", "two")]
    assert await inventory.sealed_secrets_using_key("K2", cluster="c2") == [("c2", "ns", "two")]
    # Items change: usage follows.
    await inventory.upsert_sealed_secrets([sealed("c1", "ns", "mixed", ["K1", "K1", "K1"], rv="2")])
    await inventory.delete_sealed_secrets("c2", [("ns", "two")])
    usage = await store.keys.key_usage()
    assert (usage["K1"].items, usage["K2"].items) == (6, 0)
    assert await inventory.sealed_secrets_using_key("K2") == []
    holdings = await inventory.cluster_key_holdings("c1")
    assert [(h.fingerprint, h.secret_name, h.label_value) for h in holdings] == [
        ("K1", "sealed-secrets-keyabc", "active"), ("K2", "sealed-secrets-keydef", "compromised")]
    await inventory.replace_cluster_keys("c1", [])
    assert await inventory.cluster_key_holdings("c1") == []


async def test_attribution_cache_retries_unknown_under_a_new_epoch(store: Store) -> None:
    inventory = store.inventory
    await inventory.put_attributions([("h1", "K1"), ("h2", None)], known_keys_epoch=1)
    assert await inventory.get_attributions(["h1", "h2", "h3"]) == {"h1": "K1", "h2": None}
    assert await inventory.get_attributions(["h1", "h2"], known_keys_epoch=1) == {
        "h1": "K1", "h2": None}
    # New keys arrived: the cached "unknown" is no longer trusted, a known key still is.
    assert await inventory.get_attributions(["h1", "h2"], known_keys_epoch=2) == {"h1": "K1"}
    await inventory.put_attributions([("h2", "K9")], known_keys_epoch=2)
    many = [f"x{i}" for i in range(2500)]  # more than one IN (...) chunk
    await inventory.put_attributions([(h, "K1") for h in many], known_keys_epoch=2)
    assert await inventory.get_attributions(["h2", *many], known_keys_epoch=2) == {
        "h2": "K9", **dict.fromkeys(many, "K1")}


async def test_watch_resource_versions(store: Store) -> None:
    inventory = store.inventory
    assert await inventory.get_watch_resource_version("c1", "sealedsecrets.bitnami.com") is None
    await inventory.set_watch_resource_version("c1", "sealedsecrets.bitnami.com", "100")
    await inventory.set_watch_resource_version("c1", "sealedsecrets.bitnami.com", "250")
    await inventory.set_watch_resource_version("c1", "secrets", "7")
    assert await inventory.get_watch_resource_version("c1", "sealedsecrets.bitnami.com") == "250"
    await inventory.set_watch_resource_version("c1", "sealedsecrets.bitnami.com", None)
    assert await inventory.get_watch_resource_version("c1", "sealedsecrets.bitnami.com") is None
    assert await inventory.get_watch_resource_version("c1", "secrets") == "7"


async def test_audit_log_is_append_only(store: Store, db_path: Path) -> None:
    first = await store.audit.record("reseal_started", "admin", {"cluster": "c1", "count": 3})
    second = await store.audit.record("reseal_done", "daemon", {})
    entries = await store.audit.entries()
    assert all(isinstance(e, AuditEntry) for e in entries)
    assert [(e.id, e.event, e.actor, e.details) for e in entries] == [
        (first, "reseal_started", "admin", {"cluster": "c1", "count": 3}),
        (second, "reseal_done", "daemon", {})]
    assert [e.id for e in await store.audit.entries(after_id=first)] == [second]
    conn = sqlite3.connect(db_path)
    try:
        for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                conn.execute(statement)
    finally:
        conn.close()
    assert len(await store.audit.entries()) == 2
    with pytest.raises(StoreError, match="JSON"):
        await store.audit.record("bad", "x", {"value": object()})  # type: ignore[dict-item]


async def test_a_failing_write_leaves_nothing_behind(store: Store) -> None:
    inventory = store.inventory
    def half_then_fail(conn: sqlite3.Connection) -> None:
        inventory_writes.upsert_sealed_secrets(conn, [sealed("c1", "ns", "good")])
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(StoreError, match="no such table"):
        await store.write(half_then_fail)
    assert await inventory.sealed_secrets_of_cluster("c1") == []
    # The writer connection is usable again (not stuck inside the failed transaction).
    await inventory.upsert_sealed_secrets([sealed("c1", "ns", "after")])
    assert [r.name for r in await inventory.sealed_secrets_of_cluster("c1")] == ["after"]
    # Bad input is refused before any transaction starts.
    with pytest.raises(StoreError, match="naive datetime"):
        await inventory.upsert_sealed_secrets([sealed("c1", "ns", "naive",
                                                      observed_at=dt.datetime(2026, 1, 1))])


async def test_a_cancelled_caller_never_leaves_half_a_batch(store: Store) -> None:
    inventory = store.inventory
    batch = [sealed("c1", "ns", f"s{i:05d}") for i in range(5000)]
    task = asyncio.create_task(inventory.upsert_sealed_secrets(batch))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The transaction already submitted runs to its end on the writer thread: all or none.
    await store.audit.record("barrier", "test", {})  # queued behind it on the single writer
    assert len(await inventory.sealed_secrets_of_cluster("c1")) in (0, len(batch))


async def test_reads_answer_from_their_own_connections_while_a_write_is_open(
        store: Store) -> None:
    """One writer holds its transaction open; readers still answer, from the last commit."""
    inventory = store.inventory
    await inventory.upsert_sealed_secrets([sealed("c1", "ns", "before")])
    inside, release = threading.Event(), threading.Event()

    def long_write(conn: sqlite3.Connection) -> None:
        inventory_writes.upsert_sealed_secrets(conn, [sealed("c1", "ns", "during")])
        inside.set()
        if not release.wait(10):
            raise RuntimeError("test never released the write")

    writing = asyncio.create_task(store.write(long_write))
    try:
        assert await asyncio.to_thread(inside.wait, 10)
        during = await asyncio.wait_for(inventory.sealed_secrets_of_cluster("c1"), 5)
        assert [r.name for r in during] == ["before"]
        assert await store.read(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0]
                                ) == "wal"
    finally:
        release.set()
        await writing
    assert [r.name for r in await inventory.sealed_secrets_of_cluster("c1")] == ["before", "during"]
    with pytest.raises(StoreError, match="readonly"):
        await store.read(lambda conn: conn.execute("DELETE FROM sealed_secrets"))


async def test_concurrent_writers_are_serialised_on_the_one_writer(store: Store) -> None:
    inventory = store.inventory
    await asyncio.gather(*(inventory.upsert_sealed_secrets(
        [sealed(f"c{w}", "ns", f"s{i}") for i in range(50)]) for w in range(20)))
    counts = await inventory.state_counts()
    assert {cluster: sum(states.values()) for cluster, states in counts.items()} == {
        f"c{w}": 50 for w in range(20)}


async def test_closed_store_raises_store_error(db_path: Path) -> None:
    async with Store.open(db_path) as store:
        pass
    with pytest.raises(StoreError, match="closed"):
        await store.inventory.list_clusters()


async def test_reads_see_committed_writes_from_another_store_instance(db_path: Path) -> None:
    async with Store.open(db_path) as writer, Store.open(db_path) as other:
        await writer.inventory.upsert_sealed_secrets([sealed("c1", "ns", "a")])
        assert [r.name for r in await other.inventory.sealed_secrets_of_cluster("c1")] == ["a"]


def test_records_item_count(store: Store) -> None:
    record = sealed("c", "n", "x", ["K1", None])
    assert record.item_count == 2
    assert record.items[1] == ItemFact("item1", record.items[1].item_hash, None)


async def test_unusable_database_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot create database"):
        async with Store.open(blocker / "inventory.db"):
            pass
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=str(garbage)):
        async with Store.open(garbage):
            pass


async def test_prune_attributions_keeps_live_and_recent_entries(store: Store) -> None:
    inventory = store.inventory
    live = sealed("c1", "ns", "a", ["K1", None])
    await inventory.upsert_sealed_secrets([live])
    live_hashes = [item.item_hash for item in live.items]
    await inventory.put_attributions([(h, "K1") for h in [*live_hashes, "gone"]],
                                     known_keys_epoch=1)
    now = dt.datetime.now(dt.UTC)
    # Too recent to prune: it may belong to a SealedSecret about to be written.
    assert await inventory.prune_attributions(older_than=now - dt.timedelta(hours=1)) == 0
    assert await inventory.prune_attributions(older_than=now + dt.timedelta(seconds=1)) == 1
    assert set(await inventory.get_attributions([*live_hashes, "gone"])) == set(live_hashes)


async def test_writes_queued_behind_a_busy_writer_share_a_commit_and_a_refusal_stays_alone(
        store: Store) -> None:
    """Group commit: writes queued while the writer is busy run in one transaction, each in
    its savepoint.  None is answered, nor visible to readers, before that commit; one that
    raises is rolled back alone and its caller gets the error."""
    inventory = store.inventory
    busy, free = threading.Event(), threading.Event()
    last_in, last_free = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection) -> None:
        busy.set()
        free.wait(10)

    def first(conn: sqlite3.Connection) -> None:
        inventory_writes.upsert_sealed_secrets(conn, [sealed("c1", "ns", "first")])

    def refused(conn: sqlite3.Connection) -> None:
        inventory_writes.upsert_sealed_secrets(conn, [sealed("c1", "ns", "refused")])
        raise InputError("refused by the write itself")

    def last(conn: sqlite3.Connection) -> None:
        last_in.set()
        last_free.wait(10)

    blocking = asyncio.create_task(store.write(blocker))
    assert await asyncio.to_thread(busy.wait, 10)
    queued = [asyncio.create_task(store.write(fn)) for fn in (first, refused, last)]
    await asyncio.sleep(0.05)            # all three are queued behind the blocker
    free.set()
    await blocking
    assert await asyncio.to_thread(last_in.wait, 10)
    # "first" has run, but its group has not committed: no answer, nothing to read yet.
    assert not queued[0].done()
    assert await inventory.sealed_secrets_of_cluster("c1") == []
    last_free.set()
    answers = await asyncio.gather(*queued, return_exceptions=True)
    assert answers[0] is None
    assert answers[2] is None
    assert isinstance(answers[1], InputError)
    assert [r.name for r in await inventory.sealed_secrets_of_cluster("c1")] == ["first"]
    assert store.health.ok


async def test_the_writes_of_one_loop_turn_share_one_transaction(store: Store) -> None:
    """Five clusters' writes submitted in one turn of the loop share one COMMIT, even when
    something in that turn lets the writer thread run (here a blocking sleep; in a
    daemon, every socket call of the turn releases the GIL)."""
    inventory = store.inventory
    writes, transactions = store.write_groups

    async def blocking() -> None:
        time.sleep(0.1)  # noqa: ASYNC251 (the point: a turn that lets the writer run)

    tasks = [asyncio.create_task(store.write(inventory_writes.upsert_sealed_secrets,
                                             [sealed("c0", "ns", "a")])),
             asyncio.create_task(blocking())]
    tasks += [asyncio.create_task(store.write(inventory_writes.upsert_sealed_secrets,
                                              [sealed(f"c{i}", "ns", "a")]))
              for i in range(1, 5)]
    await asyncio.gather(*tasks)
    assert store.write_groups == (writes + 5, transactions + 1)
    counts = await inventory.state_counts()
    assert {f"c{i}" for i in range(5)} <= set(counts)


async def test_a_write_from_another_loop_never_waits_for_a_start_due_on_this_one(
        store: Store) -> None:
    """A start is due at the end of this loop's turn, but this loop is blocked: a write
    from a second loop (another thread) still completes, and then this loop's does."""
    first = asyncio.ensure_future(store.write(inventory_writes.upsert_sealed_secrets,
                                              [sealed("c1", "ns", "here")]))
    await asyncio.sleep(0)   # the task submits; the start is due on this loop's next turn

    done: list[str] = []

    def elsewhere() -> None:
        asyncio.run(asyncio.wait_for(store.write(
            inventory_writes.upsert_sealed_secrets, [sealed("c2", "ns", "there")]), 5))
        done.append("there")

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join(10)          # this loop is blocked meanwhile: its start cannot run
    assert done == ["there"]
    await asyncio.wait_for(first, 10)
    counts = await store.inventory.state_counts()
    assert {"c1", "c2"} <= set(counts)


async def test_a_clusters_changes_and_its_watch_position_land_together(store: Store) -> None:
    """The write-behind's flush: upserts, deletes, states and watch positions in one
    transaction; a refused one stores none of them, position included."""
    inventory = store.inventory
    await inventory.upsert_sealed_secrets([sealed("c1", "ns", "a"), sealed("c1", "ns", "b")])
    await inventory.apply_cluster_changes(
        "c1", upserts=[sealed("c1", "ns", "c", state=S.STALE)], deletes=[("ns", "a")],
        states=[("ns", "b", S.COMPROMISED)], resource_versions={"sealedsecrets": "42"})
    stored = {r.name: r.state for r in await inventory.sealed_secrets_of_cluster("c1")}
    assert stored == {"b": S.COMPROMISED, "c": S.STALE}
    assert await inventory.get_watch_resource_version("c1", "sealedsecrets") == "42"
    with pytest.raises(StoreError, match="naive datetime"):
        await inventory.apply_cluster_changes(
            "c1", upserts=[sealed("c1", "ns", "d", observed_at=dt.datetime(2026, 1, 1))],
            resource_versions={"sealedsecrets": "43"},
            status=ClusterStatus(reachable=True, scan_duration_ms=5))
    assert await inventory.get_watch_resource_version("c1", "sealedsecrets") == "42"
    (cluster,) = await inventory.list_clusters()
    assert cluster.scan_duration_ms is None      # the refused flush's status neither
    # The end of a scan: its last changes, its key holdings and its status row together.
    scanned_at = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
    await inventory.apply_cluster_changes("c1", holdings=KeyHoldings(
        (KeyHolding("K1", "sealed-secrets-keyabc", "active", "9", None, T0),),
        (MalformedKeySecret("broken", "no tls.key", T0),)), status=ClusterStatus(
        reachable=True, last_scan_at=scanned_at, scan_duration_ms=7, sealing_key="K1",
        registration=ClusterRegistration("https://c1:6443")))
    (cluster,) = await inventory.list_clusters()
    assert (cluster.reachable, cluster.last_scan_at, cluster.scan_duration_ms,
            cluster.sealing_key, cluster.server) == (
        True, scanned_at, 7, "K1", "https://c1:6443")
    assert [h.secret_name for h in await inventory.cluster_key_holdings("c1")] == [
        "sealed-secrets-keyabc"]
    malformed = (await inventory.malformed_key_secrets_by_cluster())["c1"]
    assert [(m.secret_name, m.reason) for m in malformed] == [("broken", "no tls.key")]
    assert {r.name for r in await inventory.sealed_secrets_of_cluster("c1")} == {"b", "c"}
    with pytest.raises(InputError, match="another's SealedSecret"):
        await inventory.apply_cluster_changes("c1", upserts=[sealed("c2", "ns", "e")])
    assert await inventory.sealed_secrets_of_cluster("c2") == []


async def test_a_flush_naming_keys_never_seen_is_still_one_write(store: Store) -> None:
    """A first pass's flush names the cluster's own keys before any row did: they get
    their references in the flush's own transaction, and later flushes reuse them."""
    inventory = store.inventory
    writes, transactions = store.write_groups
    await inventory.apply_cluster_changes(
        "c1", upserts=[sealed("c1", "ns", "a", keys=("K-new", None)),
                       sealed("c1", "ns", "b", keys=("K-other",))],
        resource_versions={"sealedsecrets": "7"})
    await inventory.apply_cluster_changes(
        "c1", upserts=[sealed("c1", "ns", "c", keys=("K-new", "K-other"))])
    assert store.write_groups == (writes + 2, transactions + 2)
    stored = {r.name: [i.fingerprint for i in r.items]
              for r in await inventory.sealed_secrets_of_cluster("c1")}
    assert stored == {"a": ["K-new", None], "b": ["K-other"], "c": ["K-new", "K-other"]}
    assert await inventory.get_watch_resource_version("c1", "sealedsecrets") == "7"


async def test_a_status_write_can_register_the_cluster_again(store: Store) -> None:
    """The scan's status with where the cluster is reached: added, updated, un-removed."""
    inventory = store.inventory
    await inventory.upsert_cluster("c1", server="https://old:6443")
    await inventory.mark_cluster_removed("c1")
    await inventory.record_cluster_status("c1", reachable=True, registration=(
        ClusterRegistration("https://new:6443", "sealing", "sealer")))
    (cluster,) = await inventory.list_clusters()
    assert (cluster.server, cluster.controller_namespace, cluster.controller_name,
            cluster.removed, cluster.reachable) == (
        "https://new:6443", "sealing", "sealer", False, True)


class _Abort(BaseException):
    """Not an Exception: what a write might raise that ordinary handlers let through."""


async def test_a_write_that_raises_a_base_exception_leaves_the_writer_working(
        store: Store) -> None:
    def aborting(conn: sqlite3.Connection) -> None:
        inventory_writes.upsert_sealed_secrets(conn, [sealed("c1", "ns", "aborted")])
        raise _Abort

    with pytest.raises(_Abort):
        await asyncio.wait_for(store.write(aborting), 10)
    await asyncio.wait_for(store.inventory.upsert_sealed_secrets([sealed("c1", "ns", "next")]),
                           10)
    assert [r.name for r in await store.inventory.sealed_secrets_of_cluster("c1")] == ["next"]
