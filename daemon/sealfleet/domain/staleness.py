"""Staleness: how old are a cluster's keys, and which SealedSecrets use which.

Pure functions of (policy, inventory facts).  ``classify`` is what the cluster
workers store per SealedSecret; the fleet report is built from those states.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sealfleet.domain.drift import cluster_drift
from sealfleet.domain.keys import SealingKeySource, most_recent_key


class SecretState(enum.StrEnum):
    """Per-SealedSecret verdict, most severe first (the first that applies wins)."""

    COMPROMISED = "compromised"  # an item is sealed with a key marked compromised
    FAILING = "failing"          # the controller reports Synced=False
    UNKNOWN = "unknown"          # an item opens with no known key
    STALE = "stale"              # an item is sealed with a key older than the sealing key
    CURRENT = "current"          # every item is sealed with the cluster's sealing key


@dataclass(frozen=True)
class KeyContext:
    """What a cluster's SealedSecrets are judged against: the fingerprint the cluster
    seals with now (None until known) and the fleet's compromised keys."""

    sealing_key: str | None
    compromised: frozenset[str] = frozenset()


def classify(item_keys: Sequence[str | None], context: KeyContext, *, synced: bool | None,
             malformed: bool = False, verified: bool | None = None) -> SecretState:
    """Classify one SealedSecret; the one place its state is decided.

    *item_keys* holds, per item, the fingerprint of the key that sealed it (None when
    no known key opens it).  When the sealing key is not known yet, attributed items
    count as current rather than guessing.  *synced* is the controller's Synced
    condition (None when unreported).  A *malformed* object is ``unknown`` unless an
    item it still has is sealed with a compromised key.  *verified* is the controller's
    ``/v1/verify`` answer for objects no known key opens (least-privilege mode): False
    means the controller itself cannot decrypt it, so it is ``failing``.
    """
    if any(key is not None and key in context.compromised for key in item_keys):
        return SecretState.COMPROMISED
    if malformed:
        return SecretState.UNKNOWN
    if synced is False:
        return SecretState.FAILING
    if any(key is None for key in item_keys):
        return SecretState.FAILING if verified is False else SecretState.UNKNOWN
    sealing_key = context.sealing_key
    if sealing_key is not None and any(key != sealing_key for key in item_keys):
        return SecretState.STALE
    return SecretState.CURRENT


# --------------------------------------------------------------------------------------
# The fleet report: what GET /api/v1/staleness, /metrics, the status page and the CLI show.
# --------------------------------------------------------------------------------------

# The order states are shown in (CLI, status page, OpenAPI, metrics): good news first.
SHOWN_STATES: tuple[SecretState, ...] = (SecretState.CURRENT, SecretState.STALE,
                                         SecretState.COMPROMISED, SecretState.UNKNOWN,
                                         SecretState.FAILING)
STATE_KEYS: tuple[str, ...] = ("total", *(s.value for s in SHOWN_STATES))
FINDINGS: tuple[str, ...] = ("stale", "drift", "compromised", "unknown")


@dataclass(frozen=True)
class StalenessPolicy:
    """When a sealing key counts as stale (``[policy]`` of the config)."""

    key_renew_period: dt.timedelta
    cert_expiry_warning: dt.timedelta


class KeyFacts(Protocol):
    """What the report needs of a known key (``KeyRecord`` satisfies it)."""

    @property
    def fingerprint(self) -> str: ...
    @property
    def not_before(self) -> dt.datetime: ...
    @property
    def not_after(self) -> dt.datetime: ...
    @property
    def state(self) -> str: ...


