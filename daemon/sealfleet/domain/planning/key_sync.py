"""Key sync for one cluster: which key Secrets to write or relabel, and whether to restart.

Inputs: the fleet's keys (the *master* set every cluster must load, and the keys the
fleet has retired or found compromised), what one cluster holds (its key Secrets by
name, fingerprint, label and whether sealfleet manages them), its controller's flags,
the key ``/v1/cert.pem`` serves, and which keys its SealedSecrets still need.

What the controller does with key Secrets (sealed-secrets.md §2-3) decides the plan:

- it *loads* the Secrets labelled ``active`` plus the one named exactly its key prefix
  (whatever its label), at start only; ``--watch-for-secrets`` adds keys created later
  with the ``active`` label, but ignores relabels and deletions;
- the key that seals is the newest loaded one: latest certificate NotBefore (a later
  one only replaces a strictly earlier one, Secrets taken in creation order), or the
  latest Secret creation with ``--key-order-priority=SecretCreationTimestamp``.

Rules, each one a guard against losing something:

- a master key not loaded gets a Secret: sealfleet's own (relabelled ``active`` if it
  exists, else created under its fleet name); a Secret someone else wrote is never
  edited to activate a key; so does a key adopted from this very cluster (its
  *custody* keys: ``keys adopt``) that the cluster lost, and only this cluster;
- a retired or compromised key that is loaded is relabelled (``retired``/``compromised``)
  in every Secret that loads it, or in none: not when a SealedSecret of the cluster is
  still sealed with it, not when some SealedSecret's key is unknown (it might be this
  one), not when a Secret loading it is the legacy name (a label cannot unload it), not
  when a Secret is not sealfleet's (unless the policy allows it), and not when the
  controller would be left without a key (it would generate one of its own);
- a loaded key the fleet does not know is left alone and reported (``extra_active_key``);
- the controller is restarted only when what it loads changes (or it serves another
  key than its Secrets say it should): never when nothing changed, and not at all when
  only new ``active`` Secrets were created and it watches for them.

``drift`` describes the cluster as observed (before the plan); planning against the
state the plan leads to yields no actions (the Hypothesis tests check it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Iterable, Sequence

from sealfleet.domain import key_secrets
from sealfleet.domain.keys import KEY_LABEL_ACTIVE, KEY_LABEL_COMPROMISED, most_recent_key
from sealfleet.domain.planning.controller_flags import ControllerFlags, KeyOrder

_NEVER = dt.datetime.min.replace(tzinfo=dt.UTC)


class RestartMode(enum.StrEnum):
    """How the controller is made to load its key Secrets again."""

    NONE = "none"                # no restart (not needed, or not allowed by the policy)
    ROLLOUT = "rollout"          # pod-template annotation, as ``kubectl rollout restart``
    DELETE_PODS = "delete-pods"  # delete the Pods (GitOps would revert a template edit)


class DriftReason(enum.StrEnum):
    MISSING_MASTER_KEY = "missing_master_key"
    MISSING_ADOPTED_KEY = "missing_adopted_key"
    EXTRA_ACTIVE_KEY = "extra_active_key"
    RETIRED_KEY_ACTIVE = "retired_key_active"
    RETIREMENT_BLOCKED = "retirement_blocked"
    SEALING_KEY_NOT_NEWEST_MASTER = "sealing_key_not_newest_master"
    CONTROLLER_NOT_RELOADED = "controller_not_reloaded"
    CONTROLLER_SELF_RENEWAL = "controller_self_renewal"
    KEY_ORDER_BY_CREATION = "key_order_by_creation"
    CONTROLLER_FLAGS_UNRESOLVED = "controller_flags_unresolved"
    SECRET_NAME_TAKEN = "secret_name_taken"  # noqa: S105 (a reason, not a password)
    RESTART_DISABLED = "restart_disabled"


@dataclasses.dataclass(frozen=True)
class Drift:
    reason: DriftReason
    fingerprint: str | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class FleetKey:
    fingerprint: str
    not_before: dt.datetime


@dataclasses.dataclass(frozen=True)
class FleetKeySet:
    """What the fleet wants loaded (*master*) and unloaded (*retired*, *compromised*)."""

    master: tuple[FleetKey, ...]
    retired: frozenset[str] = frozenset()
    compromised: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        wanted = {key.fingerprint for key in self.master}
        both = wanted & (self.retired | self.compromised)
        if both:
            raise ValueError(f"keys both in the master set and retired: {sorted(both)}")
        if self.retired & self.compromised:
            raise ValueError("a key is either retired or compromised, not both")

    def unwanted_label(self, fingerprint: str) -> str | None:
        """The label a key the fleet wants unloaded should carry (None: not unwanted)."""
        if fingerprint in self.compromised:
            return KEY_LABEL_COMPROMISED
        if fingerprint in self.retired:
            return key_secrets.LABEL_RETIRED
        return None


@dataclasses.dataclass(frozen=True)
class HeldKey:
    """One parseable key Secret of the cluster (malformed ones are not keys)."""

    secret_name: str
    fingerprint: str
    label: str | None
    managed: bool
    not_before: dt.datetime
    created: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class ClusterKeyState:
    """One cluster as observed."""

    cluster: str
    held: tuple[HeldKey, ...]
    flags: ControllerFlags
    served_fingerprint: str | None = None   # /v1/cert.pem; None when unknown
    needed: frozenset[str] = frozenset()    # keys its SealedSecrets are sealed with
    unattributed: bool = False              # a SealedSecret opens with no known key
    # Keys adopted from this cluster (not shared into the master set): it keeps them
    # loaded, and gets them back if it loses them.
    custody: tuple[FleetKey, ...] = ()


@dataclasses.dataclass(frozen=True)
class SyncPolicy:
    restart_mode: RestartMode = RestartMode.ROLLOUT
    relabel_unmanaged: bool = False  # may retire keys in Secrets sealfleet did not write


@dataclasses.dataclass(frozen=True)
class CreateKeySecret:
    secret_name: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class SetKeyLabel:
    secret_name: str
    fingerprint: str
    label: str
    previous: str | None


@dataclasses.dataclass(frozen=True)
class ClusterKeyPlan:
    cluster: str
    create: tuple[CreateKeySecret, ...]   # in this order (oldest NotBefore first)
    relabel: tuple[SetKeyLabel, ...]
    restart: RestartMode                  # NONE: do not restart
    restart_reasons: tuple[str, ...]      # why a restart is needed (even if NONE by policy)
    expected_sealing_key: str | None      # what /v1/cert.pem serves once the plan is done
    drift: tuple[Drift, ...]

    @property
    def has_actions(self) -> bool:
        return bool(self.create or self.relabel or self.restart is not RestartMode.NONE)


def loads(held: HeldKey, flags: ControllerFlags) -> bool:
    """Does the controller load this Secret at start?"""
    return held.label == KEY_LABEL_ACTIVE or held.secret_name == flags.key_prefix


def ours(held: HeldKey) -> bool:
    """Is this Secret sealfleet's (annotated, or under the key's fleet name)?"""
    return held.managed or held.secret_name == key_secrets.fleet_key_secret_name(
        held.fingerprint)


def sealing_key(held: Sequence[HeldKey], flags: ControllerFlags) -> str | None:
    """The key the controller seals with after loading *held* (in creation order; Secrets
    without a creation time count as the oldest, new Secrets come last)."""
    loaded = [h for h in held if loads(h, flags)]
    if not loaded:
        return None
    ordered = sorted(loaded, key=lambda h: (h.created or _NEVER).replace(microsecond=0))
    if flags.key_order is KeyOrder.SECRET_CREATION:
        newest = ordered[0]
        for candidate in ordered[1:]:
            if (candidate.created or _NEVER).replace(microsecond=0) > \
                    (newest.created or _NEVER).replace(microsecond=0):
                newest = candidate
        return newest.fingerprint
    best = most_recent_key(ordered)
    return best.fingerprint if best else None


def plan_key_sync(fleet: FleetKeySet, cluster: ClusterKeyState,
                  policy: SyncPolicy = SyncPolicy()) -> ClusterKeyPlan:
    """The actions that bring *cluster* to the fleet's keys, and what drifts now."""
    flags = cluster.flags
    loaded_before = {h.fingerprint for h in cluster.held if loads(h, flags)}
    drift: list[Drift] = []
    create, activate = _activations(fleet, cluster, drift)
    retire = _retirements(fleet, cluster, loaded_before, activated={a.fingerprint
                                                                    for a in activate}
                          | {c.fingerprint for c in create}, policy=policy, drift=drift)
    relabel = (*activate, *retire)

    after = _applied(cluster.held, create, relabel, _wanted(fleet, cluster))
    loaded_after = {h.fingerprint for h in after if loads(h, flags)}
    expected_before = sealing_key(cluster.held, flags)
    expected_after = sealing_key(after, flags)

    reasons: list[str] = []
    if loaded_before - loaded_after:
        reasons.append("keys_deactivated")
    if activate:
        reasons.append("keys_activated_by_relabel")  # a watch sees additions only
    if create and not flags.watch_for_secrets:
        reasons.append("keys_added")
    served = cluster.served_fingerprint
    if served is not None and served != expected_before:
        # Loaded before its Secrets changed (a relabel, a job interrupted before its
        # restart): only a restart makes the controller load what its Secrets say.
        reasons.append("controller_not_reloaded")
        drift.append(Drift(DriftReason.CONTROLLER_NOT_RELOADED, served,
                           f"serves {served}, its key Secrets say {expected_before}"))
    if not loaded_after:
        # A controller that starts without a key makes one of its own: never that.
        reasons.clear()
    restart = policy.restart_mode if reasons else RestartMode.NONE
    if reasons and restart is RestartMode.NONE:
        drift.append(Drift(DriftReason.RESTART_DISABLED, None, ", ".join(reasons)))

    drift += _observed_drift(fleet, cluster, loaded_before,
                             served if served is not None else expected_before)
    return ClusterKeyPlan(cluster=cluster.cluster, create=create, relabel=relabel,
                          restart=restart, restart_reasons=tuple(reasons),
                          expected_sealing_key=expected_after, drift=tuple(drift))


