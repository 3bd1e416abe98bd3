"""What one cluster's tasks share, in one place: its state, its pacing and its dependencies.

A session runs several tasks at once (the watches, the controller probe, the verifier,
the write-behind); they meet only through :class:`ClusterState`, which each of them is
handed explicitly.  Everything here lives on the event loop thread: no locks needed
beyond the write-behind's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from sealfleet.adapters import retry
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import ClusterRegistration
from sealfleet.app.attributing import Attributor
from sealfleet.app.cluster.inventory import ClusterInventory
from sealfleet.app.config import ClusterSettings, FleetSettings
from sealfleet.app.keystore import Keystore
from sealfleet.domain.controller_state import ControllerState
from sealfleet.domain.key_secrets import KeySecret
from sealfleet.domain.keys import SealingKeySource
from sealfleet.domain.observed import Ref
from sealfleet.domain.staleness import KeyContext

# Not in the config: the apiserver ends a watch after this long (its own default is a
# random 30-60 min); five minutes keeps a half-dead connection from hiding for long.
WATCH_TIMEOUT_SECONDS = 300


@dataclass(frozen=True)
class WorkerOptions:
    """Pacing of one worker; :meth:`from_settings` is the only place they are read."""

    backoff: retry.BackoffPolicy
    resync_interval: float
    request_timeout: float
    watch_timeout: int = WATCH_TIMEOUT_SECONDS

    @classmethod
    def from_settings(cls, fleet: FleetSettings) -> WorkerOptions:
        return cls(backoff=retry.BackoffPolicy(initial=fleet.backoff_initial_seconds,
                                               cap=fleet.backoff_max_seconds),
                   resync_interval=fleet.resync_interval_seconds,
                   request_timeout=fleet.request_timeout_seconds)


@dataclass(frozen=True)
class Deps:
    """What a cluster worker uses of the fleet: shared by every cluster."""

    store: Store
    keystore: Keystore
    attributor: Attributor
    options: WorkerOptions
    on_change: Callable[[], None]      # the inventory changed: the API rebuilds its report
    on_progress: Callable[[], None]    # a loop turned: the systemd watchdog is fed
    on_scanned: Callable[[], None]     # a session scanned its cluster (the heap counts them)


@dataclass
class ClusterState:
    """One cluster as its worker knows it between events."""

    cluster: ClusterSettings
    inventory: ClusterInventory
    reachable: bool | None = None
    last_error: str | None = None
    sealing_key: str | None = None
    sealing_key_source: SealingKeySource | None = None
    controller_problem: str | None = None   # why the controller cannot be used, if so
    controller_state: ControllerState | None = None   # None until probed
    key_renew_seconds: int | None = None   # its --key-renew-period (None: unknown)
    # What the store last got from a failed session (None after a good one): a cluster
    # failing the same way again is not written again.
    recorded_failure: tuple[object, ...] | None = None
    key_problems: dict[str, str] = field(default_factory=dict)  # Secret name -> why not a key
    holdings: dict[str, KeySecret] = field(default_factory=dict)  # key Secrets, by name
    proxy: str | None = None              # service proxy name of the controller
    # Where the cluster is reached (set when a session connects), and what the store
    # last got of it: the next status write carries it only when the two differ.
    registration: ClusterRegistration | None = None
    registered: ClusterRegistration | None = None
    resume: bool = False                  # may the next session resume stored watches?
    first_pass: asyncio.Event = field(default_factory=asyncio.Event)
    _verify_queue: asyncio.Queue[Ref] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def verify_queue(self) -> asyncio.Queue[Ref]:
        """Least-privilege mode's objects to ask the controller about, made when first
        used: a Queue is four deques and an Event, some 3 KB per cluster that a fleet
        reading its key Secrets never needs."""
        if self._verify_queue is None:
            self._verify_queue = asyncio.Queue()
        return self._verify_queue

    def key_context(self, keystore: Keystore) -> KeyContext:
        return KeyContext(sealing_key=self.sealing_key, compromised=keystore.compromised)
