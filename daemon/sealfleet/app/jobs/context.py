"""What executors work with: the store, the keystore, the current settings, and a way
to reach a cluster's apiserver (the same client code the collect side uses)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.store import Store
from sealfleet.app.config import ClusterSettings, Settings
from sealfleet.app.keystore import Keystore
from sealfleet.errors import RefusedError


@dataclass(frozen=True)
class JobContext:
    store: Store
    keystore: Keystore
    settings: Callable[[], Settings]     # the settings in force now (SIGHUP may change them)

    def cluster(self, name: str) -> ClusterSettings:
        for cluster in self.settings().clusters:
            if cluster.name == name:
                return cluster
        raise RefusedError(f"no cluster named {name!r} in the config")

    @contextlib.asynccontextmanager
    async def connect(self, cluster: ClusterSettings) -> AsyncIterator[KubeClient]:
        timeout = self.settings().fleet.request_timeout_seconds
        async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                      request_timeout=timeout) as client:
            yield client
