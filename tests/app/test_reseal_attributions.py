"""The reseal's attribution writer: every caller's rows are committed when its put
returns, and puts that come together share one transaction (a real store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app.jobs.reseal_attributions import AttributionWriter


async def test_concurrent_puts_share_commits_and_each_returns_once_committed(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as store:
        writer = AttributionWriter(store, lambda: 7)
        committed_at_return: list[bool] = []

        async def put(index: int) -> None:
            rows: list[tuple[str, str | None]] = [(f"hash-{index}-{item}", "fp-target")
                                                  for item in range(3)]
            await writer.put(rows)
            found = await store.inventory.get_attributions([h for h, _ in rows])
            committed_at_return.append(found == dict(rows))

        await asyncio.gather(*(put(index) for index in range(40)))
        assert committed_at_return == [True] * 40
        # All forty came before the first commit ran: one transaction for them all.
        assert writer.commits == 1
        await writer.put([("hash-late", None)])
        assert writer.commits == 2
        assert await store.inventory.get_attributions(["hash-late"]) == {"hash-late": None}


async def test_a_cancelled_caller_does_not_cancel_the_commit_others_wait_on(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path / "inventory.db", kek=KeyEncryptionKey(b"k" * 32)) as store:
        writer = AttributionWriter(store, lambda: 7)
        first = asyncio.create_task(writer.put([("hash-a", "fp")]))
        second = asyncio.create_task(writer.put([("hash-b", "fp")]))
        await asyncio.sleep(0)          # both joined the batch
        first.cancel()
        await second
        assert first.cancelled()
        assert await store.inventory.get_attributions(["hash-a", "hash-b"]) == {
            "hash-a": "fp", "hash-b": "fp"}