def _activations(fleet: FleetKeySet, cluster: ClusterKeyState, drift: list[Drift],
                 ) -> tuple[tuple[CreateKeySecret, ...], tuple[SetKeyLabel, ...]]:
    flags = cluster.flags
    names = {h.secret_name: h for h in cluster.held}
    create: list[CreateKeySecret] = []
    activate: list[SetKeyLabel] = []
    for key in sorted(_wanted(fleet, cluster), key=lambda k: k.not_before):
        holders = [h for h in cluster.held if h.fingerprint == key.fingerprint]
        if any(loads(h, flags) for h in holders):
            continue
        mine = sorted((h for h in holders if ours(h)), key=lambda h: h.secret_name)
        if mine:
            activate.append(SetKeyLabel(mine[0].secret_name, key.fingerprint,
                                        KEY_LABEL_ACTIVE, mine[0].label))
            continue
        name = key_secrets.fleet_key_secret_name(key.fingerprint)
        if name in names:  # the name is taken by a Secret holding another key
            drift.append(Drift(DriftReason.SECRET_NAME_TAKEN, key.fingerprint,
                               f"Secret {name} holds {names[name].fingerprint}"))
            continue
        create.append(CreateKeySecret(name, key.fingerprint))
    return tuple(create), tuple(activate)


