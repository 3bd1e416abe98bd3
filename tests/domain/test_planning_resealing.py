"""The reseal planner: what is resealed where, what is reported, as properties."""

from __future__ import annotations

import fnmatch
import json
import random
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from sealfleet.domain.observed import ManagedBy
from sealfleet.domain.planning import resealing as planning
from sealfleet.domain.planning.resealing import (
    ClusterSealedSecret,
    GitOrigin,
    GitSealedSecret,
    ItemKey,
    Selection,
    Source,
    Targets,
)
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

CLUSTERS = ("c1", "c2", "c3")
REPOS = ("r1", "r2")
KEYS = ("SHA256:k1", "SHA256:k2", "SHA256:k3", "SHA256:k4")
NAMESPACES = ("team-a", "team-b", "ops")
T = TypeVar("T")

keys_or_none = st.sampled_from((*KEYS, None))


def _often_none(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    # Filters and provenance narrow the plan fast: most examples leave them unset.
    return st.one_of(st.none(), st.none(), st.none(), strategy)


item_keys = st.lists(st.builds(ItemKey, st.sampled_from(("a", "b", "c", "d")),
                                 st.sampled_from((*KEYS, *KEYS, None))),
                     min_size=1, max_size=3, unique_by=lambda i: i.item).map(tuple) | st.just(())
managed = _often_none(st.builds(
    ManagedBy, st.sampled_from(("flux", "argocd")),
    st.sampled_from(("flux-system/apps", "web")), st.booleans()))
origins = _often_none(st.builds(
    GitOrigin, st.sampled_from((*REPOS, "unconfigured")), st.sampled_from(("a.yaml", "b.yaml")),
    st.sampled_from((None, 0, 1))))
cluster_objects = st.lists(st.builds(
    ClusterSealedSecret, st.sampled_from(CLUSTERS), st.sampled_from(NAMESPACES),
    st.sampled_from(("db", "api", "web")), st.sampled_from(list(Scope)), item_keys,
    st.sampled_from(list(SecretState)), managed, origins),
    min_size=3, max_size=14, unique_by=lambda o: (o.cluster, o.namespace, o.name))
git_documents = st.lists(st.builds(
    GitSealedSecret, st.sampled_from(REPOS), st.sampled_from(("a.yaml", "b.yaml", "c.json")),
    st.integers(0, 2), st.sampled_from(NAMESPACES), st.sampled_from(("db", "api", "web")),
    st.sampled_from(list(Scope)), item_keys,
    st.lists(st.sampled_from(CLUSTERS), max_size=2, unique=True).map(tuple)),
    min_size=1, max_size=10, unique_by=lambda d: (d.repo, d.path, d.document))
targets = st.builds(
    Targets,
    st.fixed_dictionaries(dict.fromkeys(CLUSTERS, keys_or_none)),
    st.fixed_dictionaries(dict.fromkeys(REPOS, keys_or_none)),
    st.one_of(st.none(), st.sampled_from(KEYS)),
    st.frozensets(st.sampled_from(KEYS), max_size=1),
    st.one_of(st.none(), st.frozensets(st.sampled_from(KEYS), min_size=2)))


selections = st.builds(
    Selection,
    st.one_of(st.just(planning.DEFAULT_STATES),
              st.frozensets(st.sampled_from(list(SecretState)), min_size=1)),
    _often_none(st.frozensets(st.sampled_from(CLUSTERS), min_size=1)),
    _often_none(st.frozensets(st.sampled_from(REPOS), min_size=1)),
    _often_none(st.sampled_from((("team-*",), ("ops",)))),
    _often_none(st.sampled_from((("db",), ("a*", "w*")))),
    _often_none(st.frozensets(st.sampled_from(list(Scope)), min_size=1)),
    _often_none(st.frozensets(st.sampled_from(list(Source)), min_size=1)))


def _expected_target(entry: planning.PlannedReseal, t: Targets) -> set[str | None]:
    if t.master_key is not None:
        return {t.master_key}
    if entry.source is Source.CLUSTER:
        return {t.cluster_keys[entry.cluster or ""]}
    if t.repo_keys.get(entry.repo or ""):
        return {t.repo_keys[entry.repo or ""]}
    return {t.cluster_keys[c] for c in entry.clusters}


@settings(max_examples=100, deadline=None)
@given(objs=cluster_objects, docs=git_documents, t=targets, selection=selections)
def test_every_planned_reseal_is_selected_resealable_and_targets_the_right_key(
        objs: list[ClusterSealedSecret], docs: list[GitSealedSecret], t: Targets,
        selection: Selection) -> None:
    plan = planning.plan_reseal(objs, docs, t, selection)
    for entry in plan.planned:
        assert entry.reason in selection.states
        assert selection.sources is None or entry.source in selection.sources
        assert selection.scopes is None or entry.scope in selection.scopes
        for patterns, value in ((selection.namespaces, entry.namespace),
                                (selection.names, entry.name)):
            assert patterns is None or any(fnmatch.fnmatchcase(value, p) for p in patterns)
        assert _expected_target(entry, t) == {entry.target_key}
        assert entry.items
        assert all(i.fingerprint is not None for i in entry.items)
        if t.held is not None:
            assert set(entry.old_keys) <= t.held
        if entry.reason is SecretState.STALE:
            assert entry.old_keys
        if entry.source is Source.CLUSTER:
            assert selection.clusters is None or entry.cluster in selection.clusters
            assert selection.repos is None
            (obj,) = [o for o in objs if (o.cluster, o.namespace, o.name)
                      == (entry.cluster, entry.namespace, entry.name)]
            # GitOps-managed objects are never resealed in the cluster.
            assert obj.managed_by is None
            assert obj.origin is None
        else:
            assert entry.repo in REPOS
            assert selection.repos is None or entry.repo in selection.repos
            assert selection.clusters is None or not selection.clusters.isdisjoint(
                entry.clusters)
    refs = [p.ref for p in plan.planned] + [n.ref for n in plan.not_planned]
    assert len(refs) == len(set(refs))


@settings(max_examples=60, deadline=None)
@given(objs=cluster_objects, docs=git_documents, t=targets, selection=selections,
       seed=st.integers(0, 1000))
def test_the_plan_does_not_depend_on_input_order(
        objs: list[ClusterSealedSecret], docs: list[GitSealedSecret], t: Targets,
        selection: Selection, seed: int) -> None:
    plan = planning.plan_reseal(objs, docs, t, selection)
    rng = random.Random(seed)
    shuffled_objs, shuffled_docs = objs[:], docs[:]
    rng.shuffle(shuffled_objs)
    rng.shuffle(shuffled_docs)
    assert planning.plan_reseal(shuffled_objs, shuffled_docs, t, selection) == plan


@settings(max_examples=60, deadline=None)
@given(objs=cluster_objects, docs=git_documents, t=targets)
def test_every_stale_unmanaged_object_with_a_known_key_is_planned(
        objs: list[ClusterSealedSecret], docs: list[GitSealedSecret], t: Targets) -> None:
    plan = planning.plan_reseal(objs, docs, Targets(t.cluster_keys, t.repo_keys, t.master_key))
    planned = {p.ref for p in plan.planned}
    for obj in objs:
        target = t.master_key or t.cluster_keys[obj.cluster]
        if obj.managed_by or obj.origin or target is None or not obj.items:
            continue
        keys = [i.fingerprint for i in obj.items]
        stale = None not in keys and any(k != target for k in keys)
        if stale and obj.state is not SecretState.FAILING:
            assert f"{obj.cluster}/{obj.namespace}/{obj.name}" in planned


@settings(max_examples=60, deadline=None)
@given(objs=cluster_objects, docs=git_documents, t=targets, selection=selections)
def test_dry_run_counts_add_up_and_are_json(
        objs: list[ClusterSealedSecret], docs: list[GitSealedSecret], t: Targets,
        selection: Selection) -> None:
    plan = planning.plan_reseal(objs, docs, t, selection)
    report = json.loads(json.dumps(plan.dry_run()))
    assert report["planned"] == len(report["reseals"]) == len(plan.planned)
    assert sum(report["by_reason"].values()) == len(plan.planned)
    assert sum(report["by_cluster"].values()) + sum(report["by_repository"].values()) \
        == len(plan.planned)
    groups = plan.by_destination()
    assert sum(len(v) for v in groups.values()) == len(plan.planned)


# ------------------------------------------------------------------------ examples

OLD, NEW, LEAKED = "SHA256:old", "SHA256:new", "SHA256:leaked"


def _obj(name: str, *keys: str | None, cluster: str = "c1",
         state: SecretState = SecretState.STALE, **kwargs: object) -> ClusterSealedSecret:
    items = tuple(ItemKey(f"i{n}", k) for n, k in enumerate(keys))
    return ClusterSealedSecret(cluster, "team-a", name, Scope.STRICT, items, state,
                               **kwargs)  # type: ignore[arg-type]


def test_gitops_objects_without_a_known_repository_are_reported_not_planned() -> None:
    flux = ManagedBy("flux", "flux-system/apps")
    argo = ManagedBy("argocd", "web")
    helm = ManagedBy("argocd", "db-chart", hint=True)
    plan = planning.plan_reseal(
        [_obj("by-flux", OLD, managed_by=flux), _obj("by-argo", OLD, managed_by=argo),
         _obj("by-helm", OLD, managed_by=helm), _obj("plain", OLD), _obj("current", NEW)],
        [], Targets({"c1": NEW}))
    assert [p.ref for p in plan.planned] == ["c1/team-a/plain"]
    assert [(n.ref, n.reason) for n in plan.not_planned] == [
        ("c1/team-a/by-argo", "managed by Argo CD application web; add its repository to "
                              "reseal it there"),
        ("c1/team-a/by-flux", "managed by Flux flux-system/apps; add its repository to "
                              "reseal it there"),
        ("c1/team-a/by-helm", "possibly managed by Argo CD application db-chart (its "
                              "app.kubernetes.io/instance label; Helm sets it too); add its "
                              "repository to reseal it there")]


def test_a_cluster_object_and_its_document_are_planned_once_in_the_repository() -> None:
    origin = GitOrigin("apps", "prod/db.yaml")
    doc = GitSealedSecret("apps", "prod/db.yaml", 1, "team-a", "db", Scope.STRICT,
                          (ItemKey("i0", OLD),))
    plan = planning.plan_reseal(
        [_obj("db", OLD, cluster="c1", origin=origin,
              managed_by=ManagedBy("flux", "flux-system/apps")),
         _obj("db", OLD, cluster="c2", origin=origin),
         _obj("other", OLD, cluster="c2", origin=GitOrigin("apps", "prod/other.yaml", 0))],
        [doc], Targets({"c1": NEW, "c2": NEW}, {"apps": None}))
    assert [(p.ref, p.source, p.clusters, p.target_key) for p in plan.planned] == [
        ("apps:prod/db.yaml#1", Source.GIT, ("c1", "c2"), NEW),
        # Not walked yet: planned by file and document, from the cluster's facts.
        ("apps:prod/other.yaml#0", Source.GIT, ("c2",), NEW)]
    report = plan.dry_run()
    assert report["by_repository"] == {"apps": 2}
    assert report["by_cluster"] == {}


def test_master_mode_reseals_everything_for_the_master_key() -> None:
    doc = GitSealedSecret("apps", "x.yaml", 0, "team-a", "x", Scope.CLUSTER_WIDE,
                          (ItemKey("a", NEW),))
    plan = planning.plan_reseal([_obj("db", NEW, state=SecretState.CURRENT)], [doc],
                                Targets({"c1": NEW}, {"apps": NEW}, master_key="SHA256:m"))
    assert [(p.ref, p.target_key, p.old_keys) for p in plan.planned] == [
        ("c1/team-a/db", "SHA256:m", (NEW,)), ("apps:x.yaml#0", "SHA256:m", (NEW,))]


def test_what_cannot_be_resealed_says_why() -> None:
    t = Targets({"c1": NEW, "c2": None, "c3": "SHA256:other"}, {"apps": None},
                compromised=frozenset({LEAKED}), held=frozenset({NEW, OLD}))
    docs = [GitSealedSecret("apps", "split.yaml", 0, "team-a", "split", Scope.STRICT,
                            (ItemKey("a", OLD),), clusters=("c1", "c3")),
            GitSealedSecret("apps", "nowhere.yaml", 0, "team-a", "nowhere", Scope.STRICT,
                            (ItemKey("a", OLD),))]
    plan = planning.plan_reseal(
        [_obj("unknown-item", OLD, None, state=SecretState.UNKNOWN),
         _obj("leaked", LEAKED, state=SecretState.COMPROMISED),
         _obj("leaked-no-key", LEAKED, cluster="c2", state=SecretState.COMPROMISED),
         _obj("stale-no-key", OLD, cluster="c2")],
        docs, t, Selection(states=frozenset(SecretState)))
    assert plan.planned == ()
    assert [(n.ref, n.state.value, n.reason) for n in plan.not_planned] == [
        ("c1/team-a/leaked", "compromised",
         "sealed with key(s) whose private key sealfleet does not hold: SHA256:leaked"),
        ("c1/team-a/unknown-item", "unknown", "item(s) 'i1' open with no known key"),
        ("c2/team-a/leaked-no-key", "compromised", "no sealing key known for cluster c2")]
    assert plan.warnings == (
        "1 SealedSecret(s) not judged: no sealing key known for cluster c2",
        "1 SealedSecret(s) not judged: no sealing key known for repository apps",
        "1 SealedSecret(s) not judged: repository apps deploys it to clusters with different "
        "sealing keys (c1, c3): set the repository's key")


def test_filters_and_chosen_states() -> None:
    objs = [_obj("db", OLD), _obj("api", OLD, cluster="c2"),
            _obj("failing", NEW, state=SecretState.FAILING),
            _obj("current", NEW, state=SecretState.CURRENT)]
    t = Targets({"c1": NEW, "c2": NEW})
    assert [p.name for p in planning.plan_reseal(objs, [], t).planned] == ["db", "api"]
    only_c2 = Selection(clusters=frozenset({"c2"}))
    assert [p.name for p in planning.plan_reseal(objs, [], t, only_c2).planned] == ["api"]
    failing = Selection(states=frozenset({SecretState.FAILING}))
    assert [p.name for p in planning.plan_reseal(objs, [], t, failing).planned] == ["failing"]
    git_only = Selection(sources=frozenset({Source.GIT}))
    assert planning.plan_reseal(objs, [], t, git_only).planned == ()
    names = Selection(names=("d*", "a?i"))
    assert [p.name for p in planning.plan_reseal(objs, [], t, names).planned] == ["db", "api"]