@dataclass(frozen=True)
class ClusterFacts:
    """What the inventory knows about one cluster."""

    name: str
    reachable: bool | None
    last_scan_at: dt.datetime | None = None
    last_error: str | None = None
    sealing_key: str | None = None          # fingerprint of the cert served at /v1/cert.pem
    sealing_key_source: str | None = None   # "cert.pem" | "newest-active" | None
    active_keys: tuple[str, ...] = ()       # fingerprints the controller loads (label active)
    held_keys: tuple[str, ...] = ()         # every key Secret in the controller namespace
    scan_duration_ms: int | None = None
    controller_error: str | None = None     # why the controller cannot be asked, if so
    malformed_keys: tuple[tuple[str, str], ...] = ()  # (Secret name, reason): not keys
    controller_state: str | None = None     # domain.controller_state value; None: not probed
    key_renew_seconds: int | None = None    # its --key-renew-period (0: off; None: unknown)
    adopted_keys: tuple[str, ...] = ()      # adopted from it, still wanted there


@dataclass(frozen=True)
class RunningJob:
    """An unfinished job, as the fleet view lists it."""

    id: str
    kind: str
    state: str
    actor: str
    created_at: dt.datetime
    started_at: dt.datetime | None = None


@dataclass(frozen=True)
class RepoFacts:
    """What the inventory knows about one GitOps working tree (``[[repos]]``)."""

    name: str
    path: str
    is_git: bool | None = None
    head_commit: str | None = None
    head_branch: str | None = None
    last_scan_at: dt.datetime | None = None
    last_error: str | None = None
    scan_duration_ms: int | None = None
    files: int = 0                                       # files that matched its paths
    unparseable_files: tuple[tuple[str, str], ...] = ()  # (path, reason)
    pending_branches: tuple[tuple[str, int], ...] = ()   # (reseal branch, documents not current)


# The report lists this many unparseable files per repo (the store holds them all).
MAX_LISTED_UNPARSEABLE = 100


def _repo_report(repo: RepoFacts, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "name": repo.name, "path": repo.path, "is_git": repo.is_git,
        "head_commit": repo.head_commit, "head_branch": repo.head_branch,
        "last_scan_at": iso(repo.last_scan_at), "last_error": repo.last_error,
        "scan_duration_ms": repo.scan_duration_ms, "files": repo.files,
        "unparseable_files": [{"path": path, "reason": reason} for path, reason
                              in repo.unparseable_files[:MAX_LISTED_UNPARSEABLE]],
        "unparseable_files_total": len(repo.unparseable_files),
        "sealed_secrets": counts,
        "pending_branches": [{"name": name, "documents": documents}
                             for name, documents in repo.pending_branches],
    }


def iso(moment: dt.datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, second precision."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def resolve_sealing_key(cluster: ClusterFacts,
                        keys: Mapping[str, KeyFacts]) -> tuple[str | None, str | None]:
    """(fingerprint, source): the served certificate, else the newest active NotBefore."""
    if cluster.sealing_key:
        return cluster.sealing_key, cluster.sealing_key_source or SealingKeySource.CERT_PEM
    newest = most_recent_key(keys[f] for f in cluster.active_keys if f in keys)
    if newest is None:
        return None, None
    return newest.fingerprint, SealingKeySource.NEWEST_ACTIVE


def sealing_key_verdict(key: KeyFacts, policy: StalenessPolicy,
                        now: dt.datetime) -> tuple[bool, list[str]]:
    """Whether a sealing key is stale, and why (stable reason codes)."""
    reasons = []
    if now - key.not_before > policy.key_renew_period:
        reasons.append("older_than_renew_period")
    if now >= key.not_after:
        reasons.append("certificate_expired")
    elif key.not_after - now <= policy.cert_expiry_warning:
        reasons.append("certificate_expiring")
    return bool(reasons), reasons


def state_counts(states: Mapping[SecretState, int] | Mapping[str, int] | None) -> dict[str, int]:
    out = dict.fromkeys(STATE_KEYS, 0)
    for state, n in (states or {}).items():
        name = state.value if isinstance(state, SecretState) else str(state)
        if name in out and name != "total":
            out[name] += int(n)
            out["total"] += int(n)
    return out


