"""An incremental rebuild of the snapshot says byte for byte what a full one says.

``ReportParts`` keeps each cluster's part of the report between rebuilds and makes it
again only when its inputs change; here a fleet is changed at random, round after round
(cluster facts, counts, keys, the master set, the policy, the clock), and every body it
composes is compared with the full composition of the same inventory: ``build_report``
serialised whole, as the snapshot did before it was incremental.  And the view over a
real store (its one read of the report's rows, records reused for unchanged rows) gives
the bodies that the repositories' own reads, composed whole, give after random writes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from pathlib import Path
from typing import Any

import pytest

from sealfleet.adapters.http_api.report_parts import Details, ReportParts, dumps, key_entry
from sealfleet.adapters.http_api.snapshot import InventoryView
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import KeyHolding, KeyRecord, KeyUsage, MalformedKeySecret
from sealfleet.domain.staleness import (
    ClusterFacts,
    RunningJob,
    SecretState,
    StalenessPolicy,
    build_report,
)

START = dt.datetime(2026, 6, 1, 12, 0, 0, tzinfo=dt.UTC)
# Strings a cluster may report, the age's placeholder among them.
ODD_TEXT = ('x509: "bad" cert', "ünïcode ✓", '"age_seconds":-7700000000000000007,',
            "back\\slash", "")


def full(policy: StalenessPolicy, now: dt.datetime,
         clusters: dict[str, tuple[ClusterFacts, Details]], records: list[KeyRecord],
         counts: dict[str, dict[SecretState, int]], master: list[str],
         usage: dict[str, KeyUsage], jobs: list[RunningJob]) -> dict[str, Any]:
    """The bodies as the snapshot composed them before: everything, every time."""
    report = build_report(policy, now, [facts for facts, _ in clusters.values()], records,
                          counts, master, jobs_running=jobs)
    out = []
    for entry in report["clusters"]:
        server, namespace, name = clusters[entry["name"]][1]
        out.append({**entry, "server": server, "controller_namespace": namespace,
                    "controller_name": name})
    keys = [key_entry(r, usage.get(r.fingerprint)) for r in records]
    return {"report": report, "keys": keys, "staleness": dumps(report),
            "clusters": dumps({"generated_at": report["generated_at"], "clusters": out}),
            "cluster_bodies": {c["name"]: dumps(c) for c in out},
            "keys_body": dumps({"generated_at": report["generated_at"], "keys": keys})}


class Fleet:
    """A random inventory, and random changes to it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = START
        self.policy = StalenessPolicy(dt.timedelta(days=30), dt.timedelta(days=10))
        self.records = [self.key(i) for i in range(10)]
        self.master = [r.fingerprint for r in self.records[:2]]
        self.clusters = {f"c{i:02d}": self.cluster(f"c{i:02d}") for i in range(30)}
        self.counts = {name: self.count() for name in self.clusters}
        self.usage: dict[str, KeyUsage] = {}
        self.jobs: list[RunningJob] = []

    def key(self, i: int) -> KeyRecord:
        born = START - dt.timedelta(days=self.rng.randint(0, 60),
                                    seconds=self.rng.randint(0, 86_399))
        return KeyRecord(fingerprint=f"{i:02d}" + "ab" * 31, not_before=born,
                         not_after=born + dt.timedelta(days=self.rng.choice((45, 90, 3650))),
                         source=self.rng.choice(("cluster", "generated")),
                         state=self.rng.choice(("active", "active", "retired", "compromised")))

    def fingerprints(self) -> list[str]:
        return [r.fingerprint for r in self.records] + ["ff" * 32]   # and one never seen

    def cluster(self, name: str) -> tuple[ClusterFacts, Details]:
        rng, fps = self.rng, self.fingerprints()
        active = tuple(rng.sample(fps, rng.randint(0, 3)))
        facts = ClusterFacts(
            name=name, reachable=rng.choice((None, True, True, False)),
            last_scan_at=rng.choice((None, self.now)), last_error=rng.choice((None, *ODD_TEXT)),
            sealing_key=rng.choice((None, None, *fps)),
            sealing_key_source=rng.choice((None, "cert.pem")),
            active_keys=active, held_keys=active + tuple(rng.sample(fps, rng.randint(0, 2))),
            scan_duration_ms=rng.choice((None, rng.randint(1, 5000))),
            controller_error=rng.choice((None, *ODD_TEXT)),
            controller_state=rng.choice((None, "running", "crash_looping")),
            key_renew_seconds=rng.choice((None, 0, 2_592_000)),
            adopted_keys=tuple(rng.sample(fps, rng.randint(0, 1))),
            malformed_keys=tuple((f"s{i}", rng.choice(ODD_TEXT))
                                 for i in range(rng.randint(0, 2))))
        return facts, (rng.choice((None, "https://10.0.0.1:6443")), "kube-system",
                       rng.choice(("sealed-secrets-controller", "sealed-secrets")))

    def count(self) -> dict[SecretState, int]:
        return {state: self.rng.randint(0, 9) for state in
                self.rng.sample(list(SecretState), self.rng.randint(0, len(SecretState)))}

    def change(self) -> None:
        """One round of changes, mostly small, now and then fleet-wide."""
        rng = self.rng
        for _ in range(rng.randint(0, 4)):
            name = rng.choice(sorted(self.clusters))
            what = rng.random()
            if what < 0.4:
                facts, details = self.clusters[name]
                fresh, fresh_details = self.cluster(name)
                field = rng.choice([f.name for f in dataclasses.fields(ClusterFacts)
                                    if f.name != "name"])
                facts = dataclasses.replace(facts, **{field: getattr(fresh, field)})
                self.clusters[name] = (facts, fresh_details if rng.random() < 0.2 else details)
            elif what < 0.7:
                self.counts[name] = self.count()
            elif what < 0.85:
                del self.clusters[name]
                self.counts.pop(name, None)
            else:
                new = f"n{rng.randint(0, 99):02d}"
                self.clusters[new] = self.cluster(new)
                self.counts[new] = self.count()
        if rng.random() < 0.15:
            i = rng.randrange(len(self.records))
            self.records[i] = dataclasses.replace(
                self.records[i], state=rng.choice(("active", "retired", "compromised")))
        if rng.random() < 0.05:
            self.records.append(self.key(len(self.records)))
        if rng.random() < 0.05:
            self.master = rng.sample([r.fingerprint for r in self.records], rng.randint(0, 3))
        if rng.random() < 0.03:
            self.policy = StalenessPolicy(dt.timedelta(days=rng.choice((7, 30, 90))),
                                          dt.timedelta(days=rng.choice((1, 10))))
        if rng.random() < 0.2:
            fp = rng.choice(self.fingerprints())
            self.usage[fp] = KeyUsage(clusters=tuple(sorted(rng.sample(
                sorted(self.clusters), 2))), items=rng.randint(0, 50), sealed_secrets=3)
        if rng.random() < 0.1:
            self.jobs = [RunningJob(id=f"j{rng.randint(0, 9)}", kind="key_sync",
                                    state="running", actor="test", created_at=self.now)]
        # The clock: mostly a second or less (ages move), now and then days (verdicts).
        self.now += rng.choice((dt.timedelta(0), dt.timedelta(milliseconds=400),
                                dt.timedelta(seconds=1), dt.timedelta(seconds=7),
                                dt.timedelta(days=rng.randint(1, 20))))


