"""The fleet: one supervised worker per configured cluster, added and removed on reload.

``FleetManager.run`` owns a TaskGroup holding one named task per cluster, each wrapped
in a guard that turns a crash (a bug, a store hiccup) into a logged restart after a
backoff: a broken worker never takes the fleet, the API or the watchdog with it.
``apply_settings`` hands over a new settings tree; the manager starts workers for new
clusters, stops those removed (marking them removed in the store) and restarts those
whose connection settings changed.

One fleet-wide gate (:mod:`connect_gate`), handed to every worker, bounds how many
clusters connect and scan at once (``[fleet] connect_concurrency``, fewer while the
event loop lags): a first pass over 1,000 clusters, or every cluster coming back
together after an outage or a restart, proceeds a few clusters at a time, each
cluster's result visible as soon as it is done, while the API and the watchdog stay
responsive.  The workers' jittered backoff spreads the attempts in time; the gate
bounds how many are under way at any moment.

The manager owns the fleet's :class:`Keystore` and :class:`Attributor`, shared by every
worker, by the repo scanner (``[[repos]]``, see :mod:`sealfleet.app.repos`) and by the
checker behind ``POST /api/v1/check``, and the periodic upkeep (keystore refresh,
pruning the attribution cache, and the heap: :mod:`heap` paces the garbage collector
and gives freed memory back).

What the service uses (its ``Fleet`` protocol): ``first_pass_done`` (every cluster
scanned once or marked unreachable), ``progress`` (bumped on every loop iteration of
every worker and by a one-second heartbeat, for the systemd watchdog), ``changes``
(so the API can rebuild its cached report), ``attribution_backlog``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import structlog

from sealfleet.adapters import retry
from sealfleet.adapters.rsa_pool import RsaProcessPool
from sealfleet.adapters.store import Store
from sealfleet.app import heap
from sealfleet.app.attributing import Attributor
from sealfleet.app.checking import Checker
from sealfleet.app.cluster.state import Deps, WorkerOptions
from sealfleet.app.cluster.worker import ClusterWorker
from sealfleet.app.config import ClusterSettings, Settings
from sealfleet.app.connect_gate import ConnectGate
from sealfleet.app.keystore import Keystore
from sealfleet.app.repos import RepoScanner
from sealfleet.domain.attribution import RsaWork
from sealfleet.errors import FleetError

log = structlog.get_logger(__name__)

_KEYSTORE_REFRESH = 30.0   # seconds: pick up keys imported or marked compromised elsewhere
# The attribution cache keeps answers for items no stored SealedSecret holds any more
# (deleted objects, resealed items); a day's grace keeps a briefly deleted and
# re-created object free, a daily pass keeps the table from growing forever.  The
# prune holds the writer for about a second per 100k SealedSecrets.
_PRUNE_INTERVAL = 24 * 3600.0
_PRUNE_GRACE = dt.timedelta(days=1)
_LOAD_CONCURRENCY = 2      # stored inventories loaded at once (full records are big)
_START_BATCH = 32          # workers started per turn of the loop (see _apply)


@dataclass
class _Running:
    cluster: ClusterSettings
    worker: ClusterWorker
    task: asyncio.Task[None]


class FleetManager:
    """Runs and supervises the cluster workers.

    *options* overrides the pacing read from the settings (tests run with short
    backoffs); otherwise :meth:`WorkerOptions.from_settings` is the one reader of it.
    *connect_concurrency* likewise overrides ``[fleet] connect_concurrency``.
    """

    def __init__(self, settings: Settings, store: Store, *, executor: Executor,
                 rsa_processes: RsaProcessPool | None = None,
                 options: WorkerOptions | None = None,
                 connect_concurrency: int | None = None) -> None:
        self._settings = settings
        self.store = store
        self._options = options
        self.keystore = Keystore(store)
        self.attributor = Attributor(store, executor, self.keystore, processes=rsa_processes)
        # The GitOps trees ([[repos]]) and the CI check share the keystore and attributor.
        self.first_pass_done = asyncio.Event()
        self.repos = RepoScanner(settings, store, self.keystore, self.attributor,
                                 on_change=self._bump_changes,
                                 clusters_scanned=self.first_pass_done)
        self.checker = Checker(store, self.keystore, self.attributor,
                               lambda: self._settings.clusters)
        self.progress = 0
        self.changes = 0
        # Sessions that scanned their cluster: the heap refreezes once a fleet's worth
        # have (a reconnect wave's old sessions are then garbage among the frozen).
        # Failed attempts are no such sessions: counted (the connect gate's turns), a
        # fleet-wide outage made a full collection (0.25 to 0.45 s of a stopped loop at
        # 1,000 clusters) due every 30 s while it lasted.
        self.scans = 0
        self._running: dict[str, _Running] = {}
        self._reconcile = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._load_gate = asyncio.Semaphore(_LOAD_CONCURRENCY)
        # Read once: a reload changes the clusters, not how many connect at once.
        self.connect_gate = ConnectGate(connect_concurrency
                                        or settings.fleet.connect_concurrency)
        self._heap = heap.Heap(lambda: self.progress, trim=heap.malloc_trim(),
                               sessions=lambda: self.scans,
                               clusters=lambda: len(self._running),
                               connecting=lambda: not self.connect_gate.idle)

    # ------------------------------------------------------------------ seams

    @property
    def attribution_backlog(self) -> int:
        return self.attributor.backlog

    @property
    def rsa_work(self) -> RsaWork:
        return self.attributor.rsa_work

    @property
    def workers(self) -> Mapping[str, ClusterWorker]:
        return {name: running.worker for name, running in self._running.items()}

    async def apply_settings(self, settings: Settings) -> None:
        """Adopt a new settings tree (SIGHUP): the master key set at once, workers
        added and removed shortly after."""
        if not settings.fleet.master \
                and settings.fleet.master_keys != self._settings.fleet.master_keys:
            await self.keystore.set_master(settings.fleet.master_keys)
        self._settings = settings
        self._reconcile.set()
        self.repos.apply_settings(settings)

    async def refresh_keys(self) -> None:
        """Re-read the keystore (keys imported or marked compromised elsewhere)."""
        if await self.keystore.refresh():
            self._bump_changes()

    def _worker_options(self) -> WorkerOptions:
        return self._options or WorkerOptions.from_settings(self._settings.fleet)

    def _bump_progress(self) -> None:
        self.progress += 1

    def _bump_changes(self) -> None:
        self.changes += 1

    def _count_scan(self) -> None:
        self.scans += 1

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Until cancelled: the workers, reconciliation on reload, the heartbeat, upkeep."""
        if not self._settings.fleet.master:  # in master mode the jobs keep the set
            await self.keystore.set_master(self._settings.fleet.master_keys)
        await self.refresh_keys()
        self._heap.hold_collections()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await self._apply()
                group.create_task(self._manage(), name="fleet:manage")
                group.create_task(self._heartbeat(), name="fleet:heartbeat")
                group.create_task(self.connect_gate.run(), name="fleet:connect-gate")
                group.create_task(self._await_first_pass(), name="fleet:first-pass")
                group.create_task(self._prune_attributions(), name="fleet:prune")
                group.create_task(self.repos.run(), name="fleet:repos")
                group.create_task(self._heap.run(), name="fleet:heap")
        finally:
            self._heap.release()
            self._group = None
            self._running.clear()

    async def _manage(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_KEYSTORE_REFRESH):
                    await self._reconcile.wait()
            if self._reconcile.is_set():
                self._reconcile.clear()
                removed = await self._apply()
                for name in removed:
                    await self.store.inventory.mark_cluster_removed(name)
                    self._bump_changes()
            await self.refresh_keys()

    async def _apply(self) -> list[str]:
        """Start, stop and restart workers to match the settings; returns removed names.

        Workers start ``_START_BATCH`` at a time, the loop turning in between: each new
        task's first step runs in the loop's next turn, and 1,000 of them in one turn
        (some 0.3 ms each) held every API request and watch event for 300 ms."""
        assert self._group is not None
        wanted = {cluster.name: cluster for cluster in self._settings.clusters}
        removed = []
        for name, running in list(self._running.items()):
            if name not in wanted or wanted[name] != running.cluster:
                running.task.cancel()
                del self._running[name]
                if name not in wanted:
                    removed.append(name)
                    log.info("cluster_removed", cluster=name)
        deps = Deps(store=self.store, keystore=self.keystore, attributor=self.attributor,
                    options=self._worker_options(), on_change=self._bump_changes,
                    on_progress=self._bump_progress, on_scanned=self._count_scan)
        started = 0
        for name, cluster in wanted.items():
            if name in self._running:
                continue
            if started and started % _START_BATCH == 0:
                await asyncio.sleep(0)
            started += 1
            worker = ClusterWorker(cluster, deps, load_gate=self._load_gate,
                                   connect_gate=self.connect_gate)
            task = self._group.create_task(self._guard(worker), name=f"cluster:{name}")
            self._running[name] = _Running(cluster, worker, task)
        return removed

    async def _guard(self, worker: ClusterWorker) -> None:
        """Restart a worker that crashed (a bug) after a backoff; never let it escape."""
        backoff = retry.Backoff(self._worker_options().backoff)
        while True:
            try:
                await worker.run()
                log.error("cluster_worker_returned", cluster=worker.name)
            except Exception:
                log.exception("cluster_worker_crashed", cluster=worker.name)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # It crashed while being stopped: the stop wins (restarting it
                    # would swallow the cancellation and hold the shutdown up).
                    raise asyncio.CancelledError from None
            worker.first_pass.set()  # a crashed worker must not hold readiness hostage
            await asyncio.sleep(backoff.next_delay())

    async def _prune_attributions(self) -> None:
        """Daily: drop cached attributions no stored SealedSecret refers to any more."""
        while True:
            await asyncio.sleep(_PRUNE_INTERVAL)
            older_than = dt.datetime.now(dt.UTC) - _PRUNE_GRACE
            try:
                pruned = await self.store.inventory.prune_attributions(older_than=older_than)
            except FleetError as error:
                log.warning("attributions_prune_failed", error=str(error))
                continue
            log.info("attributions_pruned", entries=pruned)

    async def _heartbeat(self) -> None:
        while True:
            self._bump_progress()
            await asyncio.sleep(1.0)

    async def _await_first_pass(self) -> None:
        """Set ``first_pass_done`` once every cluster configured at the time has been
        scanned once or marked unreachable (clusters added later do not count, and a
        cluster removed before its first pass is not waited for).

        One worker at a time: a thousand clusters cost a thousand wakeups in all, not a
        thousand every second.
        """
        workers = [r.worker for r in self._running.values()]
        for worker in workers:
            while not worker.first_pass.is_set() and self._is_running(worker):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # to notice a removal
                        await worker.first_pass.wait()
        await self._heap.settle()  # the fleet's long-lived objects are in place
        self.first_pass_done.set()
        log.info("fleet_first_pass_done", clusters=len(workers))

    def _is_running(self, worker: ClusterWorker) -> bool:
        running = self._running.get(worker.name)
        return running is not None and running.worker is worker
