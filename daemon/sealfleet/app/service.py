"""The daemon's lifecycle: open resources in order, run the eternal tasks, stop in stages.

``run(settings)`` is what ``sealfleet run`` calls.  Resources are opened with an
``AsyncExitStack`` (store with its migrations, the RSA thread pool, the API server) and
closed in reverse.  The eternal work lives in one ``TaskGroup`` of named, guarded tasks:
the fleet manager, the API snapshot refresher, readiness/watchdog/status reporting,
config reload and the stop watcher.  A guard logs each task's start and failure and turns
an unexpected return into an error, so a dead task can never go unnoticed.

Signal handlers only set events, and are the first thing ``run`` installs (``sealfleet
run`` installs process-level ones even earlier, before its imports, and hands pending
signals to these events).  SIGTERM/SIGINT start the staged shutdown, each stage
bounded by the ``[service] shutdown_timeout`` budget: (1) stop intake - the API stops
accepting connections, systemd is told STOPPING=1; (2) drain - the fleet manager is
cancelled so watches stop, and the store's writer finishes the transactions in flight;
(3) close - API runner, thread pool, database.  SIGHUP reloads the config: an invalid
file is logged and the running config kept; a valid one is handed to the fleet (clusters
added/removed without a restart) and to the API view (policy, master keys).

systemd: READY=1 only once migrations are applied and the fleet's first pass is done;
WATCHDOG=1 only while the fleet's progress counter moves and the event loop is
responsive - a wedged loop or a stalled fleet stops the pings and systemd restarts us.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import structlog

from sealfleet.adapters.http_api import (
    ApiDeps,
    ApiServer,
    InventoryView,
    build_app,
    metrics,
    status_page,
)
from sealfleet.adapters.kube import kubeconfig
from sealfleet.adapters.rsa_pool import RsaProcessPool
from sealfleet.adapters.store import Store
from sealfleet.adapters.systemd import Notifier
from sealfleet.app import backups, heap, preflight
from sealfleet.app.checking import Checker
from sealfleet.app.config import Settings, load_settings
from sealfleet.app.fleet import FleetManager
from sealfleet.app.jobs import key_jobs, key_transfer, reseal
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.runner import JobRunner
from sealfleet.app.keystore import Keystore
from sealfleet.app.logging import configure_logging, redacted_settings
from sealfleet.app.scheduler import Scheduler
from sealfleet.domain.attribution import RsaWork
from sealfleet.domain.staleness import StalenessPolicy
from sealfleet.errors import ConfigError, FleetError, PermanentError

log = structlog.get_logger(__name__)

_STATUS_INTERVAL = 5.0      # seconds between STATUS= refreshes (sent only when changed)
_HARD_EXIT_GRACE = 5.0      # seconds past the shutdown budget before os._exit
_RSA_BOOT_WAIT = 10.0       # seconds the first pass waits for the RSA workers to boot, at most
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Fleet(Protocol):
    """What the service needs of the fleet manager (``app/fleet.FleetManager``)."""

    first_pass_done: asyncio.Event   # every cluster scanned once or marked unreachable
    progress: int                    # moves while the fleet works: feeds the watchdog
    changes: int                     # moves when the inventory changed: report rebuilt

    @property
    def attribution_backlog(self) -> int: ...  # items waiting for RSA right now

    @property
    def rsa_work(self) -> RsaWork: ...         # attribution's RSA since start

    @property
    def keystore(self) -> Keystore: ...        # the one owner of key state

    @property
    def checker(self) -> Checker | None: ...   # answers POST /api/v1/check (None: off)

    async def run(self) -> None: ...
    async def apply_settings(self, settings: Settings) -> None: ...


FleetFactory = Callable[[Settings, Store, ThreadPoolExecutor, RsaProcessPool], Fleet]


def default_fleet_factory(settings: Settings, store: Store, executor: ThreadPoolExecutor,
                          processes: RsaProcessPool) -> Fleet:
    return FleetManager(settings, store, executor=executor, rsa_processes=processes)


def policy_of(settings: Settings) -> StalenessPolicy:
    return StalenessPolicy(key_renew_period=settings.policy.key_renew_period,
                           cert_expiry_warning=settings.policy.cert_expiry_warning)


async def _forget_unconfigured(store: Store, settings: Settings) -> None:
    """Clusters dropped from the config while the daemon was down leave the report."""
    configured = {c.name for c in settings.clusters}
    for cluster in await store.inventory.list_clusters():
        if not cluster.removed and cluster.name not in configured:
            await store.inventory.mark_cluster_removed(cluster.name)
            log.info("cluster_removed", cluster=cluster.name, reason="not in config")


class Service:
    """One daemon run.  Build it, then ``await service.run()``."""

    def __init__(self, settings: Settings, *, fleet_factory: FleetFactory | None = None,
                 notifier: Notifier | None = None, environ: Mapping[str, str] | None = None,
                 install_signal_handlers: bool = True, hard_exit: bool = False,
                 watchdog_stall_limit: float | None = None) -> None:
        self.settings = settings
        self._fleet_factory = fleet_factory or default_fleet_factory
        self._notifier = notifier or Notifier(environ)
        self._install_signals = install_signal_handlers
        self._hard_exit = hard_exit
        self._stall_limit = watchdog_stall_limit
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.api: ApiServer | None = None
        self.fleet: Fleet | None = None
        self.view: InventoryView | None = None
        self._store: Store | None = None
        self._backups: backups.BackupKeeper | None = None
        self.jobs: JobRunner | None = None
        self._scheduler: Scheduler | None = None
        self.migrations_applied = False
        self.reloads = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # ----------------------------------------------------------------- control

    def request_stop(self) -> None:
        self.stop_requested.set()

    def request_reload(self) -> None:
        self.reload_requested.set()

    def readiness(self) -> dict[str, bool]:
        """/readyz: migrated, first pass done, and the last write reached the database
        (a locked or full database is ours to fix, not a cluster's, so it shows here)."""
        first_pass = self.fleet is not None and self.fleet.first_pass_done.is_set()
        store_ok = self._store is not None and self._store.health.ok
        return {"migrations": self.migrations_applied, "first_pass": first_pass,
                "store": store_ok}

    # ----------------------------------------------------------------- run

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # First of all: SIGHUP's and SIGTERM's default action is to kill the process.
        previous = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        if self._install_signals:
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        settings = self.settings
        notify = self._notifier
        notify.status("starting: opening the inventory")
        log.info("service_starting", pid=os.getpid(),
                 config=redacted_settings(settings.model_dump(mode="json")))
        try:
            async with contextlib.AsyncExitStack() as stack:
                credentials = await asyncio.to_thread(preflight.check, settings)
                # A bad [backup] file stops the start like any config error (exit 2).
                backup_policy = await asyncio.to_thread(backups.BackupPolicy.from_settings,
                                                        settings.backup)
                store = await stack.enter_async_context(
                    Store.open(settings.store.database, kek=credentials.kek, exclusive=True))
                self._store = store
                self.migrations_applied = True
                await _forget_unconfigured(store, settings)
                executor = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="rsa")
                stack.callback(executor.shutdown, wait=True, cancel_futures=True)
                # Attribution's RSA, one worker process per core this process may use;
                # those the first pass keeps busy (its clusters scan at once) boot now.
                cores = len(os.sched_getaffinity(0))
                processes = await stack.enter_async_context(
                    RsaProcessPool(cores, start=min(cores, len(settings.clusters))))
                fleet = self.fleet = self._fleet_factory(settings, store, executor, processes)
                view = self.view = InventoryView(
                    store, policy=policy_of(settings),
                    changes=lambda: fleet.changes, render_status_page=status_page.render)
                context = JobContext(store=store, keystore=fleet.keystore,
                                     settings=lambda: self.settings)
                executors, resealer = reseal.build(
                    context, executor, key_jobs.build(context),
                    lambda kind, params, actor: jobs.submit(kind, params, actor=actor))
                importer = key_transfer.KeyImport(context)
                jobs = self.jobs = JobRunner(store, [*executors, importer])
                self._scheduler = Scheduler(
                    jobs, store, settings=lambda: self.settings,
                    report=lambda: view.snapshot.report if view.snapshot else None,
                    attribution_backlog=lambda: fleet.attribution_backlog)
                deps = ApiDeps(view=view, store=store, readiness=self.readiness,
                               read_token=credentials.read_token,
                               admin_token=credentials.admin_token,
                               attribution_backlog=lambda: fleet.attribution_backlog,
                               rsa_work=lambda: fleet.rsa_work,
                               last_backup=metrics.newest_file_timestamp(settings.backup.dir),
                               jobs=jobs, check=fleet.checker, reseal=resealer,
                               key_transfer=key_transfer.KeyTransfer(
                                   context, importer, jobs,
                                   backup_policy=lambda: backup_policy))
                if backup_policy is not None:
                    self._backups = backups.BackupKeeper(backup_policy, fleet.keystore, store)
                budget = settings.service.shutdown_timeout_seconds
                # The first report is made before the API listens: the first request
                # used to wait for it (for 1,000 clusters a few hundred ms).
                await view.rebuild()
                heap.collect_before_serving()
                server = ApiServer(
                    build_app(deps), socket_path=settings.api.socket,
                    listen=settings.api.listen_address, shutdown_timeout=budget / 4,
                    # Only the default directory is ours to create; a configured socket
                    # path must be in a directory that exists.
                    create_parent="socket" not in settings.api.model_fields_set)
                try:
                    self.api = await stack.enter_async_context(server)
                except PermanentError as exc:  # the address is in use, or not ours to bind
                    raise preflight.bind_failure(settings, exc) from exc
                # The RSA workers booted with the pool meanwhile (an interpreter and
                # cryptography each: about 0.2 s of a core); the first pass starts once
                # they have, instead of sharing the cores with their boots (whose end
                # the API and store setup before this point usually hides).  A worker
                # that does not boot is the pool's to replace at its first job: the
                # scan never waits long for it.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_RSA_BOOT_WAIT):
                        await processes.booted()
                notify.status("scanning clusters")
                await self._run_tasks()
        finally:
            if self._install_signals:
                for sig in _SIGNALS:
                    loop.remove_signal_handler(sig)
                    # remove_signal_handler leaves SIG_DFL (death for SIGHUP/SIGTERM);
                    # put back what was there, e.g. the early handlers of `sealfleet run`.
                    handler = previous[sig]
                    if handler is not None:
                        signal.signal(sig, handler)
            log.info("service_stopped")

    def _parts(self) -> tuple[Fleet, InventoryView]:
        if self.fleet is None or self.view is None:
            raise FleetError("service is not running")
        return self.fleet, self.view

    async def _run_tasks(self) -> None:
        fleet, view = self._parts()
        async with asyncio.TaskGroup() as group:
            def spawn(name: str, coro: Coroutine[Any, Any, None], *, eternal: bool = True,
                      ) -> None:
                self._tasks[name] = group.create_task(self._guard(name, coro, eternal),
                                                      name=name)

            spawn("fleet", fleet.run())
            if self._backups is not None:
                spawn("backups", self._backups.run())
            if self.jobs is not None and self._scheduler is not None:
                spawn("jobs", self.jobs.run())
                spawn("scheduler", self._scheduler.run())
            spawn("api-snapshot", view.run_refresher())
            spawn("readiness", self._readiness(), eternal=False)
            spawn("watchdog", self._watchdog())
            spawn("reload", self._reload_loop())
            spawn("stop-watcher", self._stop_watcher(), eternal=False)

    async def _guard(self, name: str, coro: Awaitable[None], eternal: bool) -> None:
        log.debug("task_started", task=name)
        try:
            await coro
        except asyncio.CancelledError:
            log.debug("task_cancelled", task=name)
            raise
        except Exception:
            log.exception("task_failed", task=name)
            self.request_stop()
            raise
        if eternal:
            log.error("task_returned_unexpectedly", task=name)
            self.request_stop()
            raise FleetError(f"task {name} returned unexpectedly")
        log.debug("task_finished", task=name)

    # ----------------------------------------------------------------- tasks

    async def _readiness(self) -> None:
        fleet, view = self._parts()
        await fleet.first_pass_done.wait()
        await view.rebuild()
        self.ready.set()
        status = self._status_line()
        self._notifier.ready(status)
        log.info("service_ready", status=status, api=self.api.addresses if self.api else [])

    def _status_line(self) -> str:
        snap = self.view.snapshot if self.view else None
        if snap is None or not self.ready.is_set():
            return f"scanning {len(self.settings.clusters)} clusters"
        fleet = snap.report["fleet"]
        counts = fleet["sealed_secrets"]
        return (f"{fleet['reachable']}/{fleet['clusters']} clusters reachable; "
                f"{counts['total']} SealedSecrets, {counts['stale']} stale, "
                f"{counts['compromised']} compromised, {counts['unknown']} unknown; "
                f"{fleet['stale_sealing_keys']} stale sealing keys")

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from progress; STATUS= when it changes."""
        fleet, _ = self._parts()
        interval = self._notifier.watchdog_interval
        tick = min(interval, _STATUS_INTERVAL) if interval else _STATUS_INTERVAL
        # The fleet's heartbeat bumps progress every second; allow a few missed beats.
        stall_limit = self._stall_limit or max(3 * tick, 10.0)
        last_progress, last_moved = fleet.progress, time.monotonic()
        last_status = ""
        withheld = False
        while True:
            before = time.monotonic()
            await asyncio.sleep(tick)
            now = time.monotonic()
            lag = now - before - tick
            if fleet.progress != last_progress:
                last_progress, last_moved = fleet.progress, now
            stalled = now - last_moved > stall_limit
            if interval and not stalled and lag < interval:
                self._notifier.watchdog()
                if withheld:
                    log.info("watchdog_resumed")
                    withheld = False
            elif interval and not withheld:
                log.error("watchdog_withheld", fleet_stalled=stalled, loop_lag_s=round(lag, 3))
                withheld = True
            status = self._status_line()
            if status != last_status:
                self._notifier.status(status)
                last_status = status

    async def _reload_loop(self) -> None:
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            await self._reload()

    async def _reload(self) -> None:
        fleet, view = self._parts()
        path = self.settings.config_path
        if path is None:
            log.warning("config_reload_skipped", reason="settings did not come from a file")
            return
        self._notifier.reloading("reloading configuration")
        try:
            new = await asyncio.to_thread(load_settings, path)
        except ConfigError as exc:
            log.error("config_reload_rejected", error=str(exc))
            self._notifier.ready(self._status_line())
            return
        # Kubeconfig files are re-read when they change anyway; a reload re-reads them all.
        kubeconfig.shared_cache().invalidate()
        old = self.settings
        for section in ("store", "api", "service"):
            if getattr(old, section) != getattr(new, section):
                log.warning("config_change_needs_restart", section=section)
        if old.logging != new.logging:
            configure_logging(level=new.logging.level, fmt=new.logging.format)
        await fleet.apply_settings(new)
        view.set_policy(policy_of(new))   # after the fleet wrote the new master set
        self.settings = new
        self.reloads += 1
        added = sorted({c.name for c in new.clusters} - {c.name for c in old.clusters})
        removed = sorted({c.name for c in old.clusters} - {c.name for c in new.clusters})
        log.info("config_reloaded", clusters=len(new.clusters), added=added, removed=removed)
        self._notifier.ready(self._status_line())

    async def _stop_watcher(self) -> None:
        await self.stop_requested.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Staged, bounded: stop intake, drain the fleet, cancel the rest."""
        budget = self.settings.service.shutdown_timeout_seconds
        deadline = time.monotonic() + budget
        log.info("shutdown_started", budget_s=budget)
        self._notifier.stopping("stopping")
        if self._hard_exit:
            self._arm_hard_exit(budget + _HARD_EXIT_GRACE)
        if self.api is not None:                                   # 1. stop intake
            try:
                async with asyncio.timeout(budget / 4):
                    await self.api.stop_intake()
            except TimeoutError:
                log.warning("shutdown_stage_timeout", stage="stop_intake")
        await self._cancel(["fleet"], deadline - budget / 4)       # 2. drain the fleet
        others = [n for n in self._tasks if n not in ("fleet", "stop-watcher")]
        await self._cancel(others, deadline - budget / 4)          # 3. the rest
        log.info("shutdown_tasks_stopped", remaining_s=round(deadline - time.monotonic(), 2))

    async def _cancel(self, names: list[str], until: float) -> None:
        tasks = {self._tasks[n] for n in names if n in self._tasks and not self._tasks[n].done()}
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.1, until - time.monotonic()))
        if pending:
            log.warning("shutdown_tasks_pending", tasks=sorted(t.get_name() for t in pending))

    @staticmethod
    def _arm_hard_exit(after: float) -> None:
        def fire() -> None:
            log.critical("shutdown_hard_exit", after_s=after)
            os._exit(70)
        timer = threading.Timer(after, fire)
        timer.daemon = True
        timer.start()


async def run(settings: Settings, *, fleet_factory: FleetFactory | None = None,
              hard_exit: bool = False) -> None:
    """Run the daemon until SIGTERM/SIGINT (the entry point of ``sealfleet run``)."""
    await Service(settings, fleet_factory=fleet_factory, hard_exit=hard_exit).run()
