"""One cluster's worker: keep its slice of the inventory current, whatever the cluster does.

A session (one connection) does a scan, then follows the cluster:

1. the key Secrets of the controller namespace (label selector plus the legacy
   ``sealed-secrets-key`` name): private keys go encrypted to the store and into the
   fleet-wide keyring, the set the cluster holds to ``replace_cluster_keys``;
2. the controller: Deployment, Service, then ``/v1/cert.pem`` through the service
   proxy to learn the sealing key (fallback: the active key with the newest NotBefore);
3. SealedSecrets in all namespaces: resumed by a watch from the stored resourceVersion
   when the server still has it, else a paginated list; every changed object is
   parsed, attributed, classified and written in batches;
4. then watches (bookmarks, relist on 410) until ``resync_interval`` calls for a
   fresh list, or an error ends the session.

Errors end the session, never the worker: the cluster is marked unreachable with its
last error (logged once on failure and once on recovery), waits with jittered
exponential backoff, and starts a new session.  A malformed SealedSecret is recorded
with its reason and state ``unknown``; it never ends anything.

Least-privilege mode (``read_key_secrets = false``): the worker reads no Secret at
all.  Items are still attributed with the keys the fleet knows from elsewhere (other
clusters, the keystore); a SealedSecret with items no known key opens is asked about
at the controller's ``/v1/verify`` (rate limited: 429 and Retry-After are honoured by
the retry helper, one request at a time).  Such items keep ``fingerprint = None``
("unknown but verified"); the SealedSecret's state stays ``unknown`` when the
controller can decrypt it and becomes ``failing`` when it cannot.  The cluster's
staleness is then judged from its key set as far as it is visible: the sealing key
from ``/v1/cert.pem``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from sealfleet.adapters import retry
from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import Gone, KubeClient, NotFound
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import ItemFact, KeyHolding, KeyMaterial, KeyRecord
from sealfleet.app import inventory, key_secrets
from sealfleet.app.attributing import Attributor, ItemRequest
from sealfleet.domain import keys as domain_keys
from sealfleet.domain.staleness import SecretState, classify
from sealfleet.errors import FleetError, InputError, PermanentError, TransientError

log = structlog.get_logger(__name__)

SEALED_RESOURCE = "sealedsecrets.bitnami.com"
KEYS_RESOURCE = "secrets"
_FLUSH_INTERVAL = 0.2      # seconds: watch events are written in batches this often
_FLUSH_SIZE = 500          # ... or as soon as this many records are pending
_CONTROLLER_POLL = 60.0    # seconds between cert.pem checks between key events


class _ResyncDue(Exception):
    """Internal: the resync interval has passed; end the session and list again."""


@dataclass(frozen=True)
class WorkerOptions:
    """Pacing of one worker (from ``[fleet]``)."""

    backoff: retry.BackoffPolicy = field(default_factory=retry.BackoffPolicy)
    resync_interval: float = 600.0
    request_timeout: float = 30.0
    watch_timeout: int = 300


class ClusterWorker:
    """Keeps one cluster's inventory current; :meth:`run` never returns."""

    def __init__(self, cluster: Any, *, store: Store, attributor: Attributor,
                 options: WorkerOptions, on_change: Callable[[], None],
                 on_progress: Callable[[], None],
                 load_gate: asyncio.Semaphore | None = None) -> None:
        self.cluster = cluster
        self._load_gate = load_gate or asyncio.Semaphore(1)
        self.name: str = cluster.name
        self._store = store
        self._attributor = attributor
        self._keyring = attributor.keyring
        self._options = options
        self._on_change = on_change
        self._on_progress = on_progress
        self.first_pass = asyncio.Event()
        self.reachable: bool | None = None
        self.last_error: str | None = None
        self.inventory = inventory.ClusterInventory(self.name)
        self.sealing_key: str | None = None
        self.sealing_key_source: str | None = None
        self._holdings: dict[str, key_secrets.KeySecret] = {}  # by Secret name
        self._proxy: str | None = None
        self._controller_ok: bool | None = None
        self._keys_event = asyncio.Event()
        self._seen_epoch = self._keyring.epoch
        self._seen_compromised = self._keyring.compromised
        self._flush_lock = asyncio.Lock()
        self._pending_rv: dict[str, str] = {}
        self._verify_queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._resume = False  # may the next session resume from the stored resourceVersion?

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Sessions forever; failures are marked, logged once, and backed off."""
        self._keys_event = self._keyring.subscribe()
        with structlog.contextvars.bound_contextvars(cluster=self.name):
            try:
                await self._load()
                backoff = retry.Backoff(self._options.backoff)
                while True:
                    try:
                        await self._session()
                    except _ResyncDue:
                        backoff.reset()
                        self._resume = False  # the point of a resync is a fresh list
                        continue
                    except FleetError as error:
                        await self._mark_failed(error)
                        if isinstance(error, TransientError):
                            delay = backoff.delay_for(error)
                        else:
                            delay = backoff.next_delay(self._options.backoff.cap / 2)
                        # Next session: try to resume the watch where it stopped.
                        self._resume = True
                        await asyncio.sleep(delay)
            finally:
                self._keyring.unsubscribe(self._keys_event)

    async def _load(self) -> None:
        """The stored inventory, so that unchanged objects cost nothing after a restart.

        One cluster at a time (the gate): full records are big, the entries kept small.
        """
        async with self._load_gate:
            records = await self._store.sealed_secrets_of_cluster(self.name)
            self.inventory.load(records)
            self._resume = bool(records)
            del records
        self._progress()

    async def _session(self) -> None:
        async with KubeClient.connect(str(self.cluster.kubeconfig), self.cluster.context,
                                      request_timeout=self._options.request_timeout) as client:
            started = time.monotonic()
            await self._store.upsert_cluster(
                self.name, server=client.server,
                controller_namespace=self.cluster.controller_namespace,
                controller_name=self.cluster.controller_name)
            keys_rv = await self._sync_keys(client) if self.cluster.read_key_secrets else None
            await self._sync_controller(client)
            sealed_rv = await self._scan_sealed(client)
            await self._flush()
            await self._mark_ok(int((time.monotonic() - started) * 1000))
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._follow_sealed(client, sealed_rv),
                                      name=f"{self.name}:watch-sealedsecrets")
                    if keys_rv is not None:
                        group.create_task(self._follow_keys(client, keys_rv),
                                          name=f"{self.name}:watch-keys")
                    group.create_task(self._poll_controller(client),
                                      name=f"{self.name}:controller")
                    group.create_task(self._flusher(), name=f"{self.name}:flush")
                    group.create_task(self._on_keyring_change(client),
                                      name=f"{self.name}:keyring")
                    if not self.cluster.read_key_secrets:
                        group.create_task(self._verifier(client), name=f"{self.name}:verify")
                    group.create_task(self._resync_timer(), name=f"{self.name}:resync")
            except BaseExceptionGroup as group_error:
                raise _first_error(group_error) from None
            finally:
                await asyncio.shield(self._flush())

    async def _resync_timer(self) -> None:
        await asyncio.sleep(self._options.resync_interval)
        raise _ResyncDue

    def _progress(self) -> None:
        self._on_progress()

    # ------------------------------------------------------------------ status

    async def _mark_failed(self, error: FleetError) -> None:
        message = str(error)
        if self.reachable is not False:
            log.warning("cluster_unreachable", error=message,
                        error_kind=type(error).__name__)
        self.reachable, self.last_error = False, message
        await self._store.record_cluster_status(
            self.name, reachable=False, last_error=message, last_scan_at=None,
            scan_duration_ms=None, sealing_key=self.sealing_key,
            sealing_key_source=self.sealing_key_source)
        self.first_pass.set()
        self._on_change()

    async def _mark_ok(self, duration_ms: int) -> None:
        if self.reachable is False:
            log.info("cluster_recovered", previous_error=self.last_error)
        log.info("cluster_scanned", duration_ms=duration_ms, sealed_secrets=len(self.inventory),
                 sealing_key=self.sealing_key, sealing_key_source=self.sealing_key_source)
        self.reachable, self.last_error = True, None
        await self._record_status(scan_duration_ms=duration_ms)
        self.first_pass.set()
        self._on_change()

    async def _record_status(self, *, scan_duration_ms: int | None = None) -> None:
        await self._store.record_cluster_status(
            self.name, reachable=self.reachable is not False, last_error=self.last_error,
            last_scan_at=dt.datetime.now(dt.UTC) if scan_duration_ms is not None else None,
            scan_duration_ms=scan_duration_ms, sealing_key=self.sealing_key,
            sealing_key_source=self.sealing_key_source)

    # ------------------------------------------------------------------ key Secrets

    async def _sync_keys(self, client: KubeClient) -> str:
        """List the key Secrets (and the legacy one); returns the list resourceVersion."""
        path = controller.secrets_path(self.cluster.controller_namespace)
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
        self._holdings = {}
        await self._observe_key_secrets(secrets)
        return resource_version

    async def _observe_key_secrets(self, secrets: Iterable[dict[str, Any]],
                                   deleted: Iterable[str] = ()) -> None:
        """Record the key Secrets seen; parse (slowly) only keys new to the fleet."""
        for name in deleted:
            self._holdings.pop(name, None)
        observed: list[key_secrets.KeySecret] = []
        for secret in secrets:
            try:
                observed.append(key_secrets.read_key_secret(secret))
            except InputError as error:
                log.warning("key_secret_unreadable", secret=_name(secret), error=str(error))
                self._holdings.pop(_name(secret), None)
        for found in observed:
            self._holdings[found.name] = found
        labelled = {k.fingerprint for k in observed if k.compromised}
        if labelled - self._keyring.compromised:
            # The cluster's own "compromised" label counts at once, fleet-wide.
            self._keyring.set_compromised(self._keyring.compromised | labelled)
        if observed:
            await self._store.upsert_keys([KeyRecord(
                fingerprint=k.fingerprint, not_before=k.not_before, not_after=k.not_after,
                source="cluster", state="compromised" if k.compromised else "active",
                has_private_key=True,
                certificate_pem=k.certificate.pem.decode() if k.certificate else None)
                for k in observed])
        loaded, new_to_store = [], []
        for found in observed:
            if self._keyring.get(found.fingerprint) is not None:
                continue  # loaded already
            try:
                key = await asyncio.to_thread(found.load)  # milliseconds, off the loop
            except InputError as error:
                log.warning("key_secret_unreadable", secret=found.name, error=str(error))
                continue
            loaded.append(key)
            if found.fingerprint not in self._keyring:
                new_to_store.append(key)
        if new_to_store:
            await self._store.store_key_material(
                [KeyMaterial(key=key, source="cluster") for key in new_to_store])
        new = self._keyring.add(loaded)
        if new:
            log.info("keys_learned", fingerprints=[k.fingerprint for k in new])
        now = dt.datetime.now(dt.UTC)
        await self._store.replace_cluster_keys(self.name, [KeyHolding(
            fingerprint=k.fingerprint, secret_name=k.name, label_value=k.label,
            resource_version=k.resource_version, creation_timestamp=k.creation_timestamp,
            observed_at=now) for k in self._holdings.values()])
        self._on_change()

    async def _follow_keys(self, client: KubeClient, resource_version: str) -> None:
        path = controller.secrets_path(self.cluster.controller_namespace)
        while True:
            try:
                async with contextlib.aclosing(client.watch(
                        path, resource_version=resource_version,
                        label_selector=domain_keys.KEY_LABEL,
                        timeout_seconds=self._options.watch_timeout)) as events:
                    async for event in events:
                        self._progress()
                        resource_version = event.resource_version or resource_version
                        if event.type == "BOOKMARK":
                            continue
                        if event.type == "DELETED":
                            await self._observe_key_secrets([], deleted=[_name(event.object)])
                        else:
                            await self._observe_key_secrets([event.object])
                        await self._sync_controller(client)
            except Gone:
                log.info("watch_expired", resource=KEYS_RESOURCE)
                resource_version = await self._sync_keys(client)
                await self._sync_controller(client)

    # ------------------------------------------------------------------ controller

    async def _sync_controller(self, client: KubeClient) -> None:
        """Learn the sealing key: ``/v1/cert.pem``, else the newest active key held."""
        namespace, name = self.cluster.controller_namespace, self.cluster.controller_name
        fingerprint, source, problem = None, None, None
        try:
            deployment = await controller.read_deployment(client, namespace, name)
            if not deployment.available:
                problem = f"deployment {namespace}/{name} has no ready replicas"
            self._proxy = await controller.proxy_name(client, namespace, name)
            certificate = await controller.fetch_certificate(client, namespace, self._proxy)
        except (NotFound, TransientError, PermanentError) as error:
            if isinstance(error, Gone):
                raise
            problem = str(error)
            # A down controller is not a down cluster: fall back, but a broken API
            # server (every call failing) is noticed by the watches and lists.
        else:
            fingerprint, source = certificate.fingerprint, "cert.pem"
            if fingerprint not in self._keyring and not self.cluster.read_key_secrets:
                await self._store.upsert_keys([KeyRecord(
                    fingerprint=fingerprint, not_before=certificate.not_before,
                    not_after=certificate.not_after, source="cert-only",
                    certificate_pem=certificate.pem.decode())])
        if fingerprint is None:
            fingerprint = self._newest_active_key()
            source = "newest-active" if fingerprint else None
        if problem is not None and self._controller_ok is not False:
            log.warning("controller_unavailable", error=problem, sealing_key_source=source)
        elif problem is None and self._controller_ok is False:
            log.info("controller_recovered")
        self._controller_ok = problem is None
        if (fingerprint, source) != (self.sealing_key, self.sealing_key_source):
            changed_key = fingerprint != self.sealing_key
            self.sealing_key, self.sealing_key_source = fingerprint, source
            if self.reachable is not None:
                await self._record_status()
            if changed_key:
                log.info("sealing_key_changed", sealing_key=fingerprint, source=source)
                self._reclassify_all()
            self._on_change()

    def _newest_active_key(self) -> str | None:
        """The controller's ``mostRecentKey``: latest NotBefore, ties kept by first seen."""
        newest: key_secrets.KeySecret | None = None
        for held in self._holdings.values():
            if held.active and (newest is None or held.not_before > newest.not_before):
                newest = held
        return newest.fingerprint if newest else None

    async def _poll_controller(self, client: KubeClient) -> None:
        while True:
            await asyncio.sleep(_CONTROLLER_POLL)
            self._progress()
            await self._sync_controller(client)

    # ------------------------------------------------------------------ SealedSecrets

    async def _scan_sealed(self, client: KubeClient) -> str:
        """Resume from the stored resourceVersion when there is one, else list."""
        stored = await self._store.get_watch_resource_version(self.name, SEALED_RESOURCE)
        if stored and self._resume:
            log.info("watch_resuming", resource=SEALED_RESOURCE, resource_version=stored)
            return stored
        return await self._relist_sealed(client)

    async def _relist_sealed(self, client: KubeClient) -> str:
        """A full paginated list; restarts from scratch when the continue token expires."""
        for _ in range(3):
            seen: set[tuple[str, str]] = set()
            resource_version = ""
            try:
                async for page in client.list_pages(controller.SEALED_SECRETS_PATH):
                    self._progress()
                    seen.update(inventory.ref_of(obj) for obj in page.items)
                    resource_version = page.resource_version
                    parsed = self._parse_changed(page.items, relist=True)
                    del page  # only the parsed essentials wait for RSA
                    await self._attribute_and_store(parsed)
                    del parsed
                    await self._flush()  # page by page: bounded memory, visible progress
            except Gone:
                log.info("list_expired", resource=SEALED_RESOURCE)
                continue
            for ref in self.inventory.refs() - seen:
                self.inventory.delete(ref)
            self._pending_rv[SEALED_RESOURCE] = resource_version
            return resource_version
        raise TransientError("list of sealedsecrets: continue token kept expiring")

    async def _follow_sealed(self, client: KubeClient, resource_version: str) -> None:
        while True:
            started = time.monotonic()
            try:
                async with contextlib.aclosing(client.watch(
                        controller.SEALED_SECRETS_PATH, resource_version=resource_version,
                        timeout_seconds=self._options.watch_timeout)) as events:
                    async for event in events:
                        self._progress()
                        resource_version = event.resource_version or resource_version
                        if event.type == "DELETED":
                            self.inventory.delete(inventory.ref_of(event.object))
                        elif event.type != "BOOKMARK":
                            await self._observe_sealed([event.object])
                        self._pending_rv[SEALED_RESOURCE] = resource_version
                        if self.inventory.pending_count() >= _FLUSH_SIZE:
                            await self._flush()
            except Gone:
                log.info("watch_expired", resource=SEALED_RESOURCE)
                await self._flush()
                resource_version = await self._relist_sealed(client)
                await self._flush()
                continue
            # The server ended the watch (its timeout): go on from where it stopped, but
            # never spin if it keeps closing at once.
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    async def _observe_sealed(self, objects: list[dict[str, Any]], *,
                              relist: bool = False, force: bool = False) -> None:
        """Parse, attribute and classify the objects that changed; queue their records."""
        await self._attribute_and_store(self._parse_changed(objects, relist=relist,
                                                            force=force), force=force)

    def _parse_changed(self, objects: list[dict[str, Any]], *, relist: bool = False,
                       force: bool = False) -> list[inventory.Parsed]:
        """The objects that changed, reduced to what the inventory needs (the full dicts
        can be dropped before the slow part: a page of them is megabytes)."""
        parsed: list[inventory.Parsed] = []
        for obj in objects:
            if not force and self.inventory.unchanged(obj, recheck_unknown=relist):
                continue
            result = inventory.parse(obj)
            if result.malformed_reason is not None and not result.items:
                self.inventory.note_malformed(result, dt.datetime.now(dt.UTC))
                continue
            parsed.append(result)
        return parsed

    async def _attribute_and_store(self, parsed: list[inventory.Parsed], *,
                                   force: bool = False) -> None:
        if not parsed:
            return
        groups = [[ItemRequest(h, c, p.label, p.sealed_at) for _, h, c in p.items]
                  for p in parsed]
        preferred = [self.sealing_key] if self.sealing_key else []
        held = {k.fingerprint for k in self._holdings.values()}
        answers = await self._attributor.attribute(groups, preferred=preferred, likely=held)
        del groups
        now = dt.datetime.now(dt.UTC)
        for result in parsed:
            if force:
                # A retry raced with the watch: never resurrect or regress an object.
                current = self.inventory.get(result.ref)
                if current is None or current.resource_version != result.resource_version:
                    continue
            items = tuple(ItemFact(item, h, answers.get(h)) for item, h, _ in result.items)
            entry = self.inventory.store_parsed(result, items, self._state_of, now)
            if entry.has_unknown and not self.cluster.read_key_secrets \
                    and entry.verified is None:
                self._verify_queue.put_nowait(entry.ref)

    def _state_of(self, entry: inventory.Entry) -> SecretState:
        state = classify(entry.item_keys, sealing_key=self.sealing_key,
                         compromised=self._keyring.compromised, synced=entry.synced)
        if entry.malformed and state is not SecretState.COMPROMISED:
            return SecretState.UNKNOWN
        if state is SecretState.UNKNOWN and entry.verified is False:
            return SecretState.FAILING  # the controller itself cannot decrypt it
        return state

    def _reclassify_all(self) -> None:
        for entry in self.inventory.entries():
            self.inventory.set_state(entry, self._state_of(entry))

    async def _on_keyring_change(self, client: KubeClient) -> None:
        """New keys: retry the unknown items; compromised set changed: reclassify."""
        while True:
            await self._keys_event.wait()
            self._keys_event.clear()
            self._progress()
            if self._keyring.compromised != self._seen_compromised:
                self._seen_compromised = self._keyring.compromised
                self._reclassify_all()
            if self._keyring.epoch != self._seen_epoch:
                self._seen_epoch = self._keyring.epoch
                await self._retry_unknown(client)

    async def _retry_unknown(self, client: KubeClient) -> None:
        """Fetch the SealedSecrets with unattributed items again and re-attribute them.

        Only objects still at the version the inventory holds are re-attributed: a newer
        one is the watch's to handle, and applying an older one would regress it.
        """
        objects = []
        for entry in [e for e in self.inventory.entries() if e.has_unknown]:
            namespace, name = entry.ref
            try:
                obj = await client.get_json(controller.sealed_secret_path(namespace, name))
            except NotFound:
                continue
            self._progress()
            objects.append(obj)
        current = [obj for obj in objects if self.inventory.unchanged(obj)]
        if current:
            await self._observe_sealed(current, force=True)

    async def _verifier(self, client: KubeClient) -> None:
        """Least-privilege mode: ask ``/v1/verify`` about unattributed SealedSecrets."""
        namespace = self.cluster.controller_namespace
        while True:
            ref = await self._verify_queue.get()
            entry = self.inventory.get(ref)
            if entry is None or not entry.has_unknown or self._proxy is None:
                continue
            try:
                obj = await client.get_json(controller.sealed_secret_path(*ref))
            except NotFound:
                continue
            proxy = self._proxy

            async def ask(obj: dict[str, Any] = obj, proxy: str = proxy) -> bool:
                return await controller.verify(client, namespace, proxy, obj)

            try:
                decryptable = await retry.retry_call(ask, policy=self._options.backoff,
                                                     attempts=8)
            except FleetError as error:
                # The controller is busy or down: ask again later, keep the session.
                log.info("verify_deferred", namespace=ref[0], name=ref[1], error=str(error))
                self._verify_queue.put_nowait(ref)
                await asyncio.sleep(self._options.backoff.cap / 10)
                continue
            self._progress()
            entry.verified = decryptable
            self.inventory.set_state(entry, self._state_of(entry))

    # ------------------------------------------------------------------ writes

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_INTERVAL)
            self._progress()
            await self._flush()

    async def _flush(self) -> None:
        """Write what is pending in a few batched transactions, then the resourceVersion
        (only after the data it covers, so a resumed watch never skips an event)."""
        async with self._flush_lock:
            pending = self.inventory.take_pending()
            rvs, self._pending_rv = self._pending_rv, {}
            if pending.upserts:
                await self._store.upsert_sealed_secrets(pending.upserts)
            if pending.deletes:
                await self._store.delete_sealed_secrets(self.name, pending.deletes)
            if pending.states:
                await self._store.update_states(self.name, pending.states)
            for resource, resource_version in rvs.items():
                await self._store.set_watch_resource_version(self.name, resource,
                                                             resource_version)
            if pending.upserts or pending.deletes or pending.states:
                self._on_change()


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that ended a session's TaskGroup (FleetError and resync first)."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for kind in (FleetError, _ResyncDue):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else group


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")



