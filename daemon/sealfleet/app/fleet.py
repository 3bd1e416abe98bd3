"""The fleet: one supervised worker per configured cluster, added and removed on reload.

``FleetManager.run`` owns a TaskGroup holding one named task per cluster, each wrapped
in a guard that turns a crash (a bug, a store hiccup) into a logged restart after a
backoff: a broken worker never takes the fleet, the API or the watchdog with it.
``apply_settings`` hands over a new settings tree; the manager starts workers for new
clusters, stops those removed (marking them removed in the store) and restarts those
whose connection settings changed.

Seams for the service (contracts §3): ``first_pass_done`` (every cluster scanned once
or marked unreachable), ``progress`` (bumped on every loop iteration of every worker
and by a one-second heartbeat, for the systemd watchdog), ``changes`` and ``changed``
(so the API can rebuild its cached report), ``attribution_backlog``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import structlog

from sealfleet.adapters import retry
from sealfleet.adapters.store import Store
from sealfleet.app.attributing import Attributor, Keyring
from sealfleet.app.cluster_worker import ClusterWorker, WorkerOptions

log = structlog.get_logger(__name__)

_KEYSTORE_REFRESH = 30.0   # seconds: pick up keys imported or marked compromised elsewhere
_TRIM_INTERVAL = 5.0       # seconds between returning freed heap memory to the OS


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim`` (None elsewhere, e.g. musl or macOS).

    A scan allocates and frees hundreds of megabytes of ciphertext strings (each larger
    than pymalloc's 512-byte limit, so they live on the C heap) interleaved with the
    long-lived inventory; glibc keeps the freed holes, and RSS ends up near the sum of
    everything ever in flight.  Trimming hands the holes back.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], object] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


def options_from_settings(settings: Any) -> WorkerOptions:
    fleet = getattr(settings, "fleet", None)

    def seconds(name: str, default: float) -> float:
        value = getattr(fleet, name, None)
        if value is None:
            return default
        return float(value.total_seconds()) if hasattr(value, "total_seconds") else float(value)

    return WorkerOptions(backoff=retry.BackoffPolicy.from_settings(settings),
                         resync_interval=seconds("resync_interval", 600.0),
                         request_timeout=seconds("request_timeout", 30.0))


@dataclass
class _Running:
    cluster: Any
    worker: ClusterWorker
    task: asyncio.Task[None]


class FleetManager:
    """Runs and supervises the cluster workers."""

    def __init__(self, settings: Any, store: Store, *, executor: Executor,
                 options: WorkerOptions | None = None) -> None:
        self._settings = settings
        self._store = store
        self._options = options
        self.keyring = Keyring()
        self.attributor = Attributor(store, executor, self.keyring)
        self.first_pass_done = asyncio.Event()
        self.progress = 0
        self.changes = 0
        self.changed = asyncio.Event()
        self._running: dict[str, _Running] = {}
        self._reconcile = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._load_gate = asyncio.Semaphore(2)  # stored inventories load two at a time

    # ------------------------------------------------------------------ seams

    @property
    def attribution_backlog(self) -> int:
        return self.attributor.backlog

    @property
    def workers(self) -> Mapping[str, ClusterWorker]:
        return {name: running.worker for name, running in self._running.items()}

    def apply_settings(self, settings: Any) -> None:
        """Adopt a new settings tree (SIGHUP): workers are added/removed shortly after."""
        self._settings = settings
        self._reconcile.set()

    async def refresh_keys(self) -> None:
        """Re-read the keystore: which private keys it holds (loaded only when attribution
        first needs them) and the compromised set."""
        records = await self._store.list_keys()
        self.keyring.offer_stored(r.fingerprint for r in records if r.has_private_key)
        if self.keyring.set_compromised(r.fingerprint for r in records
                                        if r.state == "compromised"):
            self._bump_changes()

    def _bump_progress(self) -> None:
        self.progress += 1

    def _bump_changes(self) -> None:
        self.changes += 1
        self.changed.set()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Until cancelled: the workers, reconciliation on reload, the heartbeat."""
        await self.refresh_keys()
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._apply()
                group.create_task(self._manage(), name="fleet:manage")
                group.create_task(self._heartbeat(), name="fleet:heartbeat")
                group.create_task(self._await_first_pass(), name="fleet:first-pass")
                trim = _malloc_trim()
                if trim is not None:
                    group.create_task(self._trim_memory(trim), name="fleet:trim-memory")
        finally:
            self._group = None
            self._running.clear()

    async def _manage(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_KEYSTORE_REFRESH):
                    await self._reconcile.wait()
            if self._reconcile.is_set():
                self._reconcile.clear()
                removed = self._apply()
                for name in removed:
                    await self._store.mark_cluster_removed(name)
                    self._bump_changes()
            await self.refresh_keys()

    def _apply(self) -> list[str]:
        """Start, stop and restart workers to match the settings; returns removed names."""
        assert self._group is not None
        wanted = {cluster.name: cluster for cluster in getattr(self._settings, "clusters", ())}
        removed = []
        for name, running in list(self._running.items()):
            if name not in wanted or wanted[name] != running.cluster:
                running.task.cancel()
                del self._running[name]
                if name not in wanted:
                    removed.append(name)
                    log.info("cluster_removed", cluster=name)
        options = self._options or options_from_settings(self._settings)
        for name, cluster in wanted.items():
            if name in self._running:
                continue
            worker = ClusterWorker(cluster, store=self._store, attributor=self.attributor,
                                   options=options, on_change=self._bump_changes,
                                   on_progress=self._bump_progress, load_gate=self._load_gate)
            task = self._group.create_task(self._guard(worker), name=f"cluster:{name}")
            self._running[name] = _Running(cluster, worker, task)
        return removed

    async def _guard(self, worker: ClusterWorker) -> None:
        """Restart a worker that crashed (a bug) after a backoff; never let it escape."""
        backoff = retry.Backoff(self._options.backoff if self._options
                                else retry.BackoffPolicy.from_settings(self._settings))
        while True:
            try:
                await worker.run()
                log.error("cluster_worker_returned", cluster=worker.name)
            except Exception:
                log.exception("cluster_worker_crashed", cluster=worker.name)
            worker.first_pass.set()  # a crashed worker must not hold readiness hostage
            await asyncio.sleep(backoff.next_delay())

    async def _trim_memory(self, trim: Callable[[], object]) -> None:
        """While the inventory moves, give freed C-heap memory back every few seconds."""
        previous = self.progress
        while True:
            await asyncio.sleep(_TRIM_INTERVAL)
            moved, previous = self.progress - previous, self.progress
            if moved > _TRIM_INTERVAL + 1:  # more than the heartbeat alone: work happened
                await asyncio.to_thread(trim)

    async def _heartbeat(self) -> None:
        while True:
            self._bump_progress()
            await asyncio.sleep(1.0)

    async def _await_first_pass(self) -> None:
        """Set ``first_pass_done`` once every cluster configured at the time has been
        scanned once or marked unreachable (clusters added later do not unset it)."""
        while not self.first_pass_done.is_set():
            workers = [r.worker for r in self._running.values()]
            if all(w.first_pass.is_set() for w in workers):
                self.first_pass_done.set()
                log.info("fleet_first_pass_done", clusters=len(workers))
                return
            pending = [w.first_pass.wait() for w in workers if not w.first_pass.is_set()]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.gather(*pending)
