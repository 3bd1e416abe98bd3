"""Does a cluster hold the fleet's key set, and if not, why: the report's fleet view.

Judged from what the inventory observed (the keys a cluster's controller loads, the key
it seals with, its ``--key-renew-period``), against the fleet master set and the keys
adopted from that cluster.  The reason codes are those of the key-sync planner
(``planning/key_sync.DriftReason``) where they mean the same, plus ``missing_adopted_key``.
A job's steps say what a sync found; this says what the cluster shows between syncs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

MISSING_MASTER_KEY = "missing_master_key"
MISSING_ADOPTED_KEY = "missing_adopted_key"
EXTRA_ACTIVE_KEY = "extra_active_key"
SEALING_KEY_NOT_NEWEST_MASTER = "sealing_key_not_newest_master"
CONTROLLER_SELF_RENEWAL = "controller_self_renewal"

REASONS: tuple[str, ...] = (MISSING_MASTER_KEY, MISSING_ADOPTED_KEY, EXTRA_ACTIVE_KEY,
                            SEALING_KEY_NOT_NEWEST_MASTER, CONTROLLER_SELF_RENEWAL)


@dataclasses.dataclass(frozen=True)
class DriftReason:
    reason: str
    fingerprint: str | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class ClusterDrift:
    missing: tuple[str, ...]
    extra: tuple[str, ...]
    sealing_key_outside_master_set: bool
    reasons: tuple[DriftReason, ...]

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
    reasons = [DriftReason(MISSING_MASTER_KEY, fp) for fp in missing]
    reasons += [DriftReason(MISSING_ADOPTED_KEY, fp) for fp in missing_adopted]
    reasons += [DriftReason(EXTRA_ACTIVE_KEY, fp) for fp in extra]
    if sealing_key is not None and (outside or (newest_master is not None
                                                and sealing_key != newest_master)):
        reasons.append(DriftReason(SEALING_KEY_NOT_NEWEST_MASTER, sealing_key,
                                   f"the newest master key is {newest_master}" if newest_master
                                   else "outside the master set"))
    if key_renew_seconds:
        reasons.append(DriftReason(CONTROLLER_SELF_RENEWAL, None,
                                   f"--key-renew-period={key_renew_seconds}s"))
    return ClusterDrift(missing=missing, extra=extra, sealing_key_outside_master_set=outside,
                        reasons=tuple(reasons))
