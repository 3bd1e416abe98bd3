"""Key sync planning: scenarios, and Hypothesis for the invariants that keep keys safe.

The invariants are checked against an independent model of the controller (below): which
Secrets it loads, which key it then seals with, what a watch for Secrets adds.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealfleet.domain.key_secrets import fleet_key_secret_name
from sealfleet.domain.planning.controller_flags import ControllerFlags, KeyOrder
from sealfleet.domain.planning.key_sync import (
    ClusterKeyPlan,
    ClusterKeyState,
    DriftReason,
    FleetKey,
    FleetKeySet,
    HeldKey,
    RestartMode,
    SyncPolicy,
    plan_key_sync,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
FPS = ["SHA256:" + base64.b64encode(hashlib.sha256(bytes([i])).digest()).decode().rstrip("=")
       for i in range(6)]
NOT_BEFORE = {fp: T0 + (i // 2) * DAY for i, fp in enumerate(FPS)}  # pairs tie
NO_RENEWAL = ControllerFlags(key_renew_period=dt.timedelta(0))
DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def fleet_key(index: int) -> FleetKey:
    return FleetKey(FPS[index], NOT_BEFORE[FPS[index]])


def held(index: int, name: str, label: str | None = "active", *, managed: bool = False,
         created: int = 0) -> HeldKey:
    return HeldKey(name, FPS[index], label, managed, NOT_BEFORE[FPS[index]],
                   T0 + dt.timedelta(seconds=created))


def ours(index: int, label: str | None = "active", created: int = 0) -> HeldKey:
    return held(index, fleet_key_secret_name(FPS[index]), label, managed=True, created=created)


def state(*keys: HeldKey, flags: ControllerFlags = NO_RENEWAL, served: str | None = None,
          needed: frozenset[str] = frozenset(), unattributed: bool = False) -> ClusterKeyState:
    return ClusterKeyState("c1", keys, flags, served, needed, unattributed)


def reasons(plan: ClusterKeyPlan) -> set[DriftReason]:
    return {d.reason for d in plan.drift}


# ------------------------------------------------------------------ scenarios


def test_a_missing_master_key_is_created_and_the_controller_restarted() -> None:
    fleet = FleetKeySet((fleet_key(0), fleet_key(2)))
    plan = plan_key_sync(fleet, state(ours(0), served=FPS[0]))
    assert [c.fingerprint for c in plan.create] == [FPS[2]]
    assert plan.create[0].secret_name == fleet_key_secret_name(FPS[2])
    assert plan.relabel == ()
    assert plan.restart is RestartMode.ROLLOUT
    assert plan.restart_reasons == ("keys_added",)
    assert plan.expected_sealing_key == FPS[2]
    assert reasons(plan) == {DriftReason.MISSING_MASTER_KEY,
                             DriftReason.SEALING_KEY_NOT_NEWEST_MASTER}


def test_a_controller_that_watches_for_secrets_is_not_restarted_for_new_keys_only() -> None:
    fleet = FleetKeySet((fleet_key(0), fleet_key(2)))
    flags = dataclasses.replace(NO_RENEWAL, watch_for_secrets=True)
    plan = plan_key_sync(fleet, state(ours(0), flags=flags, served=FPS[0]))
    assert len(plan.create) == 1
    assert plan.restart is RestartMode.NONE
    # ... but a relabel is an update, which the watch ignores.
    plan = plan_key_sync(fleet, state(ours(0), ours(2, "retired"), flags=flags,
                                      served=FPS[0]))
    assert plan.create == ()
    assert [r.label for r in plan.relabel] == ["active"]
    assert plan.restart is RestartMode.ROLLOUT


def test_nothing_to_do_means_no_restart() -> None:
    fleet = FleetKeySet((fleet_key(0), fleet_key(2)))
    plan = plan_key_sync(fleet, state(ours(0), ours(2), served=FPS[2]),
                         SyncPolicy(RestartMode.DELETE_PODS))
    assert not plan.has_actions
    assert plan.restart is RestartMode.NONE
    assert plan.drift == ()


def test_a_controller_serving_another_key_than_its_secrets_say_is_restarted() -> None:
    """A job that wrote its Secrets but was interrupted before the restart."""
    fleet = FleetKeySet((fleet_key(0), fleet_key(2)))
    plan = plan_key_sync(fleet, state(ours(0), ours(2), served=FPS[0]),
                         SyncPolicy(RestartMode.DELETE_PODS))
    assert plan.create == ()
    assert plan.relabel == ()
    assert plan.restart is RestartMode.DELETE_PODS
    assert plan.restart_reasons == ("controller_not_reloaded",)


def test_a_retired_key_is_relabelled_only_when_nothing_needs_it() -> None:
    fleet = FleetKeySet((fleet_key(2),), retired=frozenset({FPS[0]}))
    cluster = state(ours(0), ours(2), served=FPS[2])
    plan = plan_key_sync(fleet, cluster)
    assert [(r.fingerprint, r.label, r.previous) for r in plan.relabel] == [
        (FPS[0], "retired", "active")]
    assert plan.restart_reasons == ("keys_deactivated",)
    for blocked in (dataclasses.replace(cluster, needed=frozenset({FPS[0]})),
                    dataclasses.replace(cluster, unattributed=True)):
        plan = plan_key_sync(fleet, blocked)
        assert plan.relabel == ()
        assert not plan.has_actions
        assert DriftReason.RETIREMENT_BLOCKED in reasons(plan)


def test_retirement_never_touches_others_secrets_or_the_legacy_name_unless_allowed() -> None:
    fleet = FleetKeySet((fleet_key(2),), compromised=frozenset({FPS[0], FPS[1]}))
    cluster = state(held(0, "sealed-secrets-keyxyzab"), held(1, "sealed-secrets-key", None),
                    ours(2), served=FPS[2])
    plan = plan_key_sync(fleet, cluster)
    assert plan.relabel == ()
    blocked = {d.fingerprint: d.detail for d in plan.drift
               if d.reason is DriftReason.RETIREMENT_BLOCKED}
    assert "not managed by sealfleet" in blocked[FPS[0]]
    assert "whatever its label" in blocked[FPS[1]]
    plan = plan_key_sync(fleet, cluster, SyncPolicy(relabel_unmanaged=True))
    assert [(r.secret_name, r.label) for r in plan.relabel] == [
        ("sealed-secrets-keyxyzab", "compromised")]


def test_the_last_loaded_key_is_never_retired() -> None:
    fleet = FleetKeySet((), retired=frozenset({FPS[0]}))
    plan = plan_key_sync(fleet, state(ours(0), served=FPS[0]))
    assert not plan.has_actions
    assert "without a key" in next(d.detail for d in plan.drift
                                   if d.reason is DriftReason.RETIREMENT_BLOCKED)


def test_a_master_key_in_an_unloaded_secret_of_someone_else_gets_a_fleet_secret() -> None:
    fleet = FleetKeySet((fleet_key(0),))
    plan = plan_key_sync(fleet, state(held(0, "imported", "retired"), ours(2)))
    assert [c.fingerprint for c in plan.create] == [FPS[0]]
    assert plan.relabel == ()


def test_a_fleet_name_taken_by_another_key_is_drift_not_a_write() -> None:
    fleet = FleetKeySet((fleet_key(0),))
    squatter = held(1, fleet_key_secret_name(FPS[0]), managed=True)
    plan = plan_key_sync(fleet, state(squatter))
    assert plan.create == ()
    assert DriftReason.SECRET_NAME_TAKEN in reasons(plan)


def test_drift_names_extra_keys_self_renewal_key_order_and_unknown_flags() -> None:
    fleet = FleetKeySet((fleet_key(0),))
    flags = ControllerFlags(key_order=KeyOrder.SECRET_CREATION,
                            unresolved=("SEALED_SECRETS_KEY_RENEW_PERIOD",))
    plan = plan_key_sync(fleet, state(ours(0), held(4, "sealed-secrets-keyqwert"),
                                      flags=flags))
    assert {DriftReason.EXTRA_ACTIVE_KEY, DriftReason.CONTROLLER_SELF_RENEWAL,
            DriftReason.KEY_ORDER_BY_CREATION,
            DriftReason.CONTROLLER_FLAGS_UNRESOLVED} <= reasons(plan)


def test_a_lost_adopted_key_is_written_back_to_its_own_cluster_only() -> None:
    """Custody: the key adopted from this cluster comes back when its Secret is gone;
    a cluster it was not adopted from gets only the master set."""
    fleet = FleetKeySet((fleet_key(4),))
    lost = dataclasses.replace(state(ours(4, created=5), served=FPS[4]),
                               custody=(fleet_key(0),))
    plan = plan_key_sync(fleet, lost)
    assert [c.fingerprint for c in plan.create] == [FPS[0]]
    assert plan.expected_sealing_key == FPS[4]          # older: the master key still seals
    assert DriftReason.MISSING_ADOPTED_KEY in reasons(plan)
    assert DriftReason.EXTRA_ACTIVE_KEY not in reasons(plan)
    back = apply(lost, plan)
    again = plan_key_sync(fleet, back)
    assert not again.has_actions
    assert reasons(again) == set()
    other = plan_key_sync(fleet, state(ours(4, created=5), served=FPS[4]))
    assert not other.has_actions


def test_restarts_disabled_by_policy_are_reported() -> None:
    plan = plan_key_sync(FleetKeySet((fleet_key(0),)), state(ours(2)),
                         SyncPolicy(RestartMode.NONE))
    assert plan.create
    assert plan.restart is RestartMode.NONE
    assert DriftReason.RESTART_DISABLED in reasons(plan)


def test_a_key_both_wanted_and_retired_is_an_error() -> None:
    with pytest.raises(ValueError, match="both"):
        FleetKeySet((fleet_key(0),), retired=frozenset({FPS[0]}))


# ------------------------------------------------------------------ the model


def model_loads(h: HeldKey, flags: ControllerFlags) -> bool:
    return h.label == "active" or h.secret_name == flags.key_prefix


def model_sealing(keys: list[HeldKey], flags: ControllerFlags) -> str | None:
    """Register in creation order (whole seconds); replace only on a strictly later time."""
    never = dt.datetime.min.replace(tzinfo=dt.UTC)
    loaded = sorted((h for h in keys if model_loads(h, flags)),
                    key=lambda h: (h.created or never).replace(microsecond=0))
    best: HeldKey | None = None
    for key in loaded:
        time = ((key.created or never).replace(microsecond=0)
                if flags.key_order is KeyOrder.SECRET_CREATION else key.not_before)
        best_time = None if best is None else (
            (best.created or never).replace(microsecond=0)
            if flags.key_order is KeyOrder.SECRET_CREATION else best.not_before)
        if best_time is None or time > best_time:
            best = key
    return best.fingerprint if best else None


def apply(cluster: ClusterKeyState, plan: ClusterKeyPlan) -> ClusterKeyState:
    """What the cluster looks like after the executor carried the plan out."""
    labels = {r.secret_name: r.label for r in plan.relabel}
    keys = [dataclasses.replace(h, label=labels.get(h.secret_name, h.label))
            for h in cluster.held]
    latest = max((h.created for h in keys if h.created), default=T0)
    for offset, new in enumerate(plan.create, start=1):
        keys.append(HeldKey(new.secret_name, new.fingerprint, "active", True,
                            NOT_BEFORE[new.fingerprint], latest + offset * dt.timedelta(seconds=1)))
    served = cluster.served_fingerprint
    if plan.restart is not RestartMode.NONE:
        served = model_sealing(keys, cluster.flags)
    elif cluster.flags.watch_for_secrets and plan.create and served is not None:
        # The watch registers each new Secret after what the controller had loaded.
        current = next(h for h in cluster.held if h.fingerprint == served)
        registered = dataclasses.replace(current, label="active", created=T0 - DAY)
        served = model_sealing([registered, *keys[len(cluster.held):]], cluster.flags)
    return dataclasses.replace(cluster, held=tuple(keys), served_fingerprint=served)


# Strategies built once (building them inside the composite costs more than the planning).
INDEX = st.integers(0, len(FPS) - 1)
LABELS = st.sampled_from(["active", "active", "retired", "compromised", None, "other"])
KINDS = st.sampled_from(["fleet", "fleet", "other", "legacy", "squat"])
PERIODS = st.sampled_from([dt.timedelta(0), dt.timedelta(hours=720)])
ORDERS = st.sampled_from(list(KeyOrder))
MODES = st.sampled_from(list(RestartMode))
SECONDS = st.integers(0, 3)
SUFFIX = st.sampled_from("abcdef")


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[FleetKeySet, ClusterKeyState, SyncPolicy]:
    master = draw(st.lists(INDEX, unique=True, max_size=3))
    unwanted = [i for i in draw(st.lists(INDEX, unique=True)) if i not in master]
    split = draw(st.integers(0, len(unwanted)))
    fleet = FleetKeySet(tuple(fleet_key(i) for i in master),
                        retired=frozenset(FPS[i] for i in unwanted[:split]),
                        compromised=frozenset(FPS[i] for i in unwanted[split:]))
    flags = ControllerFlags(key_renew_period=draw(PERIODS),
                            watch_for_secrets=draw(st.booleans()), key_order=draw(ORDERS))
    keys: dict[str, HeldKey] = {}
    for _ in range(draw(st.integers(0, 6))):
        index, kind = draw(INDEX), draw(KINDS)
        name = {"fleet": fleet_key_secret_name(FPS[index]),
                "legacy": flags.key_prefix,
                "squat": fleet_key_secret_name(FPS[(index + 1) % len(FPS)]),
                }.get(kind, f"sealed-secrets-key{draw(SUFFIX)}")
        keys.setdefault(name, HeldKey(name, FPS[index], draw(LABELS),
                                      draw(st.booleans()) if kind != "fleet" else True,
                                      NOT_BEFORE[FPS[index]],
                                      T0 + dt.timedelta(seconds=draw(SECONDS))))
    held_keys = tuple(keys.values())
    options = [None, model_sealing(list(held_keys), flags),
               *sorted({h.fingerprint for h in held_keys})]
    served = options[draw(st.integers(0, len(options) - 1))]
    needed = frozenset(FPS[i] for i in draw(st.lists(INDEX, unique=True, max_size=3)))
    custody = tuple(fleet_key(i) for i in draw(st.lists(INDEX, unique=True, max_size=2))
                    if i not in master and i not in unwanted)
    cluster = ClusterKeyState("c1", held_keys, flags, served, needed, draw(st.booleans()),
                              custody=custody)
    return fleet, cluster, SyncPolicy(draw(MODES), draw(st.booleans()))


def loaded(cluster: ClusterKeyState) -> set[str]:
    return {h.fingerprint for h in cluster.held if model_loads(h, cluster.flags)}


@settings(max_examples=300)
@given(scenarios())
def test_a_key_that_anything_still_needs_stays_loaded(
        scenario: tuple[FleetKeySet, ClusterKeyState, SyncPolicy]) -> None:
    fleet, cluster, policy = scenario
    after = apply(cluster, plan_key_sync(fleet, cluster, policy))
    if cluster.unattributed:
        assert loaded(cluster) <= loaded(after)
    assert loaded(cluster) & cluster.needed <= loaded(after)
    assert loaded(after) or not loaded(cluster)  # never left without a key


@settings(max_examples=300)
@given(scenarios())
def test_planning_against_the_applied_plan_yields_no_actions(
        scenario: tuple[FleetKeySet, ClusterKeyState, SyncPolicy]) -> None:
    fleet, cluster, policy = scenario
    plan = plan_key_sync(fleet, cluster, policy)
    after = apply(cluster, plan)
    again = plan_key_sync(fleet, after, policy)
    assert not again.has_actions, (plan, again)
    if plan.restart is not RestartMode.NONE:
        assert after.served_fingerprint == plan.expected_sealing_key


@settings(max_examples=300)
@given(scenarios())
def test_restarts_only_when_what_the_controller_loads_changes(
        scenario: tuple[FleetKeySet, ClusterKeyState, SyncPolicy]) -> None:
    fleet, cluster, policy = scenario
    plan = plan_key_sync(fleet, cluster, policy)
    after = apply(cluster, plan)
    stale = (cluster.served_fingerprint is not None
             and cluster.served_fingerprint != model_sealing(list(cluster.held), cluster.flags))
    changed = loaded(after) != loaded(cluster) or any(r.label == "active" for r in plan.relabel)
    if plan.restart is not RestartMode.NONE:
        assert changed or stale
        assert plan.restart is policy.restart_mode
    if not changed and not stale:
        assert plan.restart is RestartMode.NONE
    if plan.create and not plan.relabel and cluster.flags.watch_for_secrets and not stale:
        assert plan.restart is RestartMode.NONE
    if not loaded(after):  # a controller started without keys makes one of its own
        assert plan.restart is RestartMode.NONE


@settings(max_examples=300)
@given(scenarios())
def test_every_master_key_ends_up_loaded_under_a_safe_name(
        scenario: tuple[FleetKeySet, ClusterKeyState, SyncPolicy]) -> None:
    fleet, cluster, policy = scenario
    plan = plan_key_sync(fleet, cluster, policy)
    after = apply(cluster, plan)
    taken = {d.fingerprint for d in plan.drift if d.reason is DriftReason.SECRET_NAME_TAKEN}
    assert {k.fingerprint for k in fleet.master} - taken <= loaded(after)
    assert {k.fingerprint for k in cluster.custody} - taken <= loaded(after)
    existing = {h.secret_name for h in cluster.held}
    for new in plan.create:
        assert new.fingerprint not in loaded(cluster)  # nothing written that is there
        assert new.secret_name not in existing
        assert new.secret_name not in ("sealed-secrets-key", cluster.flags.key_prefix)
        assert DNS.match(new.secret_name)
        assert len(new.secret_name) <= 253
    for relabel in plan.relabel:  # never activates someone else's Secret
        if relabel.label == "active":
            target = next(h for h in cluster.held if h.secret_name == relabel.secret_name)
            assert target.managed or target.secret_name == fleet_key_secret_name(
                target.fingerprint)
    assert plan.expected_sealing_key == model_sealing(list(after.held), cluster.flags)
