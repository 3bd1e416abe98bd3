"""Observing a cluster's SealedSecrets: list, watch, attribute, classify, queue.

A session resumes from the stored resourceVersion when the server still has it, else
lists (paginated, page by page to bounded memory); then it watches (bookmarks, relist
on 410).  Every changed object is parsed (``domain/observed``), its items attributed
(the attributor: memory, store, then RSA), classified (``staleness.classify``) and
queued for the write-behind.  Unchanged objects cost nothing: the inventory remembers
each one's resourceVersion.  When the keystore learns a key, objects with unattributed
items are fetched again and re-attributed; when the compromised set or the sealing
key changes, the whole cluster is reclassified from memory.  The keystore wakes a
cluster only for what concerns it (a new key while it has unattributed items, a mark
on a key its items use), so a fleet learning its keys costs an idle cluster nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import structlog

from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import Gone, KubeClient, NotFound
from sealfleet.adapters.store.records import ItemFact
from sealfleet.app.attributing import ItemRequest
from sealfleet.app.cluster.state import ClusterState, Deps
from sealfleet.app.cluster.write_behind import WriteBehind
from sealfleet.domain import observed
from sealfleet.errors import TransientError

log = structlog.get_logger(__name__)

RESOURCE = "sealedsecrets.bitnami.com"
_RELIST_ATTEMPTS = 3
KEYSTORE_SETTLE = 1.0   # seconds from a key change to acting on it (and those after it)


class SealedSecretObserver:
    def __init__(self, state: ClusterState, deps: Deps, writer: WriteBehind) -> None:
        self._state = state
        self._deps = deps
        self._writer = writer
        self._keys_changed = asyncio.Event()
        self._seen_epoch = deps.keystore.epoch
        self._seen_compromised = deps.keystore.compromised
        self._retry_due = False       # unknown answers computed before a newer key
        self._wants_new_keys = False  # what the keystore was last told
        self._watched: set[str] = set()
        state.inventory.on_interest = self._tell_keystore

    def close(self) -> None:
        self._deps.keystore.want_new_keys(self._keys_changed, False)
        self._deps.keystore.watch_keys(self._keys_changed, removed=self._watched)
        self._watched = set()
        self._wants_new_keys = False

    def _tell_keystore(self) -> None:
        """The inventory's unattributed items or keys in use changed: what the keystore
        wakes this cluster for follows (rare: an idle cluster never gets here)."""
        keystore, inventory = self._deps.keystore, self._state.inventory
        wanted = inventory.has_unknown
        if wanted != self._wants_new_keys:
            self._wants_new_keys = wanted
            keystore.want_new_keys(self._keys_changed, wanted)
        in_use = inventory.keys_in_use()
        if in_use != self._watched:
            keystore.watch_keys(self._keys_changed, added=in_use - self._watched,
                                removed=self._watched - in_use)
            self._watched = in_use

    def reclassify_all(self) -> None:
        self._state.inventory.reclassify_all(self._state.key_context(self._deps.keystore))

    # ------------------------------------------------------------ list and watch

    async def scan(self, client: KubeClient) -> str:
        """Resume from the stored resourceVersion when there is one, else list."""
        if not self._state.resume:  # nothing stored (a first start), or a resync
            return await self._relist(client)
        stored = await self._deps.store.inventory.get_watch_resource_version(
            self._state.name, RESOURCE)
        if stored:
            log.info("watch_resuming", resource=RESOURCE, resource_version=stored)
            return stored
        return await self._relist(client)

    async def _relist(self, client: KubeClient) -> str:
        """A full paginated list; restarts from scratch when the continue token expires.

        The caller flushes the write-behind after it (the last page's records, the
        deletes and the list's position are queued, not written)."""
        inventory = self._state.inventory
        for _ in range(_RELIST_ATTEMPTS):
            seen: set[observed.Ref] = set()
            resource_version = ""
            try:
                async for page in client.list_pages(controller.SEALED_SECRETS_PATH):
                    self._deps.on_progress()
                    seen.update(observed.ref_of(obj) for obj in page.items)
                    resource_version = page.resource_version
                    parsed = self._parse_changed(page.items, relist=True)
                    last = page.last
                    del page  # only the parsed essentials wait for RSA
                    await self._attribute_and_store(parsed)
                    del parsed
                    if not last:
                        # Page by page: bounded memory, visible progress.  The last page
                        # goes with the deletes and the list's position, in the caller's
                        # flush: one write for a cluster that fits a page, not two.
                        await self._writer.flush()
            except Gone:
                log.info("list_expired", resource=RESOURCE)
                continue
            for ref in inventory.refs() - seen:
                inventory.delete(ref)
            self._writer.note_resource_version(RESOURCE, resource_version)
            return resource_version
        raise TransientError("list of sealedsecrets: continue token kept expiring")

    async def follow(self, client: KubeClient, resource_version: str, *,
                     on_open: Callable[[], None] | None = None) -> None:
        """Watch from *resource_version* on; *on_open* each time the watch streams."""
        inventory = self._state.inventory
        while True:
            started = time.monotonic()
            try:
                async with contextlib.aclosing(client.watch(
                        controller.SEALED_SECRETS_PATH, resource_version=resource_version,
                        timeout_seconds=self._deps.options.watch_timeout,
                        on_open=on_open)) as events:
                    async for event in events:
                        self._deps.on_progress()
                        resource_version = event.resource_version or resource_version
                        if event.type == "DELETED":
                            inventory.delete(observed.ref_of(event.object))
                        elif event.type != "BOOKMARK":
                            await self._observe([event.object])
                        self._writer.note_resource_version(RESOURCE, resource_version)
                        if self._writer.full():
                            await self._writer.flush()
            except Gone:
                log.info("watch_expired", resource=RESOURCE)
                await self._writer.flush()
                resource_version = await self._relist(client)
                await self._writer.flush()
                continue
            # The server ended the watch (its timeout): go on from where it stopped, but
            # never spin if it keeps closing at once.
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    # ------------------------------------------------------------ keystore changes

    async def follow_keystore(self, client: KubeClient) -> None:
        """New keys: retry the unknown items; compromised set changed: reclassify.

        Changes are taken together, a moment after the first: a fleet's first pass
        learns a key or two per cluster, cluster after cluster, and waking every worker
        for each key would cost clusters x keys wakeups.
        """
        keystore = self._deps.keystore
        while True:
            await self._keys_changed.wait()
            await asyncio.sleep(KEYSTORE_SETTLE)
            self._keys_changed.clear()
            self._deps.on_progress()
            if keystore.compromised != self._seen_compromised:
                self._seen_compromised = keystore.compromised
                self.reclassify_all()
            if keystore.epoch != self._seen_epoch or self._retry_due:
                self._seen_epoch = keystore.epoch
                self._retry_due = False
                await self._retry_unknown(client)

    async def _retry_unknown(self, client: KubeClient) -> None:
        """Fetch the SealedSecrets with unattributed items again and re-attribute them.

        Only objects still at the version the inventory holds are re-attributed: a newer
        one is the watch's to handle, and applying an older one would regress it.
        """
        inventory = self._state.inventory
        objects = []
        for entry in inventory.unknown_entries():
            try:
                obj = await client.get_json(controller.sealed_secret_path(*entry.ref))
            except NotFound:
                continue
            self._deps.on_progress()
            objects.append(obj)
        current = [obj for obj in objects if inventory.unchanged(obj)]
        if current:
            await self._observe(current, force=True)

    # ------------------------------------------------------------ the work per object

    async def _observe(self, objects: list[dict[str, Any]], *, force: bool = False) -> None:
        """Parse, attribute and classify the objects that changed; queue their records."""
        await self._attribute_and_store(self._parse_changed(objects, force=force),
                                        force=force)

    def _parse_changed(self, objects: list[dict[str, Any]], *, relist: bool = False,
                       force: bool = False) -> list[observed.Parsed]:
        """The objects that changed, reduced to what the inventory needs (the full dicts
        can be dropped before the slow part: a page of them is megabytes)."""
        inventory = self._state.inventory
        parsed: list[observed.Parsed] = []
        for obj in objects:
            if not force and inventory.unchanged(obj, recheck_unknown=relist):
                continue
            result = observed.parse(obj)
            if result.malformed_reason is not None and not result.items:
                inventory.note_malformed(result, dt.datetime.now(dt.UTC))
                continue
            parsed.append(result)
        return parsed

    async def _attribute_and_store(self, parsed: list[observed.Parsed], *,
                                   force: bool = False) -> None:
        if not parsed:
            return
        state = self._state
        groups = [[ItemRequest(h, c, p.label, p.sealed_at) for _, h, c in p.attributed_items]
                  for p in parsed]
        preferred = [state.sealing_key] if state.sealing_key else []
        held = {k.fingerprint for k in state.holdings.values()}
        epoch = self._deps.keystore.epoch
        answers = await self._deps.attributor.attribute(groups, owner=state.name,
                                                        preferred=preferred, likely=held)
        del groups
        if self._deps.keystore.epoch != epoch:
            # A key came while these were attributed: it was not tried on them, and this
            # cluster may not have been one the keystore woke for it.
            self._retry_due = True
            self._keys_changed.set()
        now = dt.datetime.now(dt.UTC)
        context = state.key_context(self._deps.keystore)
        for result in parsed:
            if force:
                # A retry raced with the watch: never resurrect or regress an object.
                current = state.inventory.get(result.ref)
                if current is None or current.resource_version != result.resource_version:
                    continue
            items = tuple(ItemFact(item, h, answers.get(h)) for item, h, _ in result.items)
            entry = state.inventory.store_parsed(result, items, context, now)
            if entry.has_unknown and not state.cluster.read_key_secrets \
                    and entry.verified is None:
                state.verify_queue.put_nowait(entry.ref)

