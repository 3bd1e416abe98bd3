"""The pure fleet staleness report: sealing key, staleness, drift, counts."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from sealfleet.domain.staleness import (
    ClusterFacts,
    SecretState,
    StalenessPolicy,
    build_report,
    findings,
    iso,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
POLICY = StalenessPolicy(key_renew_period=30 * DAY, cert_expiry_warning=30 * DAY)


@dataclass(frozen=True)
class Key:
    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    state: str = "active"


OLD = Key("SHA256:old", NOW - 90 * DAY, NOW + 3000 * DAY)
NEW = Key("SHA256:new", NOW - 2 * DAY, NOW + 3000 * DAY)
EXPIRING = Key("SHA256:exp", NOW - 2 * DAY, NOW + 10 * DAY)
EXPIRED = Key("SHA256:dead", NOW - 2 * DAY, NOW - DAY)
KEYS = [OLD, NEW, EXPIRING, EXPIRED]


def report_for(cluster: ClusterFacts, *, master: tuple[str, ...] = (),
               counts: dict[str, dict[SecretState, int]] | None = None) -> dict[str, Any]:
    return build_report(POLICY, NOW, [cluster], KEYS, counts or {}, master)


def test_served_certificate_is_the_sealing_key() -> None:
    cluster = ClusterFacts("a", True, sealing_key=OLD.fingerprint, sealing_key_source="cert.pem",
                           active_keys=(OLD.fingerprint, NEW.fingerprint))
    sealing = report_for(cluster)["clusters"][0]["sealing_key"]
    assert sealing["fingerprint"] == OLD.fingerprint
    assert sealing["source"] == "cert.pem"
    assert sealing["age_seconds"] == 90 * 86400
    assert sealing["stale"] is True
    assert sealing["reasons"] == ["older_than_renew_period"]
    assert sealing["not_before"] == iso(OLD.not_before)


def test_fallback_is_newest_active_not_before() -> None:
    cluster = ClusterFacts("a", True, active_keys=(OLD.fingerprint, NEW.fingerprint))
    sealing = report_for(cluster)["clusters"][0]["sealing_key"]
    assert (sealing["fingerprint"], sealing["source"]) == (NEW.fingerprint, "newest-active")
    assert sealing["stale"] is False
    assert sealing["reasons"] == []


def test_expiring_and_expired_certificates_are_stale() -> None:
    for key, reason in ((EXPIRING, "certificate_expiring"), (EXPIRED, "certificate_expired")):
        cluster = ClusterFacts("a", True, sealing_key=key.fingerprint,
                               active_keys=(key.fingerprint,))
        sealing = report_for(cluster)["clusters"][0]["sealing_key"]
        assert sealing["stale"] is True
        assert sealing["reasons"] == [reason]


def test_unknown_sealing_key_is_reported_without_guessing() -> None:
    never_seen = report_for(ClusterFacts("a", False, last_error="connection refused"))
    cluster = never_seen["clusters"][0]
    assert cluster["sealing_key"] is None
    assert cluster["last_error"] == "connection refused"
    assert cluster["reachable"] is False
    uncatalogued = report_for(ClusterFacts("a", True, sealing_key="SHA256:nope"))
    assert uncatalogued["clusters"][0]["sealing_key"]["stale"] is None


def test_drift_against_master_key_set() -> None:
    both = (OLD.fingerprint, NEW.fingerprint)
    in_sync = ClusterFacts("a", True, sealing_key=NEW.fingerprint, active_keys=both)
    assert report_for(in_sync, master=both)["clusters"][0]["drift"] is False
    missing = ClusterFacts("a", True, sealing_key=NEW.fingerprint, active_keys=(NEW.fingerprint,))
    cluster = report_for(missing, master=both)["clusters"][0]
    assert cluster["drift"] is True
    assert cluster["drift_detail"]["missing"] == [OLD.fingerprint]
    foreign_sealing = ClusterFacts("a", True, sealing_key=EXPIRING.fingerprint, active_keys=both)
    detail = report_for(foreign_sealing, master=both)["clusters"][0]["drift_detail"]
    assert detail["sealing_key_outside_master_set"] is True
    assert report_for(in_sync)["clusters"][0]["drift"] is None  # no master set: no check
    assert report_for(ClusterFacts("a", False), master=both)["clusters"][0]["drift"] is None


def test_counts_and_shape() -> None:
    clusters = [ClusterFacts("b", True, sealing_key=NEW.fingerprint,
                             active_keys=(NEW.fingerprint,)),
                ClusterFacts("a", False)]
    counts = {"b": {SecretState.CURRENT: 3, SecretState.STALE: 2},
              "a": {SecretState.UNKNOWN: 1}}
    report = build_report(POLICY, NOW, clusters, KEYS, counts, ())
    assert set(report) >= {"generated_at", "policy", "fleet", "clusters"}
    assert report["generated_at"] == "2026-06-01T12:00:00Z"
    assert [c["name"] for c in report["clusters"]] == ["a", "b"]
    assert report["fleet"]["clusters"] == 2
    assert report["fleet"]["reachable"] == 1
    assert report["fleet"]["sealed_secrets"] == {
        "total": 6, "current": 3, "stale": 2, "compromised": 0, "unknown": 1, "failing": 0}
    for cluster in report["clusters"]:
        assert set(cluster) >= {"name", "reachable", "last_scan_at", "last_error", "sealing_key",
                                "keys", "drift", "sealed_secrets"}
    assert findings(report) == {"stale", "unknown"}
    json.dumps(report)


def test_findings_from_keys_alone() -> None:
    stale_key = ClusterFacts("a", True, sealing_key=OLD.fingerprint, active_keys=(OLD.fingerprint,))
    assert findings(report_for(stale_key)) == {"stale"}
    drifting = ClusterFacts("a", True, sealing_key=NEW.fingerprint, active_keys=(NEW.fingerprint,))
    assert findings(report_for(drifting, master=(OLD.fingerprint,))) == {"drift"}
    compromised = Key("SHA256:bad", NOW - DAY, NOW + 3000 * DAY, state="compromised")
    cluster = ClusterFacts("a", True, sealing_key="SHA256:bad", active_keys=("SHA256:bad",))
    assert findings(build_report(POLICY, NOW, [cluster], [compromised], {}, ())) == {"compromised"}


state_counts = st.dictionaries(st.sampled_from(list(SecretState)), st.integers(0, 10_000))


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), state_counts,
                       max_size=6))
def test_fleet_totals_are_the_sum_of_cluster_totals(
        counts: dict[str, dict[SecretState, int]]) -> None:
    clusters = [ClusterFacts(name, True) for name in counts]
    report = build_report(POLICY, NOW, clusters, KEYS, counts, ())
    fleet = report["fleet"]["sealed_secrets"]
    for state in fleet:
        assert fleet[state] == sum(c["sealed_secrets"][state] for c in report["clusters"])
    assert fleet["total"] == sum(sum(c.values()) for c in counts.values())


@given(age_days=st.integers(0, 400), lifetime_days=st.integers(1, 4000),
       renew=st.integers(1, 100), warning=st.integers(0, 100))
def test_stale_iff_too_old_or_expiring(age_days: int, lifetime_days: int, renew: int,
                                       warning: int) -> None:
    key = Key("SHA256:k", NOW - age_days * DAY, NOW - age_days * DAY + lifetime_days * DAY)
    policy = StalenessPolicy(key_renew_period=renew * DAY, cert_expiry_warning=warning * DAY)
    cluster = ClusterFacts("a", True, sealing_key=key.fingerprint, active_keys=(key.fingerprint,))
    sealing = build_report(policy, NOW, [cluster], [key], {}, ())["clusters"][0]["sealing_key"]
    expected = age_days > renew or key.not_after - NOW <= warning * DAY
    assert sealing["stale"] is expected
    assert sealing["age_seconds"] == age_days * 86400