def cluster_report(cluster: ClusterFacts, policy: StalenessPolicy, now: dt.datetime,
                    keys: Mapping[str, KeyFacts], counts: dict[str, int],
                    master: frozenset[str]) -> dict[str, Any]:
    fingerprint, source = resolve_sealing_key(cluster, keys)
    sealing: dict[str, Any] | None = None
    if fingerprint is not None:
        key = keys.get(fingerprint)
        sealing = {"fingerprint": fingerprint, "source": source, "not_before": None,
                   "not_after": None, "age_seconds": None, "stale": None, "reasons": [],
                   "state": None}
        if key is not None:
            stale, reasons = sealing_key_verdict(key, policy, now)
            sealing.update(not_before=iso(key.not_before), not_after=iso(key.not_after),
                           age_seconds=max(0, int((now - key.not_before).total_seconds())),
                           stale=stale, reasons=reasons, state=key.state)
    held = sorted(set(cluster.held_keys) | set(cluster.active_keys))
    active = set(cluster.active_keys)
    key_list = []
    for fp in held:
        known = keys.get(fp)
        key_list.append({
            "fingerprint": fp,
            "active": fp in active,
            "sealing": fp == fingerprint,
            "state": known.state if known else None,
            "not_before": iso(known.not_before) if known else None,
            "not_after": iso(known.not_after) if known else None,
        })
    drift: bool | None = None
    drift_detail: dict[str, Any] | None = None
    drift_reasons: list[dict[str, Any]] = []
    if master and (active or fingerprint is not None):  # never observed: unknown, not drift
        newest = most_recent_key(keys[f] for f in master if f in keys)
        found = cluster_drift(master=master, newest_master=newest.fingerprint if newest
                              else None, active=active, sealing_key=fingerprint,
                              adopted=cluster.adopted_keys,
                              key_renew_seconds=cluster.key_renew_seconds)
        drift = found.drifting
        drift_detail = {"missing": list(found.missing), "extra": list(found.extra),
                        "sealing_key_outside_master_set": found.sealing_key_outside_master_set}
        drift_reasons = [{"reason": r.reason.value, "fingerprint": r.fingerprint,
                          "detail": r.detail} for r in found.reasons]
    return {
        "name": cluster.name,
        "reachable": cluster.reachable,
        "last_scan_at": iso(cluster.last_scan_at),
        "last_error": cluster.last_error,
        "controller_error": cluster.controller_error,
        "controller_state": cluster.controller_state,
        "controller_key_renew_period_seconds": cluster.key_renew_seconds,
        "malformed_key_secrets": [{"secret": name, "reason": reason}
                                  for name, reason in cluster.malformed_keys],
        "scan_duration_ms": cluster.scan_duration_ms,
        "sealing_key": sealing,
        "keys": key_list,
        "drift": drift,
        "drift_detail": drift_detail,
        "drift_reasons": drift_reasons,
        "sealed_secrets": counts,
    }


def build_report(policy: StalenessPolicy, now: dt.datetime,
                 clusters: Iterable[ClusterFacts], keys: Iterable[KeyFacts],
                 counts: Mapping[str, Mapping[SecretState, int] | Mapping[str, int]],
                 master_keys: Collection[str], repos: Iterable[RepoFacts] = (),
                 git_counts: Mapping[str, Mapping[SecretState, int] | Mapping[str, int]]
                 | None = None, jobs_running: Iterable[RunningJob] = ()) -> dict[str, Any]:
    """The staleness report, JSON-ready (the exact shape of ``GET /api/v1/staleness``).

    *repos* and *git_counts* (repo -> state -> documents) add the SealedSecrets found in
    Git: per repo under ``repos``, in total under ``fleet.git_sealed_secrets``;
    ``fleet.sealed_secrets`` counts the in-cluster objects only.  The fleet view:
    ``fleet.master_key`` (the newest master key), the clusters ``in_sync`` and
    ``drifting`` (with each cluster's ``drift_reasons``) and the ``jobs_running``.
    """
    key_map = {k.fingerprint: k for k in keys}
    master = frozenset(master_keys)
    cluster_reports = [
        cluster_report(c, policy, now, key_map, state_counts(counts.get(c.name)), master)
        for c in sorted(clusters, key=lambda c: c.name)]
    return assemble_report(policy, now, cluster_reports, key_map, master, repos=repos,
                           git_counts=git_counts, jobs_running=jobs_running)


