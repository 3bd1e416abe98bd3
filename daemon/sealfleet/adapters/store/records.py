"""Plain records exchanged with the store: the contract between the store and its users.

Times are timezone-aware UTC datetimes; fingerprints are the controller's
``SHA256:...`` key ids.  No record ever carries plaintext or an unencrypted key,
except :class:`KeyMaterial` and :class:`LoadedKeys`, which exist only in memory on
their way in or out.  Every record is frozen; JSON-valued fields (job parameters,
audit details) are typed as :data:`JsonValue`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from sealfleet.domain.keys import SealingKey
from sealfleet.domain.observed import ManagedBy
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

JsonValue: TypeAlias = (str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"]
                        | None)
JsonObject: TypeAlias = Mapping[str, JsonValue]


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
    managed_by: ManagedBy | None = None   # the GitOps tool that applied it (migration 0007)

    @property
    def item_count(self) -> int:
        return len(self.items)


# ---------------------------------------------------------------- git (migration 0007)


@dataclass(frozen=True)
class GitRepoRecord:
    """A configured GitOps working tree with the outcome of its last scan."""

    name: str
    path: str
    is_git: bool | None                 # None = never scanned
    head_commit: str | None             # HEAD at the last scan (None: not a git tree)
    head_branch: str | None             # checked-out branch (None: detached, or not git)
    last_scan_at: dt.datetime | None
    last_error: str | None              # why the last scan failed or was skipped
    scan_duration_ms: int | None
    removed_at: dt.datetime | None = None

    @property
    def removed(self) -> bool:
        return self.removed_at is not None


@dataclass(frozen=True)
class GitFileRecord:
    """A file of a tree that matched the repo's paths, as last parsed."""

    repo: str
    path: str                           # relative to the tree, '/'-separated
    signature: str                      # what says it changed (blob hash, size, mtime)
    documents: int                      # non-empty documents of any kind
    error: str | None                   # why it does not parse (None = it parsed)
    scanned_at: dt.datetime


