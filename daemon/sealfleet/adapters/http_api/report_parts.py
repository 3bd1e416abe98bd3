"""The snapshot's report and bodies, recomposed only where the inventory changed.

A rebuild used to compose every cluster's part of the report and serialise every body
anew: for 1,000 clusters some 0.5 CPU-s, several times a second while a first pass
churns the inventory.  Here each cluster's part (its report entry and its JSON, plain
and with the connection details of ``/api/v1/clusters``) is kept with the inputs it was
made from, and made again only when those inputs differ; the fleet's totals are sums
over the parts, and the bodies are the cached fragments joined.  Each key's entry of
``/api/v1/keys`` likewise.

The inputs of a cluster's part are everything :func:`staleness.cluster_report` reads:
its facts, its state counts, the facts of the keys it names, the fleet's master set and
its newest key, and the two things that move with the clock, its sealing key's verdict
(stale, and why) and age.  The age changes every second, so the JSON is cached in two
pieces around it and the number put between them.  What comes out is byte for byte what
``dumps(build_report(...))`` gives for the same inventory (``json.dumps`` of a dict is
its members' serialisations joined, which is what is done here).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sealfleet.adapters.store.records import KeyRecord, KeyUsage
from sealfleet.domain.keys import most_recent_key
from sealfleet.domain.staleness import (
    ClusterFacts,
    KeyFacts,
    RepoFacts,
    RunningJob,
    SecretState,
    StalenessPolicy,
    assemble_report,
    cluster_report,
    iso,
    resolve_sealing_key,
    sealing_key_verdict,
    state_counts,
)

# Stands for a cached part's age_seconds while it is serialised: no real age is
# negative, and outside a JSON string the text `"age_seconds":<this>` can only be
# the sealing key's member (inside a string its quotes would be escaped).
_AGE_MARK = -7_700_000_000_000_000_007
_AGE_TEXT = f'"age_seconds":{_AGE_MARK}'.encode()


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def key_entry(record: KeyRecord, usage: KeyUsage | None) -> dict[str, Any]:
    """Public facts about one key: never the private key, nor even the certificate."""
    usage = usage or KeyUsage()
    return {
        "fingerprint": record.fingerprint,
        "not_before": iso(record.not_before),
        "not_after": iso(record.not_after),
        "state": record.state,
        "source": record.source,
        "fleet_master": record.fleet_master,
        "has_private_key": record.has_private_key,
        "clusters": list(usage.clusters),
        "items": usage.items,
        "sealed_secrets": usage.sealed_secrets,
    }


Details = tuple[str | None, str, str]   # server, controller namespace, controller name
_KeySig = tuple[dt.datetime, dt.datetime, str] | None


@dataclass(frozen=True)
class _Inputs:
    facts: ClusterFacts
    counts: tuple[tuple[SecretState, int], ...]
    details: Details
    keys: tuple[tuple[_KeySig, ...], tuple[_KeySig, ...], _KeySig]   # held, active, sealing
    verdict: tuple[bool, tuple[str, ...]] | None


@dataclass(frozen=True)
class _Part:
    inputs: _Inputs
    report: dict[str, Any]
    age: int | None
    head: bytes          # the JSON up to the age (none when there is no age) ...
    tail: bytes          # ... and after it; with the details, for /api/v1/clusters:
    detailed_tail: bytes

    def fragment(self) -> bytes:
        return self.tail if self.age is None else b"%s%d%s" % (self.head, self.age, self.tail)

    def detailed(self) -> bytes:
        return self.detailed_tail if self.age is None else \
            b"%s%d%s" % (self.head, self.age, self.detailed_tail)


def _key_sig(key: KeyFacts | None) -> _KeySig:
    return None if key is None else (key.not_before, key.not_after, key.state)


def _details_suffix(details: Details) -> bytes:
    server, namespace, name = details
    # `{**cluster, **details}`: the cluster's members, then these (no name is shared).
    return b"," + dumps({"server": server, "controller_namespace": namespace,
                         "controller_name": name})[1:]


def _make_part(inputs: _Inputs, report: dict[str, Any], age: int | None) -> _Part:
    suffix = _details_suffix(inputs.details)
    if age is None:
        text = dumps(report)
        return _Part(inputs, report, None, b"", text, text[:-1] + suffix)
    marked = {**report, "sealing_key": {**report["sealing_key"], "age_seconds": _AGE_MARK}}
    head, found, tail = dumps(marked).partition(_AGE_TEXT)
    assert found, "the sealing key's age is in its JSON"
    head += b'"age_seconds":'
    return _Part(inputs, report, age, head, tail, tail[:-1] + suffix)


@dataclass(frozen=True)
class Composed:
    """The report with its bodies, as :class:`ReportParts` composed them."""

    report: dict[str, Any]
    keys: list[dict[str, Any]]
    staleness_body: bytes
    clusters_body: bytes
    cluster_bodies: dict[str, bytes]
    keys_body: bytes
    recomposed: int       # clusters whose part was made anew (the rest were reused)


class ReportParts:
    """Keeps each cluster's and each key's part between rebuilds (one compose at a time:
    the view calls it under its rebuild lock)."""

    def __init__(self) -> None:
        self._parts: dict[str, _Part] = {}
        self._fleet: tuple[object, ...] | None = None
        self._keys: dict[str, tuple[KeyRecord, KeyUsage | None, dict[str, Any], bytes]] = {}
        # For one compose: each key's facts as a part depends on them, and each sealing
        # key's verdict and age at that moment.
        self._sigs: dict[str, _KeySig] = {}
        self._judged: dict[str, tuple[tuple[bool, tuple[str, ...]], int]] = {}

    def compose(self, policy: StalenessPolicy, now: dt.datetime,
                clusters: Iterable[tuple[ClusterFacts, Details]],
                records: Sequence[KeyRecord],
                counts: Mapping[str, Mapping[SecretState, int]],
                master_keys: Iterable[str], usage: Mapping[str, KeyUsage], *,
                repos: Iterable[RepoFacts] = (),
                git_counts: Mapping[str, Mapping[SecretState, int]] | None = None,
                jobs_running: Iterable[RunningJob] = ()) -> Composed:
        key_map: dict[str, KeyFacts] = {r.fingerprint: r for r in records}
        master = frozenset(master_keys)
        newest = most_recent_key(key_map[f] for f in master if f in key_map)
        fleet = (policy, master, newest.fingerprint if newest else None)
        if fleet != self._fleet:   # what every part depends on: start again
            self._parts.clear()
            self._fleet = fleet
        self._sigs = {r.fingerprint: _key_sig(r) for r in records}
        self._judged = {}
        parts: list[_Part] = []
        recomposed = 0
        for facts, details in sorted(clusters, key=lambda c: c[0].name):
            part, made = self._part(facts, details, policy, now, key_map,
                                    counts.get(facts.name), master)
            parts.append(part)
            recomposed += made
        self._parts = {p.inputs.facts.name: p for p in parts}   # removed clusters go
        report = assemble_report(policy, now, [p.report for p in parts], key_map, master,
                                 repos=repos, git_counts=git_counts, jobs_running=jobs_running)
        fragments = [p.fragment() for p in parts]
        detailed = [p.detailed() for p in parts]
        generated = dumps(report["generated_at"])
        keys, key_fragments = self._key_entries(records, usage)
        return Composed(
            report=report, keys=keys,
            staleness_body=b"{" + b",".join(
                dumps(name) + b":" + (b"[" + b",".join(fragments) + b"]"
                                      if name == "clusters" else dumps(value))
                for name, value in report.items()) + b"}",
            clusters_body=b'{"generated_at":' + generated + b',"clusters":['
            + b",".join(detailed) + b"]}",
            cluster_bodies={p.inputs.facts.name: body for p, body in zip(parts, detailed,
                                                                         strict=True)},
            keys_body=b'{"generated_at":' + generated + b',"keys":['
            + b",".join(key_fragments) + b"]}",
            recomposed=recomposed)

    def _part(self, facts: ClusterFacts, details: Details, policy: StalenessPolicy,
              now: dt.datetime, key_map: Mapping[str, KeyFacts],
              counts: Mapping[SecretState, int] | None,
              master: frozenset[str]) -> tuple[_Part, bool]:
        fingerprint, _ = resolve_sealing_key(facts, key_map)
        verdict: tuple[bool, tuple[str, ...]] | None = None
        age = None
        if fingerprint is not None and fingerprint in key_map:
            judged = self._judged.get(fingerprint)   # many clusters share a sealing key
            if judged is None:
                key = key_map[fingerprint]
                stale, reasons = sealing_key_verdict(key, policy, now)
                judged = self._judged[fingerprint] = (
                    (stale, tuple(reasons)), max(0, int((now - key.not_before).total_seconds())))
            verdict, age = judged
        # The keys it names, as the report reads them; the store's counts as they come
        # (tallying them costs more than comparing them).
        sig = self._sigs.get
        inputs = _Inputs(facts, tuple(counts.items()) if counts else (), details,
                         (tuple(map(sig, facts.held_keys)), tuple(map(sig, facts.active_keys)),
                          sig(fingerprint) if fingerprint is not None else None),
                         verdict)
        cached = self._parts.get(facts.name)
        if cached is not None and cached.inputs == inputs:
            if cached.age == age:
                return cached, False
            report = {**cached.report,
                      "sealing_key": {**cached.report["sealing_key"], "age_seconds": age}}
            return _Part(inputs, report, age, cached.head, cached.tail,
                         cached.detailed_tail), False
        report = cluster_report(facts, policy, now, key_map, state_counts(counts), master)
        return _make_part(inputs, report, age), True

    def _key_entries(self, records: Sequence[KeyRecord], usage: Mapping[str, KeyUsage],
                     ) -> tuple[list[dict[str, Any]], list[bytes]]:
        kept: dict[str, tuple[KeyRecord, KeyUsage | None, dict[str, Any], bytes]] = {}
        entries, fragments = [], []
        for record in records:
            used = usage.get(record.fingerprint)
            cached = self._keys.get(record.fingerprint)
            if cached is None or cached[0] != record or cached[1] != used:
                entry = key_entry(record, used)
                cached = (record, used, entry, dumps(entry))
            kept[record.fingerprint] = cached
            entries.append(cached[2])
            fragments.append(cached[3])
        self._keys = kept
        return entries, fragments
