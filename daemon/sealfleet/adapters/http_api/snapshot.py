"""The API's view of the inventory: one consistent snapshot, pre-serialised, rebuilt on change.

The staleness report is read far more often than the inventory changes (dashboards,
Prometheus every 15 s, CI gates), so the JSON bodies of ``/api/v1/staleness``,
``/api/v1/clusters`` and ``/api/v1/keys`` are built together from one set of store
reads, serialised once, and served as bytes; the status page is rendered from the same
report when first asked for.  The metrics collector reads the same snapshot, so every
surface tells the same story at any moment.  A rebuild composes again only the clusters
whose inputs changed (``report_parts``): during a first pass of 1,000 clusters a few
dozen change between rebuilds, not all of them.

A background refresher rebuilds the snapshot when the fleet's change counter moves
(at most every ``min_interval`` seconds, coalescing bursts of writes) and at least every
``max_age`` seconds (ages and expiry windows move with the clock).  Without the
refresher (tests, one-shot tools), a request that finds the snapshot outdated rebuilds
it inline.  While the refresher runs, :meth:`InventoryView.served` hands the snapshot
out without any asyncio object, to the API's own thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import structlog

from sealfleet.adapters.http_api.report_parts import Composed, ReportParts, dumps
from sealfleet.adapters.store import Store, report_reads
from sealfleet.domain.staleness import ClusterFacts, RepoFacts, RunningJob, StalenessPolicy

__all__ = ["InventoryView", "Snapshot", "dumps"]

log = structlog.get_logger(__name__)

ACTIVE_LABELS = (None, "active")   # legacy-named Secrets carry no label and are loaded too
MAX_PAUSE = 3.0   # seconds the report may lag a churning inventory at most
PACE = 29         # ... and its rebuilds take at most 1/(1 + PACE) of the time (CPU)


@dataclass(frozen=True)
class Snapshot(Composed):
    """One consistent view: the report plus the serialised bodies derived from it, as
    composed, with when and at which change count."""

    built_at_monotonic: float
    changes: int
    extras: dict[str, Any] = field(default_factory=dict)


class InventoryView:
    """Builds and caches :class:`Snapshot` objects from the store."""

    def __init__(self, store: Store, *, policy: StalenessPolicy,
                 changes: Callable[[], int] = lambda: 0,
                 render_status_page: Callable[[dict[str, Any]], bytes] | None = None,
                 max_age: float = 10.0, min_interval: float = 0.5,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._store = store
        self.policy = policy
        self._changes = changes
        self._render = render_status_page
        self._max_age = max_age
        self._min_interval = min_interval
        self._clock = clock
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()
        self._refresher_running = False
        self._forced = False
        self._wakeup = asyncio.Event()
        self.compose_cpu = 0.0   # CPU seconds of the last snapshot's composition
        self._parts = ReportParts()
        self._rows = report_reads.RowCache()
        self.read_cpu = 0.0      # ... and of its reads of the inventory
        self._page: tuple[Snapshot, bytes] | None = None
        self._page_lock = asyncio.Lock()

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest snapshot without waiting (None before the first build)."""
        return self._snapshot

    def served(self) -> Snapshot | None:
        """The current snapshot while the refresher keeps it fresh (None without a
        refresher or before its first build).  It awaits nothing and touches none of the
        view's asyncio objects, so the API's own thread may call it; a None sends the
        caller to :meth:`current` on the view's loop."""
        return self._snapshot if self._refresher_running else None

    def set_policy(self, policy: StalenessPolicy) -> None:
        """Apply a reloaded policy; the next rebuild uses it (and re-reads the master key
        set, which the keystore keeps in the store)."""
        self.policy = policy
        self._forced = True
        self._wakeup.set()

    def _outdated(self, snap: Snapshot) -> bool:
        return (self._forced or snap.changes != self._changes()
                or time.monotonic() - snap.built_at_monotonic > self._max_age)

    async def current(self) -> Snapshot:
        snap = self._snapshot
        if snap is not None and (self._refresher_running or not self._outdated(snap)):
            return snap
        return await self.rebuild(only_if_outdated=True)

    async def rebuild(self, *, only_if_outdated: bool = False) -> Snapshot:
        async with self._lock:  # concurrent callers share one rebuild
            snap = self._snapshot
            if only_if_outdated and snap is not None and not self._outdated(snap):
                return snap
            changes = self._changes()
            self._forced = False
            snap = await self._build(changes)
            self._snapshot = snap
            return snap

    async def _build(self, changes: int) -> Snapshot:
        started = time.perf_counter()
        rows = await self._store.read(report_reads.report_rows, self._rows)
        clusters = [c for c in rows.clusters if not c.removed]
        records, master, usage, counts = rows.keys, rows.master, rows.usage, rows.counts
        held, malformed, adopted = rows.holdings, rows.malformed, rows.adopted
        repos = await self._repo_facts()
        git_counts = await self._store.git.state_counts()
        self.read_cpu = rows.cpu
        running = [RunningJob(id=j.id, kind=j.kind, state=j.state, actor=j.actor,
                              created_at=j.created_at, started_at=j.started_at)
                   for j in await self._store.jobs.unfinished()]
        # Composed and serialised on a thread: for 1,000 clusters that is tens of
        # milliseconds of pure Python even with most parts reused (a few hundred when all
        # are made), which on the loop stalled every API request (and every cluster) for
        # as long.  The loop still gets the GIL every few milliseconds meanwhile.

        def compose() -> Snapshot:
            cpu_started = time.thread_time()
            try:
                return composed()
            finally:
                self.compose_cpu = time.thread_time() - cpu_started

        def composed() -> Snapshot:
            inputs = []
            for cluster in clusters:
                holdings = held.get(cluster.name, [])
                inputs.append((ClusterFacts(
                    name=cluster.name, reachable=cluster.reachable,
                    last_scan_at=cluster.last_scan_at, last_error=cluster.last_error,
                    sealing_key=cluster.sealing_key,
                    sealing_key_source=cluster.sealing_key_source,
                    active_keys=tuple(fp for fp, label in holdings if label in ACTIVE_LABELS),
                    held_keys=tuple(fp for fp, _ in holdings),
                    scan_duration_ms=cluster.scan_duration_ms,
                    controller_error=cluster.controller_error,
                    controller_state=cluster.controller_state,
                    key_renew_seconds=cluster.controller_key_renew_seconds,
                    adopted_keys=tuple(adopted.get(cluster.name, ())),
                    malformed_keys=tuple(malformed.get(cluster.name, ()))),
                    (cluster.server, cluster.controller_namespace, cluster.controller_name)))
            # Only the clusters whose inputs changed are composed again (report_parts).
            made = self._parts.compose(self.policy, self._clock(), inputs, records, counts,
                                       master, usage, repos=repos, git_counts=git_counts,
                                       jobs_running=running)
            snap = Snapshot(**{f.name: getattr(made, f.name) for f in fields(Composed)},
                            built_at_monotonic=time.monotonic(), changes=changes)
            log.debug("snapshot_built", clusters=len(inputs), keys=len(made.keys),
                      recomposed=made.recomposed,
                      duration_ms=round((time.perf_counter() - started) * 1000, 1))
            return snap

        return await asyncio.to_thread(compose)

    async def status_page(self, render: Callable[[dict[str, Any]], bytes] | None = None,
                          ) -> bytes:
        """The status page of the current snapshot: rendered on first request, on a thread
        (for 1,000 clusters it is a tenth of a CPU-second, which every rebuild paid when
        it was rendered with the report, asked for or not), then kept with the snapshot."""
        snap = await self.current()
        async with self._page_lock:   # concurrent requests share one rendering
            page = self._page
            if page is not None and page[0] is snap:
                return page[1]
            renderer = render or self._render
            body = await asyncio.to_thread(renderer, snap.report) if renderer else b""
            self._page = (snap, body)
            return body

    async def _repo_facts(self) -> list[RepoFacts]:
        git = self._store.git
        files = await git.file_counts()
        unparseable = await git.unparseable_files()
        pending = await self._store.git_pending.stale_counts()
        return [RepoFacts(name=r.name, path=r.path, is_git=r.is_git, head_commit=r.head_commit,
                          head_branch=r.head_branch, last_scan_at=r.last_scan_at,
                          last_error=r.last_error, scan_duration_ms=r.scan_duration_ms,
                          files=files.get(r.name, 0),
                          unparseable_files=tuple(unparseable.get(r.name, ())),
                          pending_branches=tuple(sorted(pending.get(r.name, {}).items())))
                for r in await git.list_repos() if not r.removed]

    async def run_refresher(self, *, poll_interval: float = 0.25) -> None:
        """Keep the snapshot fresh until cancelled (run as a named task by the service)."""
        self._refresher_running = True
        try:
            while True:
                snap = self._snapshot
                if snap is None or self._outdated(snap):
                    started = time.monotonic()
                    try:
                        await self.rebuild()
                    except Exception as exc:  # keep serving the last good snapshot
                        log.warning("snapshot_rebuild_failed", error=str(exc),
                                    error_type=type(exc).__name__)
                    # While the inventory churns (a first scan, a mass reconnect),
                    # rebuild at most every min_interval and spend at most a
                    # 1/(1 + PACE) share of the CPU on it: for 1,000 clusters a rebuild is
                    # some 0.08 CPU-s (its reads and its composition, most clusters' parts
                    # reused), and at a tenth that was still 10 % of a pass's CPU, the
                    # rebuilds only more frequent as they became cheaper.  Paced by the
                    # rebuild's CPU, not its wall time: on a busy machine the wall time is
                    # mostly waiting (for a core, for the GIL), and a report paced by it
                    # lagged the fleet by tens of seconds.  And never more than MAX_PAUSE
                    # behind, whatever it costs.
                    spent = min(time.monotonic() - started, self.compose_cpu + self.read_cpu)
                    await asyncio.sleep(min(max(self._min_interval, PACE * spent), MAX_PAUSE))
                    continue
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(poll_interval):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass
        finally:
            self._refresher_running = False
