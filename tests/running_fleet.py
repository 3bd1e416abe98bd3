"""A FleetManager running for the length of a ``with`` block, as the daemon runs it.

Shared by the fleet tests (one emulated apiserver) and the end-to-end ones (a seeded
sandbox): start ``run()``, wait for the first pass, and cancel and await it on exit so
no worker outlives its test.  ``fleet_of`` opens the config's store first, as the
service does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from pathlib import Path

from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions
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


@contextlib.asynccontextmanager
async def fleet_of(config_file: Path, executor: Executor, options: WorkerOptions,
                   ) -> AsyncIterator[FleetManager]:
    """The fleet of *config_file* (a sandbox's, say) on its own store, running."""
    settings = config.load_settings(config_file)
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        manager = FleetManager(settings, store, executor=executor, options=options)
        async with running(manager):
            yield manager