def assemble_report(policy: StalenessPolicy, now: dt.datetime,
                    cluster_reports: Sequence[Mapping[str, Any]],
                    keys: Mapping[str, KeyFacts], master: frozenset[str],
                    repos: Iterable[RepoFacts] = (),
                    git_counts: Mapping[str, Mapping[SecretState, int] | Mapping[str, int]]
                    | None = None, jobs_running: Iterable[RunningJob] = ()) -> dict[str, Any]:
    """The report around *cluster_reports* (each as :func:`cluster_report` makes it, by
    name): the fleet's totals are sums over them, cheap beside composing them, so an
    incremental rebuild recomposes only the clusters that changed and calls this."""
    fleet_counts = dict.fromkeys(STATE_KEYS, 0)
    reachable = stale_sealing = 0
    drifting: list[str] = []
    in_sync = 0
    for report in cluster_reports:
        for name, n in report["sealed_secrets"].items():
            fleet_counts[name] += n
        if report["reachable"]:
            reachable += 1
        sealing = report["sealing_key"]
        if sealing and sealing["stale"]:
            stale_sealing += 1
        if report["drift"]:
            drifting.append(report["name"])
        elif report["drift"] is False:
            in_sync += 1
    repo_reports = [_repo_report(r, state_counts((git_counts or {}).get(r.name)))
                    for r in sorted(repos, key=lambda r: r.name)]
    git_totals = dict.fromkeys(STATE_KEYS, 0)
    for report in repo_reports:
        for name, n in report["sealed_secrets"].items():
            git_totals[name] += n
    newest_master = most_recent_key(keys[f] for f in master if f in keys)
    return {
        "generated_at": iso(now),
        "policy": {
            "key_renew_period_seconds": int(policy.key_renew_period.total_seconds()),
            "cert_expiry_warning_seconds": int(policy.cert_expiry_warning.total_seconds()),
            "master_keys": sorted(master),
        },
        "fleet": {
            "clusters": len(cluster_reports),
            "reachable": reachable,
            "stale_sealing_keys": stale_sealing,
            "drifting": len(drifting),
            "in_sync": in_sync,
            "drifting_clusters": drifting,
            "master_key": None if newest_master is None else {
                "fingerprint": newest_master.fingerprint,
                "not_before": iso(newest_master.not_before),
                "not_after": iso(newest_master.not_after)},
            "jobs_running": [{"id": j.id, "kind": j.kind, "state": j.state, "actor": j.actor,
                              "created_at": iso(j.created_at), "started_at": iso(j.started_at)}
                             for j in jobs_running],
            "sealed_secrets": fleet_counts,
            "repos": len(repo_reports),
            "git_sealed_secrets": git_totals,
        },
        "clusters": list(cluster_reports),
        "repos": repo_reports,
    }


def findings(report: Mapping[str, Any]) -> set[str]:
    """Which of :data:`FINDINGS` a report contains (for ``staleness --fail-on``).

    stale: a sealing key is stale or a SealedSecret uses an older key; drift: a cluster
    drifts from the master key set; compromised: a SealedSecret or a sealing key uses a
    compromised key; unknown: a SealedSecret opens with no known key.  SealedSecrets found
    in Git count as the in-cluster ones do.
    """
    found: set[str] = set()
    for totals in (report["fleet"]["sealed_secrets"],
                   report["fleet"].get("git_sealed_secrets") or {}):   # Git documents too
        for finding in ("stale", "compromised", "unknown"):
            if totals.get(finding):
                found.add(finding)
    for cluster in report["clusters"]:
        sealing = cluster.get("sealing_key")
        if sealing and sealing.get("stale"):
            found.add("stale")
        if sealing and sealing.get("state") == "compromised":
            found.add("compromised")
        if cluster.get("drift"):
            found.add("drift")
    return found
