"""A FleetManager running for the length of a ``with`` block, as the daemon runs it.

Shared by the fleet tests (one emulated apiserver) and the end-to-end ones (a seeded
sandbox): start ``run()``, wait for the first pass, and cancel and await it on exit so
no worker outlives its test.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sealfleet.app.fleet import FleetManager


@contextlib.asynccontextmanager
async def running(manager: FleetManager, *, first_pass_within: float = 30.0,
                  ) -> AsyncIterator[FleetManager]:
    task = asyncio.create_task(manager.run())
    try:
        async with asyncio.timeout(first_pass_within):
            await manager.first_pass_done.wait()
        yield manager
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
