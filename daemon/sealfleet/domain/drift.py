"""Does a cluster hold the fleet's key set, and if not, why: the report's fleet view.

Judged from what the inventory observed (the keys a cluster's controller loads, the key
it seals with, its ``--key-renew-period``), against the fleet master set and the keys
adopted from that cluster.  The reason codes are the key-sync planner's
(``planning/key_sync.DriftReason``).
A job's steps say what a sync found; this says what the cluster shows between syncs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from sealfleet.domain.planning.key_sync import Drift, DriftReason

# The reasons this view can give: the planner's codes (one owner of their names).
REASONS: tuple[DriftReason, ...] = (
    DriftReason.MISSING_MASTER_KEY, DriftReason.MISSING_ADOPTED_KEY,
    DriftReason.EXTRA_ACTIVE_KEY, DriftReason.SEALING_KEY_NOT_NEWEST_MASTER,
    DriftReason.CONTROLLER_SELF_RENEWAL)


@dataclasses.dataclass(frozen=True)
class ClusterDrift:
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    sealing_key_outside_master_set: bool
    reasons: tuple[Drift, ...]

    @property
    def drifting(self) -> bool:
        return bool(self.reasons)


def cluster_drift(*, master: Collection[str], newest_master: str | None,
                  active: Collection[str], sealing_key: str | None,
                  adopted: Collection[str] = (),
                  key_renew_seconds: int | None = None) -> ClusterDrift:
    """The cluster against the fleet: *master* must all be loaded (*active*), the keys
    *adopted* from this cluster (and still wanted) too; nothing else may be loaded; the
    newest master key must seal; and the controller must not renew on its own
    (``--key-renew-period`` other than 0: it would make a key of its own and win)."""
    master_set, active_set, adopted_set = set(master), set(active), set(adopted) - set(master)
    missing = tuple(sorted(master_set - active_set))
    missing_adopted = sorted(adopted_set - active_set)
    extra = tuple(sorted(active_set - master_set - adopted_set))
    outside = sealing_key is not None and sealing_key not in master_set
    reasons = [Drift(DriftReason.MISSING_MASTER_KEY, fp) for fp in missing]
    reasons += [Drift(DriftReason.MISSING_ADOPTED_KEY, fp) for fp in missing_adopted]
    reasons += [Drift(DriftReason.EXTRA_ACTIVE_KEY, fp) for fp in extra]
    if sealing_key is not None and (outside or (newest_master is not None
                                                and sealing_key != newest_master)):
        reasons.append(Drift(DriftReason.SEALING_KEY_NOT_NEWEST_MASTER, sealing_key,
                             f"the newest master key is {newest_master}" if newest_master
                             else "outside the master set"))
    if key_renew_seconds:
        reasons.append(Drift(DriftReason.CONTROLLER_SELF_RENEWAL, None,
                             f"--key-renew-period={key_renew_seconds}s"))
    return ClusterDrift(missing=missing, extra=extra, sealing_key_outside_master_set=outside,
                        reasons=tuple(reasons))
