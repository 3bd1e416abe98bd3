"""A cluster's SealedSecrets as a reseal step reads them: one list, an object's path, its
generation and Synced condition, and :class:`Patience` (calls retried while the cluster
is unreachable, under one deadline for the whole step)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import structlog

from sealfleet.adapters import retry
from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.errors import TransientError

log = structlog.get_logger(__name__)

_BACKOFF = retry.BackoffPolicy(initial=0.5, cap=5.0)
_ATTEMPTS = 6                # transient failures per call when nothing waits (verification)
PAUSE_LIMIT = 600.0          # seconds a cluster may stay unreachable before its step fails
T = TypeVar("T")


def object_path(namespace: str, name: str) -> str:
    return controller.sealed_secret_path(namespace, name)


def synced_state(obj: Mapping[str, Any]) -> tuple[int | None, str | None, str | None]:
    """(observedGeneration, Synced status, its message) from an object's status."""
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Synced":
            return (observed if isinstance(observed, int) else None,
                    str(condition.get("status")), condition.get("message"))
    return (observed if isinstance(observed, int) else None, None, None)


def generation_of(obj: Mapping[str, Any]) -> int:
    value = (obj.get("metadata") or {}).get("generation")
    return value if isinstance(value, int) else 0


async def list_now(client: KubeClient) -> dict[str, dict[str, Any]]:
    """Every SealedSecret of the cluster by ``namespace/name`` (one paginated list)."""
    return (await list_now_at(client))[0]


async def list_now_at(client: KubeClient) -> tuple[dict[str, dict[str, Any]], str | None]:
    """:func:`list_now` and the list's resourceVersion (a watch from it misses nothing)."""
    found: dict[str, dict[str, Any]] = {}
    version: str | None = None
    async for page in client.list_pages(controller.SEALED_SECRETS_PATH):
        version = version or page.resource_version or None
        for obj in page.items:
            meta = obj.get("metadata") or {}
            found[f"{meta.get('namespace', '')}/{meta.get('name', '')}"] = obj
    return found, version


async def list_objects(client: KubeClient) -> dict[str, dict[str, Any]]:
    """:func:`list_now`, a few transient failures retried."""
    return await retry.retry_call(functools.partial(list_now, client), policy=_BACKOFF,
                                  attempts=_ATTEMPTS)


class Patience:
    """Calls to one cluster retried while it is unreachable, up to one deadline for the
    whole step: its part of the job pauses while the other clusters' steps go on."""

    def __init__(self, cluster: str, limit: float = PAUSE_LIMIT) -> None:
        self._cluster = cluster
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + limit
        self._paused = False

    def _on_retry(self, error: TransientError, delay: float) -> None:
        if not self._paused:
            self._paused = True
            log.warning("reseal_cluster_paused", cluster=self._cluster, error=str(error))

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout_at(self._deadline):
                result = await retry.retry_call(fn, policy=_BACKOFF, on_retry=self._on_retry)
        except TimeoutError:
            raise TransientError(f"cluster {self._cluster} unreachable for "
                                 f"{self._limit:.0f}s") from None
        if self._paused:
            self._paused = False
            log.info("reseal_cluster_resumed", cluster=self._cluster)
        return result
