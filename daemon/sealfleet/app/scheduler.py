"""Jobs nobody asks for: renewal by policy and keeping the fleet in step (master mode).

Every ``TICK`` seconds, in master mode:

- when the newest master key is older than ``[policy] key_renew_period`` (counted from
  its NotBefore, as the controller counts its own renewal), a ``renewal`` job;
- else, with ``[fleet] auto_relabel`` on, when a compromised key whose relabel a reseal
  skipped for in-cluster objects (GitOps-managed ones, resealed on a pending branch) is
  no longer needed by any (the branch was merged and applied), a ``relabel`` job
  (``jobs/relabel_job.due``; the rule is ``domain/relabel_due``: once per such skip, a
  retry only after a full relist);
- else, when a reachable cluster drifts from the master key set (a cluster that came
  back, a key Secret deleted by hand, a controller that renewed on its own), a
  ``key_sync`` job, at most once per ``SYNC_SPACING`` so a cluster that keeps failing
  does not flood the journal.  Drift no sync would change is not synced for: a
  controller's own renewal setting, and a compromised key the cluster keeps loaded
  because something it must open is still sealed with it (a sync keeps exactly those:
  ``cluster_sync``; the reseal and, after a merge, the relabel job deal with them).
  Without that, a Flux-managed object waiting for its branch to be merged meant a
  sync that changed nothing every ``SYNC_SPACING``, for as long as the merge took.

Never while another key job is unfinished (nor a relabel while a reseal is: its own
relabel steps come last): those run one after another anyway, and the next tick sees
what they changed.  The scheduler only asks the runner, which journals
and runs the job exactly as if a user had asked (actor ``scheduler``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import JobRecord, JsonObject
from sealfleet.app.config import Settings
from sealfleet.app.jobs import compromised_keys, relabel_job
from sealfleet.app.jobs.cluster_sync import repo_counts_for
from sealfleet.domain.jobs import JobKind
from sealfleet.domain.keys import most_recent_key
from sealfleet.domain.planning.key_sync import DriftReason
from sealfleet.errors import FleetError, RefusedError

log = structlog.get_logger(__name__)

_UNFIXABLE = frozenset({DriftReason.CONTROLLER_SELF_RENEWAL.value})   # no sync fixes these

TICK = 30.0                                  # seconds between looks
SYNC_SPACING = dt.timedelta(minutes=5)       # at most one scheduled sync this often
_KEY_JOBS = frozenset({JobKind.KEY_SYNC, JobKind.RENEWAL, JobKind.COMPROMISE,
                       JobKind.RETIRE, JobKind.ADOPT, JobKind.RELABEL})


class Submitter(Protocol):
    async def submit(self, kind: str, params: JsonObject, *, actor: str) -> JobRecord: ...


class Scheduler:
    def __init__(self, runner: Submitter, store: Store, *,
                 settings: Callable[[], Settings],
                 report: Callable[[], Mapping[str, Any] | None],
                 attribution_backlog: Callable[[], int] = lambda: 0,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._runner = runner
        self._store = store
        self._settings = settings
        self._report = report
        self._backlog = attribution_backlog
        self._clock = clock
        self._last_sync: dt.datetime | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                await self.tick()
            except FleetError as error:     # the store is busy: look again next tick
                log.warning("scheduler_tick_failed", error=str(error))

    async def tick(self) -> JobRecord | None:
        """Submit what is due, if anything (returns the job)."""
        settings = self._settings()
        if not settings.fleet.master:
            return None
        unfinished = {JobKind(j.kind) for j in await self._store.jobs.unfinished()}
        if unfinished & _KEY_JOBS:
            return None
        now = self._clock()
        records = {r.fingerprint: r for r in await self._store.keys.list_keys()}
        master = [records[f] for f in await self._store.keys.fleet_master() if f in records]
        newest = most_recent_key(master)
        if newest is None:
            return None     # no master key yet: `sealfleet keys sync` makes the first one
        if now - newest.not_before >= settings.policy.key_renew_period:
            log.info("renewal_due", newest=newest.fingerprint,
                     age_days=(now - newest.not_before).days)
            return await self._runner.submit(JobKind.RENEWAL, {}, actor="scheduler")
        if settings.fleet.auto_relabel and JobKind.RESEAL not in unfinished:
            relabel = await self._relabel(settings, now)
            if relabel is not None:
                return relabel
        drifting = self._drifting()
        if drifting:
            drifting = self._drifting(await self._kept_loaded(settings))
        if drifting and (self._last_sync is None or now - self._last_sync >= SYNC_SPACING):
            self._last_sync = now
            log.info("sync_due", clusters=drifting)
            return await self._runner.submit(JobKind.KEY_SYNC, {}, actor="scheduler")
        return None

    async def _relabel(self, settings: Settings, now: dt.datetime) -> JobRecord | None:
        due = await relabel_job.due(self._store, settings, unattributed=self._backlog(),
                                    now=now)
        if not due:
            return None
        log.info("relabel_due", fingerprints=due)
        try:
            return await self._runner.submit(JobKind.RELABEL, {"fingerprints": [*due]},
                                             actor="scheduler")
        except RefusedError as refused:   # the keys went meanwhile: nothing to do
            log.info("relabel_refused", fingerprints=due, reason=str(refused))
            return None

    async def _kept_loaded(self, settings: Settings) -> dict[str, set[str]]:
        """Per cluster, the compromised keys a sync keeps loaded: an inventoried object
        of the cluster, or a document of a repository that counts for it, is still
        sealed with them (read only while something drifts)."""
        kept: dict[str, set[str]] = defaultdict(set)
        for use in await compromised_keys.still_sealing(self._store):
            for cluster, _, _ in use.cluster_objects:
                kept[cluster].add(use.fingerprint)
            repos = {repo for repo, _, _ in use.git_documents}
            for repo in settings.repos:
                if repo.name in repos:
                    for cluster_settings in settings.clusters:
                        if repo_counts_for(repo, cluster_settings.name):
                            kept[cluster_settings.name].add(use.fingerprint)
        return kept

    def _drifting(self, kept_loaded: Mapping[str, set[str]] | None = None) -> list[str]:
        """Reachable clusters whose drift a sync can fix: a controller's own renewal
        setting alone is reported, but no sync changes a Deployment's flags (a sync
        every SYNC_SPACING for it would only fill the journal); nor does it unload a
        key of *kept_loaded* (None: not known yet, count them)."""
        report = self._report()
        if report is None:
            return []

        def fixable(cluster: str, reason: Mapping[str, Any]) -> bool:
            if reason.get("reason") in _UNFIXABLE:
                return False
            return kept_loaded is None or reason.get("reason") != DriftReason.EXTRA_ACTIVE_KEY \
                or reason.get("fingerprint") not in kept_loaded.get(cluster, set())

        return sorted(c["name"] for c in report.get("clusters", ())
                      if c.get("drift") and c.get("reachable") and any(
                          fixable(c["name"], r) for r in c.get("drift_reasons") or [{}]))
