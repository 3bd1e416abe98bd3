"""Staleness: how old are a cluster's keys, and which SealedSecrets use which.

Pure functions of (policy, inventory facts).  ``classify`` is what the cluster
workers store per SealedSecret; the fleet report is built from those states.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence


class SecretState(enum.StrEnum):
    """Per-SealedSecret verdict, most severe first (the first that applies wins)."""

    COMPROMISED = "compromised"  # an item is sealed with a key marked compromised
    FAILING = "failing"          # the controller reports Synced=False
    UNKNOWN = "unknown"          # an item opens with no known key
    STALE = "stale"              # an item is sealed with a key older than the sealing key
    CURRENT = "current"          # every item is sealed with the cluster's sealing key


def classify(item_keys: Sequence[str | None], *, sealing_key: str | None,
             compromised: Collection[str], synced: bool | None) -> SecretState:
    """Classify one SealedSecret.

    *item_keys* holds, per item, the fingerprint of the key that sealed it (None when
    no known key opens it).  *sealing_key* is the fingerprint the cluster seals with
    now; when it is not known yet, attributed items count as current rather than
    guessing.  *synced* is the controller's Synced condition (None when unreported).
    """
    if any(key is not None and key in compromised for key in item_keys):
        return SecretState.COMPROMISED
    if synced is False:
        return SecretState.FAILING
    if any(key is None for key in item_keys):
        return SecretState.UNKNOWN
    if sealing_key is not None and any(key != sealing_key for key in item_keys):
        return SecretState.STALE
    return SecretState.CURRENT