def _wanted(fleet: FleetKeySet, cluster: ClusterKeyState) -> tuple[FleetKey, ...]:
    """The keys this cluster must load: the master set and its own adopted keys."""
    master = {k.fingerprint for k in fleet.master}
    return (*fleet.master, *(k for k in cluster.custody if k.fingerprint not in master
                             and fleet.unwanted_label(k.fingerprint) is None))


def _retirements(fleet: FleetKeySet, cluster: ClusterKeyState, loaded_before: set[str], *,
                 activated: set[str], policy: SyncPolicy,
                 drift: list[Drift]) -> tuple[SetKeyLabel, ...]:
    flags = cluster.flags
    relabel: list[SetKeyLabel] = []
    remaining = set(loaded_before) | activated
    for fingerprint in sorted(loaded_before):
        label = fleet.unwanted_label(fingerprint)
        if label is None:
            continue
        holders = [h for h in cluster.held if h.fingerprint == fingerprint]
        why = _retirement_blocked(fingerprint, holders, cluster, policy,
                                  last_key=remaining == {fingerprint})
        if why is not None:
            drift.append(Drift(DriftReason.RETIREMENT_BLOCKED, fingerprint, why))
            continue
        remaining.discard(fingerprint)
        relabel += [SetKeyLabel(h.secret_name, fingerprint, label, h.label)
                    for h in sorted(holders, key=lambda h: h.secret_name)
                    if h.label != label and (loads(h, flags) or ours(h))]
    # Unwanted keys already unloaded: sealfleet's own Secrets get the label the fleet
    # gives the key (a retired key found compromised); no restart depends on it.
    for held in sorted(cluster.held, key=lambda h: h.secret_name):
        label = fleet.unwanted_label(held.fingerprint)
        if (label is not None and held.fingerprint not in loaded_before and ours(held)
                and not loads(held, flags) and held.label != label):
            relabel.append(SetKeyLabel(held.secret_name, held.fingerprint, label, held.label))
    return tuple(relabel)


