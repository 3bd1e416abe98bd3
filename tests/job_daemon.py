"""The daemon's job side running for the length of a ``with`` block, as the service
wires it: a store, the fleet (workers, keystore), the job runner with every executor
(key jobs, reseal), for end-to-end tests against a sandbox.

Pacing is test-sized (short backoff, short watch timeouts); everything else is the
production code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from polling import eventually
from running_fleet import running
from sealfleet.adapters import retry
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import JobRecord
from sealfleet.app import config
from sealfleet.app.cluster.state import WorkerOptions
from sealfleet.app.fleet import FleetManager
from sealfleet.app.jobs import key_jobs, reseal
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.reseal import ResealExecutor
from sealfleet.app.jobs.runner import JobRunner

OPTIONS = WorkerOptions(backoff=retry.BackoffPolicy(initial=0.05, cap=0.3),
                        resync_interval=600, request_timeout=5, watch_timeout=2)


@dataclass
class Daemon:
    manager: FleetManager
    runner: JobRunner
    resealer: ResealExecutor
    store: Store
    settings: config.Settings

    async def run_job(self, kind: str, params: dict[str, Any] | None = None, *,
                      within: float = 90) -> JobRecord:
        """Submit a job and wait until it has finished (succeeded or failed)."""
        job = await self.runner.submit(kind, params or {}, actor="test")

        async def finished() -> JobRecord | None:
            found = await self.store.jobs.get_job(job.id)
            return found if found is not None and found.state in ("succeeded", "failed") \
                else None

        done: JobRecord = await eventually(finished, within=within)
        return done

    async def planned(self, **params: Any) -> dict[str, Any]:
        """The reseal plan a dry run gives now."""
        return dict(await self.resealer.dry_run(params))


@contextlib.asynccontextmanager
async def daemon(settings: config.Settings, executor: ThreadPoolExecutor,
                 ) -> AsyncIterator[Daemon]:
    kek = KeyEncryptionKey.from_file(settings.store.kek_file)
    async with Store.open(settings.store.database, kek=kek) as store:
        manager = FleetManager(settings, store, executor=executor, options=OPTIONS)
        context = JobContext(store, manager.keystore, lambda: settings)
        executors, resealer = reseal.build(
            context, executor, key_jobs.build(context),
            lambda kind, params, actor: runner.submit(kind, params, actor=actor))
        runner = JobRunner(store, executors)
        async with running(manager):
            jobs = asyncio.create_task(runner.run())
            try:
                yield Daemon(manager, runner, resealer, store, settings)
            finally:
                jobs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await jobs
