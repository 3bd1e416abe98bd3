"""The state one emulated apiserver's handlers share, passed to them explicitly.

Kept apart from the server (which owns sockets and lifecycles) so that request handlers
depend on data, not on the object that starts and stops them.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Awaitable, Callable

from aiohttp import web

from sealfleet.sandbox.apiserver.auth import Tokens
from sealfleet.sandbox.apiserver.faults import Faults
from sealfleet.sandbox.objects import ObjectStore, WatchStream

ServiceHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# As the real apiserver's watch cache (cacher.go, defaultBookmarkFrequency): a bookmark a
# minute on an idle watch, and one before its timeout.  Every few seconds instead was
# 400 bookmarks a second for a fleet of 1,000 clusters, load neither side has for real.
DEFAULT_BOOKMARK_INTERVAL = 60.0


@dataclasses.dataclass
class ClusterContext:
    store: ObjectStore
    tokens: Tokens
    controller_namespace: str = "kube-system"
    bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL
    faults: Faults = dataclasses.field(default_factory=Faults)
    rng: random.Random = dataclasses.field(default_factory=random.Random)
    service_handlers: dict[tuple[str, str], ServiceHandler] = dataclasses.field(
        default_factory=dict
    )
    # Open watch streams: closed when the server stops or goes into outage, which ends them.
    active_watches: set[WatchStream] = dataclasses.field(default_factory=set)
    server_address: str = "127.0.0.1:0"
    # Resource requests received, by (verb, resource): e.g. ("list", "sealedsecrets").
    requests: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter
    )

    def end_watches(self) -> None:
        for stream in list(self.active_watches):
            stream.close()