@pytest.mark.parametrize("seed", range(4))
def test_an_incremental_rebuild_equals_a_full_one_after_random_changes(seed: int) -> None:
    fleet = Fleet(random.Random(seed))
    parts = ReportParts()
    reused = 0
    for _ in range(50):
        made = parts.compose(fleet.policy, fleet.now, list(fleet.clusters.values()),
                             list(fleet.records), fleet.counts, list(fleet.master),
                             fleet.usage, jobs_running=fleet.jobs)
        expected = full(fleet.policy, fleet.now, fleet.clusters, fleet.records,
                        fleet.counts, fleet.master, fleet.usage, fleet.jobs)
        assert made.staleness_body == expected["staleness"]
        assert made.report == expected["report"]
        assert made.clusters_body == expected["clusters"]
        assert made.cluster_bodies == expected["cluster_bodies"]
        assert made.keys_body == expected["keys_body"]
        assert made.keys == expected["keys"]
        reused += len(fleet.clusters) - made.recomposed
        fleet.change()
    assert reused > 0   # it did reuse parts: the comparison above is of the incremental path


def test_only_the_changed_cluster_is_composed_again() -> None:
    fleet = Fleet(random.Random(99))
    parts = ReportParts()

    def compose() -> int:
        return parts.compose(fleet.policy, fleet.now, list(fleet.clusters.values()),
                             fleet.records, fleet.counts, fleet.master,
                             fleet.usage).recomposed

    assert compose() == len(fleet.clusters)
    fleet.now += dt.timedelta(seconds=3)   # ages move, verdicts do not
    assert compose() == 0
    facts, details = fleet.clusters["c07"]
    fleet.clusters["c07"] = (dataclasses.replace(facts, scan_duration_ms=123_456), details)
    fleet.counts["c11"] = {SecretState.STALE: 40}
    assert compose() == 2
    fleet.master = [fleet.records[5].fingerprint]   # every cluster's drift is judged anew
    assert compose() == len(fleet.clusters)


