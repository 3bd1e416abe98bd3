"""Can a cluster unseal this SealedSecret, and is it sealed with the cluster's current key?

The offline CI gate (``sealfleet check``, ``POST /api/v1/check``) and the state of every
SealedSecret found in Git are decided here, from facts alone: which key sealed each
item (attribution, under the document's own scope label, so an item sealed for another
name or namespace opens with no key), and what each cluster holds.  Pure: nothing is
decrypted here and no plaintext ever exists.

A cluster can unseal a document when its controller holds, for every item, the key
that sealed it.  The daemon knows what a cluster holds when it reads the cluster's key
Secrets; for a least-privilege cluster (or one never scanned) it knows only the sealing
key, so an item sealed with another key "cannot be told" (``decryptable`` None), which
the gate treats as a failure: it never passes what it cannot vouch for.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sealfleet.domain.staleness import KeyContext, SecretState, classify
from sealfleet.errors import InputError


class UnknownClusterError(InputError):
    """A check named a cluster the daemon is not configured with."""


@dataclass(frozen=True)
class CheckDocument:
    """One document to check: where it came from, its index there, the object."""

    source: str
    document: int
    obj: Mapping[str, Any]


@dataclass(frozen=True)
class CheckRequest:
    """What ``POST /api/v1/check`` asks.  *clusters* empty: every configured cluster
    (then one that can unseal a document is enough); *errors*: (source, why it does not
    parse) of inputs that never became documents (they fail the check)."""

    documents: tuple[CheckDocument, ...]
    clusters: tuple[str, ...] = ()
    require_current: bool = False
    errors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ClusterKeys:
    """What a check needs of one cluster."""

    name: str
    sealing_key: str | None              # fingerprint it seals with now (None: unknown)
    held: frozenset[str] | None = None   # keys its controller holds (None: not known)


@dataclass(frozen=True)
class Verdict:
    """One document judged for one cluster.

    *decryptable*: the cluster's controller holds the key of every item (None: cannot
    be told); *current*: every item is sealed with its sealing key (None: sealing key
    unknown); *state* as the inventory would classify it; *reasons* name items and key
    fingerprints, never values.
    """

    cluster: str
    decryptable: bool | None
    current: bool | None
    state: SecretState
    reasons: tuple[str, ...] = ()

    @property
    def fails(self) -> bool:
        return self.decryptable is not True


def _item_verdict(item: str, fingerprint: str | None,
                  cluster: ClusterKeys) -> tuple[bool | None, str | None]:
    if fingerprint is None:
        # Known holdings are keys the fleet holds too: none of them opens it.
        return (None if cluster.held is None else False), (
            f"item {item!r}: no key the fleet knows opens it under this document's "
            "name, namespace and scope")
    if cluster.held is not None:
        if fingerprint in cluster.held:
            return True, None
        return False, f"item {item!r}: sealed with {fingerprint}, which the cluster does not hold"
    if fingerprint == cluster.sealing_key:
        return True, None
    return None, (f"item {item!r}: sealed with {fingerprint}; whether the cluster holds it is "
                  "not known (its key Secrets are not read)")


def judge(items: Sequence[tuple[str, str | None]], cluster: ClusterKeys, *,
          compromised: Collection[str] = frozenset(),
          malformed_reason: str | None = None) -> Verdict:
    """Judge one SealedSecret, given (item name, fingerprint of the key that sealed it
    or None) per item, for *cluster*."""
    reasons: list[str] = []
    outcomes: list[bool | None] = []
    if malformed_reason is not None:
        reasons.append(malformed_reason)
        if not items:
            outcomes.append(False)   # nothing the controller could turn into a Secret
    for item, fingerprint in items:
        outcome, reason = _item_verdict(item, fingerprint, cluster)
        outcomes.append(outcome)
        if reason is not None:
            reasons.append(reason)
    decryptable: bool | None = (False if False in outcomes
                                else None if None in outcomes else True)
    keys = [fingerprint for _, fingerprint in items]
    current = (None if cluster.sealing_key is None
               else all(key == cluster.sealing_key for key in keys))
    if current is False:
        reasons.extend(f"item {item!r}: not sealed with the cluster's sealing key "
                       f"{cluster.sealing_key}" for item, key in items
                       if key is not None and key != cluster.sealing_key)
    state = classify(keys, KeyContext(cluster.sealing_key, frozenset(compromised)),
                     synced=False if decryptable is False else None,
                     malformed=malformed_reason is not None)
    return Verdict(cluster.name, decryptable, current, state, tuple(reasons))


_SEVERITY = {state: rank for rank, state in enumerate(SecretState)}  # most severe first


def worst_state(verdicts: Iterable[Verdict]) -> SecretState | None:
    """A document's state over the clusters it is meant for: the most severe one."""
    states = [v.state for v in verdicts]
    return min(states, key=_SEVERITY.__getitem__) if states else None


def would_fail(verdicts: Sequence[Verdict], *, every_cluster: bool,
               require_current: bool = False) -> bool:
    """The gate for one document.  *every_cluster*: the clusters were named, and each
    must be able to unseal it; otherwise (every cluster of the fleet judged) one that
    can is enough.  *require_current*: also fail when a cluster that must unseal it
    would, but it is not sealed with that cluster's current key."""
    if not verdicts:
        return True

    def bad(verdict: Verdict) -> bool:
        return verdict.fails or (require_current and verdict.current is not True)

    if every_cluster:
        return any(bad(v) for v in verdicts)
    return all(bad(v) for v in verdicts)
