"""The attribution cache's write-behind, against a real database: queued answers are
read back at once, written together a moment later, written when the store closes, and
kept through a write that fails."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from structlog.testing import capture_logs

from polling import eventually
from sealfleet.adapters.store import Store, inventory_reads

A, B, C = ("a" * 64), ("b" * 64), ("c" * 64)


async def stored(store: Store, hashes: list[str]) -> dict[str, str | None]:
    """What the database itself holds (not the queue)."""
    return await store.read(inventory_reads.get_attributions, hashes, None)


async def test_queued_answers_are_read_at_once_and_written_together(store: Store) -> None:
    inventory = store.inventory
    writes, _ = store.write_groups
    inventory.queue_attributions([(A, "K1")], known_keys_epoch=1)
    inventory.queue_attributions([(B, None), (C, "K2")], known_keys_epoch=1)
    assert await inventory.get_attributions([A, B, C]) == {A: "K1", B: None, C: "K2"}
    assert await stored(store, [A, B, C]) == {}          # not written yet

    async def written() -> bool:
        return await stored(store, [A, B, C]) == {A: "K1", B: None, C: "K2"}

    await eventually(written, within=5)
    assert store.write_groups[0] == writes + 1           # both queues, one write


async def test_an_unknown_answer_counts_only_for_its_keys_epoch(store: Store) -> None:
    inventory = store.inventory
    await inventory.put_attributions([(A, "K1")], known_keys_epoch=1)
    inventory.queue_attributions([(A, None), (B, None)], known_keys_epoch=2)
    assert await inventory.get_attributions([A, B], known_keys_epoch=2) == {A: None, B: None}
    # Under a newer key set the queued "unknown" replaces the stored answer and counts
    # no more, as it will once written.
    assert await inventory.get_attributions([A, B], known_keys_epoch=3) == {}
    await inventory.flush_attributions()
    assert await inventory.get_attributions([A, B], known_keys_epoch=3) == {}
    assert await inventory.get_attributions([A, B], known_keys_epoch=2) == {A: None, B: None}


async def test_closing_the_store_writes_what_is_queued(db_path: Path) -> None:
    async with Store.open(db_path) as store:
        store.inventory.queue_attributions([(A, "K1"), (B, None)], known_keys_epoch=4)
    async with Store.open(db_path) as store:
        assert await stored(store, [A, B]) == {A: "K1", B: None}


async def test_a_failed_write_keeps_its_answers_for_the_next(db_path: Path) -> None:
    """Another process holds the database: the write fails (logged), the answers stay
    readable, and once the lock is gone they are written, newer answers winning."""
    async with Store.open(db_path, busy_timeout=0) as store:
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")
            with capture_logs() as logs:
                store.inventory.queue_attributions([(A, "K1"), (B, "K1")],
                                                   known_keys_epoch=1)

                async def failed() -> bool:
                    return any(e["event"] == "attribution_cache_write_failed" for e in logs)

                await eventually(failed, within=5)
            store.inventory.queue_attributions([(B, "K2")], known_keys_epoch=1)
            assert await store.inventory.get_attributions([A, B]) == {A: "K1", B: "K2"}
        finally:
            other.execute("ROLLBACK")
            other.close()

        async def written() -> bool:
            return await stored(store, [A, B]) == {A: "K1", B: "K2"}

        await eventually(written, within=5)
