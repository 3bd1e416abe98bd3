"""Waiting for eventually-consistent state: the daemon and the sandbox work concurrently.

One helper for every test that polls (the store, a worker's status, a sandbox cluster)
until a condition holds; it fails the test, naming the last result, when it never does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


async def eventually(check: Callable[[], Awaitable[Any]], *, within: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy (or fail after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s (last result: {result!r})")
        await asyncio.sleep(0.05)