@dataclass(frozen=True)
class GitSealedSecretRecord:
    """One SealedSecret document of a file in a GitOps tree.

    *document* is the 0-based index among the file's non-empty documents (the order
    of ``documents.parse_documents``); *clusters* are the configured clusters whose
    keys should open it, and its *state* is judged against them.
    """

    repo: str
    path: str
    document: int
    namespace: str                      # '' when a cluster-wide document names none
    name: str
    scope: Scope
    ciphertext_fingerprint: str
    items: tuple[ItemFact, ...]
    clusters: tuple[str, ...]
    state: SecretState
    observed_at: dt.datetime
    malformed_reason: str | None = None

    @property
    def item_count(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class GitLink:
    """Where in Git an object comes from: a document of a file of a repo."""

    repo: str
    path: str
    document: int


# ---------------------------------------------------------------- inventory


@dataclass(frozen=True)
class ClusterRegistration:
    """Where a configured cluster is reached, as its row records it."""

    server: str | None
    controller_namespace: str = "kube-system"
    controller_name: str = "sealed-secrets-controller"


@dataclass(frozen=True)
class ClusterStatus:
    """A cluster's status row as a scan (or a failure) leaves it; None keeps what was
    recorded, except for the errors (see :meth:`Inventory.record_cluster_status`)."""

    reachable: bool
    last_error: str | None = None
    last_scan_at: dt.datetime | None = None
    scan_duration_ms: int | None = None
    sealing_key: str | None = None
    sealing_key_source: str | None = None
    controller_error: str | None = None
    controller_state: str | None = None
    key_renew_seconds: int | None = None
    registration: ClusterRegistration | None = None


@dataclass(frozen=True)
class ClusterRecord:
    """A cluster as configured, with the outcome of its last scan."""

    name: str
    server: str | None
    controller_namespace: str
    controller_name: str
    reachable: bool | None              # None = never scanned
    last_error: str | None
    last_scan_at: dt.datetime | None
    scan_duration_ms: int | None
    sealing_key: str | None             # fingerprint the controller seals with now
    sealing_key_source: str | None      # 'cert.pem' | 'newest-active'
    removed_at: dt.datetime | None      # set when dropped from the config
    controller_error: str | None = None  # why the controller cannot be asked, if so
    controller_state: str | None = None  # domain.controller_state.ControllerState value
    controller_key_renew_seconds: int | None = None  # --key-renew-period; None: unknown

    @property
    def removed(self) -> bool:
        return self.removed_at is not None


@dataclass(frozen=True)
class MalformedKeySecret:
    """A Secret in the controller namespace that looks like a key Secret but is not one."""

    secret_name: str
    reason: str                          # names the field; never a value
    observed_at: dt.datetime


@dataclass(frozen=True)
class KeyHoldings:
    """The key Secrets one cluster holds, whole (what replaces the stored ones), and
    those that look like keys but are not."""

    holdings: tuple[KeyHolding, ...]
    malformed: tuple[MalformedKeySecret, ...] = ()


# ---------------------------------------------------------------- keys


@dataclass(frozen=True)
class KeyUsage:
    """How much of the inventory one key sealed, and which clusters hold it."""

    clusters: tuple[str, ...] = ()      # holding clusters, by name
    items: int = 0                      # encryptedData items it opens
    sealed_secrets: int = 0             # SealedSecrets with at least one such item


@dataclass(frozen=True)
class RejectedKey:
    """A stored private key that was not loaded (or not stored), and why.

    The reason names fingerprints and what did not match, never key material.
    """

    fingerprint: str
    reason: str


@dataclass(frozen=True)
class LoadedKeys:
    """The stored private keys that loaded, and the rows that did not.

    One bad row never keeps the others from loading: it is listed in *rejected*.
    """

    keys: tuple[SealingKey, ...] = field(default=(), repr=False)
    rejected: tuple[RejectedKey, ...] = ()


@dataclass(frozen=True)
class QuarantinedKey:
    """Key material moved out of the keystore because it contradicted its own row.

    Its ciphertext is kept (still under the KEK) in ``quarantined_key_material``
    for an operator to inspect; the key's row no longer claims a private key.
    """

    fingerprint: str
    reason: str
    quarantined_at: dt.datetime


# ---------------------------------------------------------------- audit and jobs


@dataclass(frozen=True)
class AuditEntry:
    """One append-only audit log entry (details never hold secrets)."""

    id: int
    at: dt.datetime
    event: str
    actor: str
    details: JsonObject


@dataclass(frozen=True)
class JobRecord:
    """A journalled job and how many of its objects are in each state."""

    id: str
    kind: str
    state: str                          # pending | running | succeeded | failed | cancelled
    params: JsonObject
    error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    items: Mapping[str, int]            # item state -> count (states with none left out)
    actor: str = "sealfleet"            # who asked: token name, local user, or sealfleet
    result: JsonObject = field(default_factory=dict)   # the outcome's details
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


@dataclass(frozen=True)
class JobTally:
    """How many journalled jobs of one kind are in one state (for metrics)."""

    kind: str
    state: str
    count: int
    last_at: dt.datetime                # newest finished_at (unfinished: last update)


@dataclass(frozen=True)
class JobItem:
    """One object a job touches, with its progress."""

    ref: str                            # e.g. "cluster/namespace/name"
    state: str                          # pending | running | done | failed | skipped
    attempt: int                        # how often it was moved to 'running'
    error: str | None
    updated_at: dt.datetime
    detail: JsonObject = field(default_factory=dict)   # what the step found or did


# ---------------------------------------------------------------- the store itself


@dataclass(frozen=True)
class StoreHealth:
    """Whether the last write reached the database; for /readyz and logs.

    A failed write sets it (first failure time kept while failures continue); the
    next successful write clears it.
    """

    last_error: str | None = None
    failing_since: dt.datetime | None = None
    consecutive_failures: int = 0

    @property
    def ok(self) -> bool:
        return self.failing_since is None
