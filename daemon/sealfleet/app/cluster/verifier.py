"""Least-privilege mode (``read_key_secrets = false``): ask the controller.

The worker reads no Secret at all.  Items are still attributed with the keys the fleet
knows from elsewhere (other clusters, the keystore); a SealedSecret with items no known
key opens is asked about at the controller's ``/v1/verify`` (rate limited upstream:
429 and Retry-After are honoured by the retry helper, one request at a time).  Such
items keep ``fingerprint = None`` ("unknown but verified"); the SealedSecret stays
``unknown`` when the controller can decrypt it and becomes ``failing`` when it cannot.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from sealfleet.adapters import retry
from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import KubeClient, NotFound
from sealfleet.app.cluster.state import ClusterState, Deps
from sealfleet.errors import FleetError

log = structlog.get_logger(__name__)

_ATTEMPTS = 8


class Verifier:
    def __init__(self, state: ClusterState, deps: Deps) -> None:
        self._state = state
        self._deps = deps

    async def run(self, client: KubeClient) -> None:
        state, options = self._state, self._deps.options
        namespace = state.cluster.controller_namespace
        while True:
            ref = await state.verify_queue.get()
            entry = state.inventory.get(ref)
            proxy = state.proxy
            if entry is None or not entry.has_unknown or proxy is None:
                continue
            try:
                obj = await client.get_json(controller.sealed_secret_path(*ref))
            except NotFound:
                continue

            async def ask(obj: dict[str, Any] = obj, proxy: str = proxy) -> bool:
                return await controller.verify(client, namespace, proxy, obj)

            try:
                decryptable = await retry.retry_call(ask, policy=options.backoff,
                                                     attempts=_ATTEMPTS)
            except FleetError as error:
                # The controller is busy or down: ask again later, keep the session.
                log.info("verify_deferred", namespace=ref[0], name=ref[1], error=str(error))
                state.verify_queue.put_nowait(ref)
                await asyncio.sleep(options.backoff.cap / 10)
                continue
            self._deps.on_progress()
            entry.verified = decryptable
            state.inventory.reclassify(entry, state.key_context(self._deps.keystore))
