"""Clusters take turns on the RSA threads: one cluster's flood never queues ahead of all
the others' work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from sealfleet.app.fair_share import FairShare

T = TypeVar("T")


def on_threads(executor: ThreadPoolExecutor) -> Callable[[Callable[[], T]], Awaitable[T]]:
    def start(fn: Callable[[], T]) -> Awaitable[T]:
        return asyncio.get_running_loop().run_in_executor(executor, fn)
    return start


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


async def test_owners_are_served_in_turn_not_first_come_first_served(
        executor: ThreadPoolExecutor) -> None:
    share: FairShare[Callable[[], str], str] = FairShare(on_threads(executor), slots=1)
    ran: list[str] = []
    gate = threading.Event()

    def job(owner: str, wait: bool = False) -> Callable[[], str]:
        def run() -> str:
            if wait:
                gate.wait(10)
            ran.append(owner)
            return owner
        return run

    flood = [asyncio.create_task(share.run("flood", job("flood", wait=index == 0)))
             for index in range(6)]
    await asyncio.sleep(0)          # the flood is queued (one job running, five waiting)
    other = asyncio.create_task(share.run("other", job("other")))
    await asyncio.sleep(0)
    assert share.queued == 6
    gate.set()
    assert await other == "other"
    assert await asyncio.gather(*flood) == ["flood"] * 6
    # The other owner's one job ran right after the flood's running one, not after all six.
    assert ran == ["flood", "other", *["flood"] * 5]


async def test_errors_reach_their_caller_and_a_cancelled_waiter_is_skipped(
        executor: ThreadPoolExecutor) -> None:
    share: FairShare[Callable[[], int], int] = FairShare(on_threads(executor), slots=1)
    gate = threading.Event()
    ran: list[int] = []

    def blocking() -> int:
        gate.wait(10)
        return 1

    def failing() -> int:
        raise ValueError("boom")

    def counted() -> int:
        ran.append(3)
        return 3

    first = asyncio.create_task(share.run("a", blocking))
    await asyncio.sleep(0)
    cancelled = asyncio.create_task(share.run("a", counted))
    failed = asyncio.create_task(share.run("b", failing))
    await asyncio.sleep(0)
    cancelled.cancel()
    gate.set()
    assert await first == 1
    with pytest.raises(ValueError, match="boom"):
        await failed
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert ran == []