# ------------------------------------------------------------------ through a real store


async def reference_bodies(store: Store, policy: StalenessPolicy,
                           now: dt.datetime) -> tuple[bytes, bytes, bytes]:
    """The bodies as the snapshot read and composed them before: each repository's read,
    every record made anew, the whole report composed and serialised."""
    inventory, keystore = store.inventory, store.keys
    clusters = [c for c in await inventory.list_clusters() if not c.removed]
    records = await keystore.list_keys()
    usage = await keystore.key_usage()
    held = await inventory.key_holdings_by_cluster()
    malformed = await inventory.malformed_key_secrets_by_cluster()
    adopted = await keystore.adopted_keys()
    facts = [ClusterFacts(
        name=c.name, reachable=c.reachable, last_scan_at=c.last_scan_at,
        last_error=c.last_error, sealing_key=c.sealing_key,
        sealing_key_source=c.sealing_key_source,
        active_keys=tuple(h.fingerprint for h in held.get(c.name, [])
                          if h.label_value in (None, "active")),
        held_keys=tuple(h.fingerprint for h in held.get(c.name, [])),
        scan_duration_ms=c.scan_duration_ms, controller_error=c.controller_error,
        controller_state=c.controller_state,
        key_renew_seconds=c.controller_key_renew_seconds,
        adopted_keys=tuple(adopted.get(c.name, ())),
        malformed_keys=tuple((m.secret_name, m.reason) for m in malformed.get(c.name, ())))
        for c in clusters]
    report = build_report(policy, now, facts, records, await inventory.state_counts(),
                          await keystore.fleet_master())
    details = {c.name: {"server": c.server, "controller_namespace": c.controller_namespace,
                        "controller_name": c.controller_name} for c in clusters}
    out = [{**c, **details[c["name"]]} for c in report["clusters"]]
    keys = [key_entry(r, usage.get(r.fingerprint)) for r in records]
    return (dumps(report), dumps({"generated_at": report["generated_at"], "clusters": out}),
            dumps({"generated_at": report["generated_at"], "keys": keys}))


async def test_the_view_over_a_store_says_what_a_full_composition_says(tmp_path: Path,
                                                                       ) -> None:
    rng = random.Random(5)
    policy = StalenessPolicy(dt.timedelta(days=30), dt.timedelta(days=10))
    clock = [START]
    fps = [f"{i:02d}" + "cd" * 31 for i in range(6)]
    async with Store.open(tmp_path / "inventory.db") as store:
        await store.keys.upsert_keys([KeyRecord(
            fp, START - dt.timedelta(days=10 * i), START + dt.timedelta(days=90),
            "cluster", certificate_pem="-----BEGIN CERTIFICATE-----") for i, fp in enumerate(fps)])
        view = InventoryView(store, policy=policy, clock=lambda: clock[0])
        names = [f"c{i}" for i in range(8)]
        for name in names:
            await store.inventory.upsert_cluster(name, server=f"https://{name}:6443")
        for _ in range(25):
            name = rng.choice(names)
            what = rng.random()
            if what < 0.4:
                await store.inventory.record_cluster_status(
                    name, reachable=rng.random() < 0.8, last_error=rng.choice((None, *ODD_TEXT)),
                    last_scan_at=clock[0], scan_duration_ms=rng.randint(1, 900),
                    sealing_key=rng.choice((None, *fps)), sealing_key_source="cert.pem")
            elif what < 0.7:
                await store.inventory.replace_cluster_keys(name, [
                    KeyHolding(fp, f"key-{fp[:4]}", rng.choice((None, "active", "compromised")),
                               "1", None, clock[0]) for fp in rng.sample(fps, rng.randint(0, 3))],
                    [MalformedKeySecret("not-a-key", rng.choice(ODD_TEXT), clock[0])]
                    if rng.random() < 0.3 else [])
            elif what < 0.8:
                await store.keys.set_key_state(rng.choice(fps), "retired", actor="test")
            elif what < 0.9:
                await store.keys.set_fleet_master(rng.sample(fps, 2))
            else:
                await store.inventory.mark_cluster_removed(name)
            clock[0] += dt.timedelta(seconds=rng.choice((0, 1, 3600)))
            snap = await view.rebuild()
            assert (snap.staleness_body, snap.clusters_body, snap.keys_body) == \
                await reference_bodies(store, policy, clock[0])
