"""When a compromised key's deferred relabel has become possible: the one rule.

A reseal's ``relabel:<fp>`` step is skipped while in-cluster SealedSecrets still need
the compromised key (typically Flux- or Argo CD-managed objects, resealed on a pending
Git branch, not in the cluster).  Once that branch is merged and applied, the
inventory shows nothing in the clusters sealed with the key, and the relabel can be
done without a human.  A relabel is *due* when:

- some configured cluster still holds the key under another label than ``compromised``;
- the latest relabel attempt for it (a reseal's or a relabel job's step) was skipped
  only because in-cluster objects used it or might (not attributed yet); a step skipped
  for another reason (a guard: the controller's last key, the legacy-named Secret) or
  failed is a human's to look at;
- the inventory now shows no in-cluster SealedSecret sealed with it, and no item is
  waiting for attribution (it might be the key's);
- and when that latest attempt was itself an automatic one (a relabel job), at least
  *retry_after* has passed since: the relabel step reads the clusters live, so a skip
  then means the inventory lagged; the next full relist settles it.  Without that, a
  tick would resubmit the same job every time.

Git documents on base branches do not count, as in the relabel step: it is what is in
the clusters that the controllers must open.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class RelabelAttempt:
    """The latest ``relabel:<fp>`` step the journal holds for a key."""

    job_id: str
    automatic: bool                # a ``relabel`` job's step (not a reseal's)
    waited_for_clusters: bool      # skipped because in-cluster objects used it (or might)
    finished_at: dt.datetime


@dataclass(frozen=True)
class CompromisedKeyStanding:
    """What the inventory and the journal show now of one compromised key."""

    fingerprint: str
    held_unrelabelled: bool        # some configured cluster holds it under another label
    cluster_objects: int           # in-cluster SealedSecrets with an item sealed by it
    unattributed: int              # items waiting for attribution (might be the key's)
    last_attempt: RelabelAttempt | None


def nothing_in_clusters_needs_it(standing: CompromisedKeyStanding) -> bool:
    """The inventory's half of the rule: the key is still held under another label, and
    no in-cluster object is (or might be) sealed with it.  Cheap; the journal's half is
    only worth reading when this holds."""
    return standing.held_unrelabelled and not standing.cluster_objects \
        and not standing.unattributed


def relabel_due(standing: CompromisedKeyStanding, *, now: dt.datetime,
                retry_after: dt.timedelta) -> bool:
    """Whether the key's relabel, once skipped for in-cluster objects, can be done now."""
    last = standing.last_attempt
    if not nothing_in_clusters_needs_it(standing) or last is None \
            or not last.waited_for_clusters:
        return False
    return not last.automatic or now - last.finished_at >= retry_after


def due_relabels(standings: Iterable[CompromisedKeyStanding], *, now: dt.datetime,
                 retry_after: dt.timedelta) -> list[str]:
    """The fingerprints whose relabel is due (sorted)."""
    return sorted(s.fingerprint for s in standings
                  if relabel_due(s, now=now, retry_after=retry_after))
