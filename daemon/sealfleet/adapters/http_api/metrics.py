"""Prometheus metrics, read from the current inventory snapshot at scrape time.

A custom collector rather than gauges updated from all over the daemon: every sample of
one scrape comes from the same snapshot, so "stale secrets" and "sealing key age" can
never disagree with ``/api/v1/staleness`` or with each other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from sealfleet.adapters.http_api.snapshot import Snapshot
from sealfleet.domain.staleness import STATE_KEYS


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class InventoryCollector(Collector):
    """Turns the latest :class:`Snapshot` into metric families."""

    def __init__(self, snapshot: Callable[[], Snapshot | None],
                 attribution_backlog: Callable[[], int | None] = lambda: None) -> None:
        self._snapshot = snapshot
        self._backlog = attribution_backlog

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
        if snap is None:
            return
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
        yield from (reachable, age, stale, expiry, drift, duration, last_scan, secrets)


def make_registry(collector: InventoryCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