def _retirement_blocked(fingerprint: str, holders: Sequence[HeldKey],
                        cluster: ClusterKeyState, policy: SyncPolicy, *,
                        last_key: bool) -> str | None:
    flags = cluster.flags
    if fingerprint in cluster.needed:
        return "SealedSecrets of the cluster are sealed with it"
    if cluster.unattributed:
        return "some SealedSecrets open with no known key: it may be theirs"
    if any(h.secret_name == flags.key_prefix for h in holders):
        return f"Secret {flags.key_prefix} is loaded whatever its label"
    if not policy.relabel_unmanaged and any(
            loads(h, flags) and not ours(h) for h in holders):
        return "a Secret that loads it is not managed by sealfleet"
    if last_key:
        return "the controller would be left without a key (it would make its own)"
    return None


def _applied(held: Iterable[HeldKey], create: Sequence[CreateKeySecret],
             relabel: Sequence[SetKeyLabel], wanted: Sequence[FleetKey]) -> list[HeldKey]:
    """The key Secrets once the plan is carried out (new ones last, as created)."""
    labels = {r.secret_name: r.label for r in relabel}
    after = [dataclasses.replace(h, label=labels[h.secret_name])
             if h.secret_name in labels else h for h in held]
    not_before = {k.fingerprint: k.not_before for k in wanted}
    newest = max((h.created for h in after if h.created is not None), default=None)
    for index, new in enumerate(create):
        # Created after everything there, in order (a second apart, the controller's
        # resolution); a placeholder time that only has to sort last.
        created = (newest or dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) + \
            dt.timedelta(seconds=index + 1)
        after.append(HeldKey(new.secret_name, new.fingerprint, KEY_LABEL_ACTIVE, True,
                             not_before[new.fingerprint], created))
    return after


def _observed_drift(fleet: FleetKeySet, cluster: ClusterKeyState, loaded: set[str],
                    sealing: str | None) -> list[Drift]:
    flags = cluster.flags
    drift: list[Drift] = []
    master = {k.fingerprint for k in fleet.master}
    custody = {k.fingerprint for k in _wanted(fleet, cluster)} - master
    for fingerprint in sorted(master - loaded):
        drift.append(Drift(DriftReason.MISSING_MASTER_KEY, fingerprint))
    for fingerprint in sorted(custody - loaded):
        drift.append(Drift(DriftReason.MISSING_ADOPTED_KEY, fingerprint))
    for fingerprint in sorted(loaded - master - custody):
        unwanted = fleet.unwanted_label(fingerprint) is not None
        drift.append(Drift(DriftReason.RETIRED_KEY_ACTIVE if unwanted
                           else DriftReason.EXTRA_ACTIVE_KEY, fingerprint))
    newest = most_recent_key(fleet.master)
    if newest is not None and sealing != newest.fingerprint:
        drift.append(Drift(DriftReason.SEALING_KEY_NOT_NEWEST_MASTER, sealing,
                           f"the newest master key is {newest.fingerprint}"))
    if flags.self_renewal:
        drift.append(Drift(DriftReason.CONTROLLER_SELF_RENEWAL, None,
                           f"--key-renew-period={flags.key_renew_period}"))
    if flags.key_order is KeyOrder.SECRET_CREATION:
        drift.append(Drift(DriftReason.KEY_ORDER_BY_CREATION))
    if flags.unresolved:
        drift.append(Drift(DriftReason.CONTROLLER_FLAGS_UNRESOLVED, None,
                           ", ".join(flags.unresolved)))
    return drift
