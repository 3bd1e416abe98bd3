"""Observing a cluster's key Secrets: which keys it holds, and the private keys the fleet
learns from them.

The controller namespace's Secrets with the key label, plus the legacy one named
exactly ``sealed-secrets-key`` (the controller loads it whatever its label), are
listed, then watched.  Each is read cheaply (fingerprint, certificate; the private key
only when the fleet does not hold it yet) and handed to the keystore; a Secret that
cannot be a key (unparseable, or a ``tls.crt`` of another key) is recorded with its
reason and never taken as a key.  After every change the controller is probed again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog

from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import Gone, KubeClient, NotFound
from sealfleet.adapters.store.records import KeyHolding, KeyHoldings, MalformedKeySecret
from sealfleet.app.cluster.state import ClusterState, Deps
from sealfleet.app.cluster.write_behind import WriteBehind
from sealfleet.domain import key_secrets
from sealfleet.domain import keys as domain_keys
from sealfleet.errors import InputError

log = structlog.get_logger(__name__)

RESOURCE = "secrets"


class KeySecretObserver:
    def __init__(self, state: ClusterState, deps: Deps, writer: WriteBehind, *,
                 after_change: Callable[[KubeClient], Awaitable[None]]) -> None:
        self._state = state
        self._deps = deps
        self._writer = writer
        self._after_change = after_change

    def _path(self) -> str:
        return controller.secrets_path(self._state.cluster.controller_namespace)

    async def list(self, client: KubeClient) -> str:
        """List the key Secrets (and the legacy one); returns the list resourceVersion."""
        path = self._path()
        secrets: list[dict[str, Any]] = []
        resource_version = ""
        async for page in client.list_pages(path, label_selector=domain_keys.KEY_LABEL):
            secrets.extend(page.items)
            resource_version = page.resource_version
        try:
            legacy = await client.get_json(f"{path}/{domain_keys.DEFAULT_KEY_PREFIX}")
        except NotFound:
            legacy = None
        if isinstance(legacy, dict) and not any(
                _name(s) == domain_keys.DEFAULT_KEY_PREFIX for s in secrets):
            secrets.append(legacy)
        self._state.holdings.clear()
        self._state.key_problems.clear()
        await self._observe(secrets)
        return resource_version

    async def follow(self, client: KubeClient, resource_version: str, *,
                     on_open: Callable[[], None] | None = None) -> None:
        """Watch from *resource_version* on; *on_open* each time the watch streams."""
        while True:
            try:
                async with contextlib.aclosing(client.watch(
                        self._path(), resource_version=resource_version,
                        label_selector=domain_keys.KEY_LABEL,
                        timeout_seconds=self._deps.options.watch_timeout,
                        on_open=on_open)) as events:
                    async for event in events:
                        self._deps.on_progress()
                        resource_version = event.resource_version or resource_version
                        if event.type == "BOOKMARK":
                            continue
                        if event.type == "DELETED":
                            await self._observe([], deleted=[_name(event.object)])
                        else:
                            await self._observe([event.object])
                        await self._after_change(client)
            except Gone:
                log.info("watch_expired", resource=RESOURCE)
                resource_version = await self.list(client)
                await self._after_change(client)

    async def _observe(self, secrets: Iterable[Mapping[str, Any]],
                       deleted: Iterable[str] = ()) -> None:
        """Record the key Secrets seen; the keystore parses (slowly) only keys new to it."""
        state = self._state
        for name in deleted:
            state.holdings.pop(name, None)
            state.key_problems.pop(name, None)
        observed: list[key_secrets.KeySecret] = []
        for secret in secrets:
            name = _name(secret)
            state.holdings.pop(name, None)
            try:
                found = key_secrets.read_key_secret(secret)
                problem = found.problem
            except InputError as error:
                problem = str(error)
            if problem is not None:
                if state.key_problems.get(name) != problem:
                    log.warning("key_secret_malformed", secret=name, reason=problem)
                state.key_problems[name] = problem
                continue
            state.key_problems.pop(name, None)
            observed.append(found)
            # The cluster's state keeps the public facts only: the private key goes to
            # the keystore (once, fleet-wide), not into every cluster's memory for good.
            state.holdings[name] = dataclasses.replace(found, secret={})
        await self._deps.keystore.observe_key_secrets(observed)
        now = dt.datetime.now(dt.UTC)
        # Written by the write-behind's next flush (a session's first one: the scan's
        # last), which also tells the report, once they are in.
        self._writer.note_holdings(KeyHoldings(tuple(KeyHolding(
            fingerprint=k.fingerprint, secret_name=k.name, label_value=k.label,
            resource_version=k.resource_version, creation_timestamp=k.creation_timestamp,
            observed_at=now) for k in state.holdings.values()), tuple(
            MalformedKeySecret(secret_name=name, reason=reason, observed_at=now)
            for name, reason in sorted(state.key_problems.items()))))


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("name") or "") if isinstance(metadata, Mapping) else ""
