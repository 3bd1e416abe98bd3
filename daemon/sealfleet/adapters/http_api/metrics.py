"""Prometheus metrics, read from the current inventory snapshot at scrape time.

A custom collector rather than gauges updated from all over the daemon: every sample of
one scrape comes from the same snapshot, so "stale secrets" and "sealing key age" can
never disagree with ``/api/v1/staleness`` or with each other.

What the snapshot does not hold (the job journal's tallies, the newest backup file) is
read by :meth:`ScrapeInputs.refresh` just before the collector runs: one grouped query
and one directory listing per scrape, off the event loop where they block.  The alert
rules in ``config/sealfleet.rules.yml`` are written against these names.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from sealfleet.adapters.http_api.snapshot import Snapshot
from sealfleet.adapters.store.records import JobTally
from sealfleet.domain import controller_state
from sealfleet.domain.attribution import RsaWork
from sealfleet.domain.jobs import JobKind, JobState
from sealfleet.domain.staleness import STATE_KEYS
from sealfleet.errors import StoreError

log = structlog.get_logger(__name__)

RENEWAL_KIND = JobKind.RENEWAL.value
KEY_SYNC_KIND = JobKind.KEY_SYNC.value
FINISHED_STATES = tuple(state.value for state in JobState if state.finished)
IN_PROGRESS_STATES = tuple(state.value for state in JobState if not state.finished)


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def newest_file_timestamp(directory: Path) -> Callable[[], float | None]:
    """For ``[backup] dir``: the newest regular file's mtime, 0.0 when there is none
    (or no directory yet).  Blocking: :class:`ScrapeInputs` runs it in a thread."""
    def newest() -> float | None:
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return 0.0
        times = [0.0]
        for entry in entries:
            # A file removed between the listing and its stat (a pruned backup) is gone.
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    times.append(entry.stat(follow_symlinks=False).st_mtime)
        return max(times)
    return newest


class ScrapeInputs:
    """What a scrape needs besides the snapshot, read (asynchronously) before collecting.

    A failed read keeps the previous answer and logs once per failure streak: a locked
    database must not turn "renewal failing" into "no data", nor fail the whole scrape.
    """

    def __init__(self, *, job_tallies: Callable[[], Awaitable[Sequence[JobTally]]] | None = None,
                 last_backup: Callable[[], float | None] | None = None) -> None:
        self._job_tallies = job_tallies
        self._last_backup = last_backup
        self.tallies: tuple[JobTally, ...] | None = None
        self.last_backup: float | None = None
        self._failing: set[str] = set()

    async def refresh(self) -> None:
        if self._job_tallies is not None:
            try:
                self.tallies = tuple(await self._job_tallies())
            except StoreError as exc:
                self._failed("job_journal", exc)
            else:
                self._recovered("job_journal")
        if self._last_backup is not None:
            try:
                self.last_backup = await asyncio.to_thread(self._last_backup)
            except OSError as exc:
                self.last_backup = None   # unknown, not "no backup": the alert must not guess
                self._failed("backup_dir", exc)
            else:
                self._recovered("backup_dir")

    def _failed(self, source: str, exc: Exception) -> None:
        if source not in self._failing:
            self._failing.add(source)
            log.warning("metrics_input_unavailable", source=source, error=str(exc),
                        error_type=type(exc).__name__)

    def _recovered(self, source: str) -> None:
        if source in self._failing:
            self._failing.discard(source)
            log.info("metrics_input_recovered", source=source)


def _job_families(tallies: Sequence[JobTally]) -> Iterator[Metric]:
    finished = CounterMetricFamily("sealfleet_jobs", "Journalled jobs that finished, by kind "
                                   "and outcome", labels=["kind", "state"])
    in_progress = GaugeMetricFamily("sealfleet_jobs_in_progress",
                                    "Journalled jobs pending or running, by kind",
                                    labels=["kind", "state"])
    last = GaugeMetricFamily("sealfleet_last_job_timestamp_seconds",
                             "When the newest job of the kind finished in the state "
                             "(Unix time; 0 when none has)", labels=["kind", "state"])
    counts = {(t.kind, t.state): t for t in tallies}
    # Every state of every kind seen, 0 when empty: a first failure then shows as an
    # increase, and "last failure newer than last success" compares two real series.
    for kind in sorted({t.kind for t in tallies}):
        for state in FINISHED_STATES:
            tally = counts.get((kind, state))
            finished.add_metric([kind, state], tally.count if tally else 0)
            last.add_metric([kind, state], tally.last_at.timestamp() if tally else 0)
        for state in IN_PROGRESS_STATES:
            tally = counts.get((kind, state))
            in_progress.add_metric([kind, state], tally.count if tally else 0)
    yield from (finished, in_progress, last)
    for kind, name, what in ((RENEWAL_KIND, "sealfleet_last_key_renewal_timestamp_seconds",
                              "key renewal"),
                             (KEY_SYNC_KIND, "sealfleet_last_key_sync_timestamp_seconds",
                              "key sync")):
        tally = counts.get((kind, "succeeded"))
        family = GaugeMetricFamily(name, f"When the last {what} job succeeded (Unix time; "
                                   "0 when none has)")
        family.add_metric([], tally.last_at.timestamp() if tally else 0)
        yield family


def _key_families(snap: Snapshot) -> Iterator[Metric]:
    now = _epoch(snap.report["generated_at"]) or 0.0
    age = GaugeMetricFamily("sealfleet_key_age_seconds",
                            "Age of each key known to the fleet (since NotBefore)",
                            labels=["fingerprint", "state"])
    not_before = GaugeMetricFamily("sealfleet_key_not_before_timestamp_seconds",
                                   "NotBefore of each key known to the fleet (Unix time)",
                                   labels=["fingerprint", "state"])
    for key in snap.keys:
        start = _epoch(key["not_before"])
        if start is None:
            continue
        labels = [key["fingerprint"], key["state"]]
        age.add_metric(labels, max(0.0, now - start))
        not_before.add_metric(labels, start)
    yield from (age, not_before)


def _rsa_families(work: RsaWork) -> Iterator[Metric]:
    # Beside the items attributed, the decrypts say how well the likeliest-key order
    # works: one decrypt per item is the floor, more means wrong first guesses.
    tried = CounterMetricFamily("sealfleet_rsa_decrypts",
                                "RSA trial decrypts made to attribute items to keys")
    tried.add_metric([], work.decrypts)
    # Busy far above CPU: the RSA workers hold jobs but wait (for a core).
    cpu = CounterMetricFamily("sealfleet_rsa_cpu_seconds",
                              "CPU time the RSA workers spent attributing items")
    cpu.add_metric([], work.cpu_seconds)
    busy = CounterMetricFamily("sealfleet_rsa_busy_seconds",
                               "Wall time the RSA workers spent in attribution jobs")
    busy.add_metric([], work.busy_seconds)
    deaths = CounterMetricFamily("sealfleet_rsa_worker_deaths",
                                 "RSA worker processes that died under a job (each is "
                                 "started again)")
    deaths.add_metric([], work.worker_deaths)
    yield from (tried, cpu, busy, deaths)


def _store_families(writes: int, transactions: int) -> Iterator[Metric]:
    # Their ratio is how much group commit shares: near 1, every write paid its own
    # COMMIT (a writer thread idle between writes).
    written = CounterMetricFamily("sealfleet_store_writes",
                                  "Write calls the store ran (each atomic on its own)")
    written.add_metric([], writes)
    committed = CounterMetricFamily("sealfleet_store_write_transactions",
                                    "SQLite transactions those writes took (group commit)")
    committed.add_metric([], transactions)
    yield from (written, committed)


class InventoryCollector(Collector):
    """Turns the latest :class:`Snapshot` (and the :class:`ScrapeInputs`) into metrics."""

    def __init__(self, snapshot: Callable[[], Snapshot | None],
                 attribution_backlog: Callable[[], int | None] = lambda: None,
                 inputs: ScrapeInputs | None = None, *,
                 rsa_work: Callable[[], RsaWork | None] = lambda: None,
                 store_writes: Callable[[], tuple[int, int] | None] = lambda: None,
                 ) -> None:
        self._snapshot = snapshot
        self._backlog = attribution_backlog
        self._rsa_work = rsa_work
        self._store_writes = store_writes
        self._inputs = inputs or ScrapeInputs()

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        up = GaugeMetricFamily("sealfleet_inventory_snapshot_available",
                               "1 when an inventory snapshot has been built")
        up.add_metric([], 0 if snap is None else 1)
        yield up
        backlog = self._backlog()
        if backlog is not None:
            fam = GaugeMetricFamily("sealfleet_attribution_backlog",
                                    "Items waiting for key attribution (RSA trial decrypt)")
            fam.add_metric([], backlog)
            yield fam
        work = self._rsa_work()
        if work is not None:
            yield from _rsa_families(work)
        writes = self._store_writes()
        if writes is not None:
            yield from _store_families(*writes)
        if self._inputs.tallies is not None:
            yield from _job_families(self._inputs.tallies)
        if self._inputs.last_backup is not None:
            backup = GaugeMetricFamily("sealfleet_last_backup_timestamp_seconds",
                                       "mtime of the newest file in the backup directory "
                                       "(Unix time; 0 when there is none)")
            backup.add_metric([], self._inputs.last_backup)
            yield backup
        if snap is None:
            return
        yield from self._report_families(snap)
        yield from _key_families(snap)

    def _report_families(self, snap: Snapshot) -> Iterator[Metric]:
        report = snap.report
        generated = GaugeMetricFamily("sealfleet_report_generated_timestamp_seconds",
                                      "When the staleness report was built (Unix time)")
        generated.add_metric([], _epoch(report["generated_at"]) or 0)
        yield generated

        reachable = GaugeMetricFamily("sealfleet_cluster_reachable",
                                      "1 when the cluster answered its last scan",
                                      labels=["cluster"])
        age = GaugeMetricFamily("sealfleet_sealing_key_age_seconds",
                                "Age of the cluster's sealing key (since NotBefore)",
                                labels=["cluster", "fingerprint"])
        stale = GaugeMetricFamily("sealfleet_sealing_key_stale",
                                  "1 when the sealing key is older than key_renew_period or "
                                  "its certificate expires within the warning window",
                                  labels=["cluster"])
        expiry = GaugeMetricFamily("sealfleet_sealing_cert_expiry_timestamp_seconds",
                                   "NotAfter of the sealing certificate (Unix time)",
                                   labels=["cluster"])
        drift = GaugeMetricFamily("sealfleet_cluster_drift",
                                  "1 when the cluster's keys differ from the fleet master set",
                                  labels=["cluster"])
        duration = GaugeMetricFamily("sealfleet_scan_duration_seconds",
                                     "Duration of the cluster's last full scan",
                                     labels=["cluster"])
        last_scan = GaugeMetricFamily("sealfleet_last_scan_timestamp_seconds",
                                      "When the cluster was last scanned (Unix time)",
                                      labels=["cluster"])
        secrets = GaugeMetricFamily("sealfleet_sealed_secrets",
                                    "SealedSecrets by staleness state",
                                    labels=["cluster", "state"])
        controller_error = GaugeMetricFamily(
            "sealfleet_controller_error", "1 when the cluster's sealed-secrets controller "
            "cannot be asked (no ready replica, crash loop, no Service)", labels=["cluster"])
        # Both read the probe's structured controller_state, never the error's wording.
        crashing = GaugeMetricFamily(
            "sealfleet_controller_crashlooping", "1 when the controller has no running Pod "
            "(its Deployment has no ready replica: crash loop, start-up, scaled to 0)",
            labels=["cluster"])
        malformed = GaugeMetricFamily(
            "sealfleet_malformed_key_secrets", "Secrets that look like key Secrets but are "
            "not keys (never used as keys)", labels=["cluster"])
        for cluster in report["clusters"]:
            name = cluster["name"]
            reachable.add_metric([name], 1 if cluster["reachable"] else 0)
            sealing = cluster["sealing_key"]
            if sealing and sealing["age_seconds"] is not None:
                age.add_metric([name, sealing["fingerprint"]], sealing["age_seconds"])
                stale.add_metric([name], 1 if sealing["stale"] else 0)
                not_after = _epoch(sealing["not_after"])
                if not_after is not None:
                    expiry.add_metric([name], not_after)
            if cluster["drift"] is not None:
                drift.add_metric([name], 1 if cluster["drift"] else 0)
            if cluster["scan_duration_ms"] is not None:
                duration.add_metric([name], cluster["scan_duration_ms"] / 1000)
            scanned = _epoch(cluster["last_scan_at"])
            if scanned is not None:
                last_scan.add_metric([name], scanned)
            for state in STATE_KEYS[1:]:
                secrets.add_metric([name, state], cluster["sealed_secrets"][state])
            state = cluster.get("controller_state")
            controller_error.add_metric([name], 1 if controller_state.is_problem(state) else 0)
            crashing.add_metric([name], 1 if controller_state.is_down(state) else 0)
            malformed.add_metric([name], len(cluster.get("malformed_key_secrets") or ()))
        yield from (reachable, age, stale, expiry, drift, duration, last_scan, secrets,
                    controller_error, crashing, malformed)
        yield from _repo_metrics(report.get("repos", ()))


def _repo_metrics(repos: list[dict[str, Any]] | tuple[()]) -> Iterator[Metric]:
    """The Git side: documents by state, unparseable files and scan times per repo."""
    documents = GaugeMetricFamily("sealfleet_git_sealed_secrets",
                                  "SealedSecret documents found in a GitOps repo, by state",
                                  labels=["repo", "state"])
    unparseable = GaugeMetricFamily("sealfleet_git_unparseable_files",
                                    "Files of a GitOps repo that do not parse (skipped)",
                                    labels=["repo"])
    scanned = GaugeMetricFamily("sealfleet_git_last_scan_timestamp_seconds",
                                "When the repo's working tree was last scanned (Unix time)",
                                labels=["repo"])
    failing = GaugeMetricFamily("sealfleet_git_scan_failing",
                                "1 when the repo's last scan failed or was skipped",
                                labels=["repo"])
    for repo in repos:
        name = repo["name"]
        for state in STATE_KEYS[1:]:
            documents.add_metric([name, state], repo["sealed_secrets"][state])
        unparseable.add_metric([name], repo["unparseable_files_total"])
        failing.add_metric([name], 1 if repo["last_error"] else 0)
        when = _epoch(repo["last_scan_at"])
        if when is not None:
            scanned.add_metric([name], when)
    yield from (documents, unparseable, scanned, failing)


def make_registry(collector: InventoryCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
