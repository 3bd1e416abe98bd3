"""One run of the controller container: from start (load keys) to exit (crash or kill).

Everything a real controller process keeps in memory lives here and dies with it: the
key registry, the renewal timer, the work queue, the rate limiter.  Starting a new
process is how the emulation picks up key Secrets added, removed or relabelled since the
last start -- exactly the restart the real controller needs (unless ``--watch-for-secrets``,
which adds keys only).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import structlog

from sealfleet.domain import keys as keys_domain
from sealfleet.sandbox.controller import events
from sealfleet.sandbox.controller.flags import ORDER_BY_CREATION, ControllerFlags
from sealfleet.sandbox.controller.http_api import ControllerHttp
from sealfleet.sandbox.controller.keyring import (
    ControllerCrash,
    KeyRegistry,
    key_secret_selected,
    parse_key_secret,
    parse_timestamp,
    write_new_key,
)
from sealfleet.sandbox.controller.metrics import ControllerMetrics
from sealfleet.sandbox.controller.unsealing import SyncKnowledge, Unsealer
from sealfleet.sandbox.objects import ObjectStore

_log = structlog.get_logger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ControllerProcess:
    """The emulated ``controller`` binary, started by the workload's kubelet loop."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        namespace: str,
        flags: ControllerFlags,
        metrics: ControllerMetrics,
        knowledge: SyncKnowledge,
        executor: Executor,
        cluster: str,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._flags = flags
        self._cluster = cluster
        self._executor = executor
        self.registry = KeyRegistry(flags)
        self.unsealer = Unsealer(
            store=store,
            registry=self.registry,
            flags=flags,
            metrics=metrics,
            recorder=events.EventRecorder(store),
            knowledge=knowledge,
            executor=executor,
        )
        self.http = ControllerHttp(
            registry=self.registry, flags=flags, metrics=metrics, executor=executor
        )
        self.serving = asyncio.Event()
        self._crash: ControllerCrash | None = None
        self._crashed = asyncio.Event()

    async def run(self) -> None:
        """Start, serve until cancelled; raises ControllerCrash when the process dies."""
        await self._load_keys()
        if self.registry.needs_key_at_start(utcnow()):
            await self.generate_key()
        self._store.add_listener(self._on_store_event)
        try:
            queued = self.unsealer.initial_sync()
            _log.info(
                "sandbox_controller_started",
                cluster=self._cluster,
                keys=len(self.registry.keys),
                queued=queued,
            )
            self.serving.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(self.unsealer.run(), name=f"{self._cluster}-unseal")
                group.create_task(self._renew_forever(), name=f"{self._cluster}-renewal")
                group.create_task(self._die_on_crash(), name=f"{self._cluster}-crash")
        except* ControllerCrash as group_error:
            raise group_error.exceptions[0] from None
        finally:
            self._store.remove_listener(self._on_store_event)

    async def _load_keys(self) -> None:
        secrets, _ = self._store.list("secrets", self._namespace)
        prefix = self._flags.key_prefix
        selected = [s for s in secrets if key_secret_selected(s, prefix)]
        # PEM parsing of 4096-bit keys is not free: parse on a thread, register here.
        parsed = await asyncio.get_running_loop().run_in_executor(
            self._executor, _parse_all, selected
        )
        selected.sort(key=lambda s: s["metadata"].get("creationTimestamp") or "")
        by_name = {str(s["metadata"]["name"]): key for s, key in parsed}
        for secret in selected:
            name = str(secret["metadata"]["name"])
            self.registry.register(by_name[name], self._ordering_time(secret, by_name[name]), name)

    def _ordering_time(self, secret: Mapping[str, Any], key: keys_domain.SealingKey) -> dt.datetime:
        if self._flags.key_order_priority == ORDER_BY_CREATION:
            return parse_timestamp(secret["metadata"].get("creationTimestamp"))
        return key.not_before

    async def generate_key(self) -> str:
        """``GeneratePrivateKeyAndCert`` + ``writeKey``; ordering time is now."""
        flags = self._flags
        key = await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: keys_domain.generate_sealing_key(
                bits=flags.key_size, common_name=flags.my_cn, ttl=flags.key_ttl
            ),
        )
        name = write_new_key(self._store, self._namespace, flags, key)
        self.registry.register(key, utcnow(), name)
        _log.info(
            "sandbox_controller_key_generated",
            cluster=self._cluster,
            secret=name,
            fingerprint=key.fingerprint,
        )
        return name

    async def _renew_forever(self) -> None:
        delay = self.registry.first_renewal_delay(utcnow())
        if delay is None:
            await asyncio.Event().wait()  # renewal disabled: nothing to do until exit
            return
        while True:
            await asyncio.sleep(delay.total_seconds())
            try:
                await self.generate_key()
            except ControllerCrash as exc:
                # At runtime a failed renewal is logged, not fatal.
                _log.warning(
                    "sandbox_controller_renewal_failed", cluster=self._cluster, error=str(exc)
                )
            delay = self._flags.key_renew_period

    async def _die_on_crash(self) -> None:
        await self._crashed.wait()
        assert self._crash is not None
        raise self._crash

    def _on_store_event(self, event_type: str, resource: str, obj: Mapping[str, Any]) -> None:
        if (
            self._flags.watch_for_secrets
            and resource == "secrets"
            and event_type == "ADDED"
            and (obj.get("metadata") or {}).get("namespace") == self._namespace
            and ((obj.get("metadata") or {}).get("labels") or {}).get(keys_domain.KEY_LABEL)
            == keys_domain.KEY_LABEL_ACTIVE
        ):
            try:
                self.registry.register_secret(obj)
            except ControllerCrash as exc:
                self._crash = exc
                self._crashed.set()
        self.unsealer.on_store_event(event_type, resource, obj)


def _parse_all(
    secrets: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], keys_domain.SealingKey]]:
    return [(secret, parse_key_secret(secret)) for secret in secrets]
