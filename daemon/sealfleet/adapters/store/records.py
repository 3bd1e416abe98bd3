"""Plain records exchanged with the store: the contract between the store and its users.

Times are timezone-aware UTC datetimes; fingerprints are the controller's
``SHA256:...`` key ids.  No record ever carries plaintext or an unencrypted key,
except :class:`KeyMaterial`, which exists only in memory on its way in or out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sealfleet.domain.keys import SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState


@dataclass(frozen=True)
class KeyRecord:
    """A sealing key known to the fleet (public facts only)."""

    fingerprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    source: str                   # 'cluster' | 'generated' | 'imported' | 'cert-only'
    state: str = "active"         # 'active' | 'retired' | 'compromised'
    fleet_master: bool = False
    has_private_key: bool = False
    certificate_pem: str | None = None


@dataclass(frozen=True)
class KeyMaterial:
    """A key with its private half, to be encrypted under the KEK before it is stored."""

    key: SealingKey = field(repr=False)
    source: str


@dataclass(frozen=True)
class KeyHolding:
    """One key Secret observed in a cluster's controller namespace."""

    fingerprint: str
    secret_name: str
    label_value: str | None       # value of the sealed-secrets-key label; None = legacy name only
    resource_version: str
    creation_timestamp: dt.datetime | None
    observed_at: dt.datetime


@dataclass(frozen=True)
class ItemFact:
    """One encryptedData item: its name, attribution cache key, and the key that sealed it."""

    item: str
    item_hash: str
    fingerprint: str | None       # None = no known key opens it


@dataclass(frozen=True)
class SealedSecretRecord:
    """One SealedSecret as last observed in a cluster."""

    cluster: str
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    scope: Scope
    ciphertext_fingerprint: str
    items: tuple[ItemFact, ...]
    state: SecretState
    synced: bool | None
    synced_message: str | None
    observed_at: dt.datetime
    malformed_reason: str | None = None   # set when the object could not be parsed

    @property
    def item_count(self) -> int:
        return len(self.items)
