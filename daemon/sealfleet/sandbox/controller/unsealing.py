"""Turning SealedSecrets into Secrets, as the controller's work queue does (§5).

Store events are *queued* (the ObjectStore listener callback only enqueues a key) and
reconciled by a couple of worker tasks per cluster; the RSA work runs on a shared thread
pool, so twenty controllers unsealing at once never stall the emulated apiservers.

Per SealedSecret: decrypt every item trying every key (the order is upstream's Go map
order, i.e. random; here the key that opened the previous item or SealedSecret comes
first, then the newest: see ``KeyRegistry.likeliest_first``); build the Secret from
``spec.template`` (name and namespace forced, owner reference ``controller: true``
without ``blockOwnerDeletion``); create it, or update one this SealedSecret controls, or
take over / merge into a pre-existing one annotated ``managed`` / ``patch``; otherwise
fail with "already exists and is not managed".  Then record an Event and set the
``Synced`` condition and ``observedGeneration`` through the status subresource, written
only when the condition flips or the generation moved.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import structlog

from sealfleet.domain import hybrid
from sealfleet.domain import sealed_secrets as sealing
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import DecryptionError, InputError
from sealfleet.sandbox.controller import events
from sealfleet.sandbox.controller.flags import ControllerFlags
from sealfleet.sandbox.controller.keyring import KeyRegistry
from sealfleet.sandbox.controller.metrics import ControllerMetrics
from sealfleet.sandbox.objects import ApiError, Entry, ObjectStore, now_rfc3339

_log = structlog.get_logger(__name__)

SEALED = "sealedsecrets.bitnami.com"
ANNOTATION_MANAGED = "sealedsecrets.bitnami.com/managed"
ANNOTATION_PATCH = "sealedsecrets.bitnami.com/patch"
CONDITION_SYNCED = "Synced"
WORKERS_PER_CLUSTER = 2


@dataclasses.dataclass(frozen=True)
class UnsealResult:
    secret: dict[str, Any]
    fingerprints: frozenset[str] | None  # keys that opened the items (None: not tracked)


class SyncKnowledge:
    """What a cluster's controller has verified, kept across controller restarts.

    Maps a SealedSecret uid to (generation, fingerprints of the keys that sealed its
    items, resourceVersion after the sync).  On restart the real controller decrypts
    everything again; the emulation skips a SealedSecret that is Synced at its current
    generation, whose Secret it controls and whose sealing keys are all still loaded --
    the re-decrypt would give the same answer -- and really re-unseals everything else.
    An unchanged resourceVersion vouches for the stored status without parsing it.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, frozenset[str], int]] = {}
        self._interned: dict[frozenset[str], frozenset[str]] = {}

    def remember(self, uid: str, generation: int, fingerprints: frozenset[str],
                 resource_version: int = 0) -> None:
        fingerprints = self._interned.setdefault(fingerprints, fingerprints)
        self._known[uid] = (generation, fingerprints, resource_version)

    def forget(self, uid: str) -> None:
        self._known.pop(uid, None)

    def get(self, uid: str) -> tuple[int, frozenset[str], int] | None:
        return self._known.get(uid)

    def still_valid(self, uid: str, generation: int, loaded: frozenset[str]) -> bool:
        known = self._known.get(uid)
        return known is not None and known[0] == generation and known[1] <= loaded


def _spec_may_have_changed(sealed: Mapping[str, Any]) -> bool:
    """The informer's ``sealedSecretChanged``: updates that leave the spec alone are
    suppressed ("update suppressed, no changes in spec").  A spec change moves the
    generation past the ``observedGeneration`` the last sync wrote, so a status written
    by another controller process (two run during a rollout) queues nothing."""
    status = sealed.get("status") or {}
    generation = (sealed.get("metadata") or {}).get("generation")
    return "observedGeneration" not in status or status["observedGeneration"] != generation


class NotManagedError(Exception):
    """A Secret of that name exists and this SealedSecret may not touch it."""


def unseal_attributed(sealed: Mapping[str, Any], keys: Sequence[SealingKey]) -> UnsealResult:
    """Decrypt every item with any key (synchronous: run it on a thread).

    Keys are tried in the order given, except that the key that opened an item is tried
    first on the next (the items of one SealedSecret are mostly sealed together)."""
    identity = sealing.identity_of(sealed)
    spec = sealed.get("spec") or {}
    encrypted = sealing.encrypted_items(sealed)
    order = list(keys)
    if spec.get("data") or not encrypted:  # legacy v1 blob (or nothing): no attribution
        return UnsealResult(sealing.unseal(sealed, [k.private_key for k in order]), None)
    values: dict[str, bytes] = {}
    used: set[str] = set()
    failed: list[str] = []
    for item, value in encrypted.items():
        try:
            index, values[item] = hybrid.decrypt_with_index(
                [k.private_key for k in order], sealing.decode_item(item, value), identity.label
            )
        except DecryptionError:
            failed.append(item)
            continue
        used.add(order[index].fingerprint)
        if index:
            order.insert(0, order.pop(index))
    if failed:
        raise DecryptionError("no key could decrypt secret (" + ", ".join(sorted(failed)) + ")")
    return UnsealResult(build_secret(sealed, identity, values), frozenset(used))


def _json_copy(value: Any) -> Any:
    """An independent copy of parsed JSON (dicts, lists, scalars): what ``deepcopy``
    does for such values, without its memo bookkeeping (seeding builds 100k Secrets)."""
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


def build_secret(
    sealed: Mapping[str, Any], identity: sealing.SealedIdentity, values: Mapping[str, bytes]
) -> dict[str, Any]:
    template = (sealed.get("spec") or {}).get("template") or {}
    metadata: dict[str, Any] = _json_copy(dict(template.get("metadata") or {}))
    metadata.pop("creationTimestamp", None)
    metadata["name"] = identity.name
    metadata["namespace"] = identity.namespace
    annotations = metadata.get("annotations") or {}
    top = sealed.get("metadata") or {}
    if annotations.get("sealedsecrets.bitnami.com/skip-set-owner-references") != "true":
        metadata["ownerReferences"] = [
            {
                "apiVersion": sealing.API_VERSION,
                "kind": sealing.KIND,
                "name": identity.name,
                "uid": top.get("uid", ""),
                "controller": True,
            }
        ]
    secret: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": metadata}
    if template.get("type"):
        secret["type"] = template["type"]
    if template.get("immutable") is not None:
        secret["immutable"] = template["immutable"]
    data = {item: base64.b64encode(value).decode() for item, value in sorted(values.items())}
    for item, text in (template.get("data") or {}).items():
        if "{{" in str(text):
            raise InputError(
                f"template data {item!r} uses Go templates, which the sandbox "
                "controller does not render"
            )
        data[item] = base64.b64encode(str(text).encode()).decode()
    secret["data"] = data
    return secret


def controlled_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == owner_uid
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or ()
    )


def owner_sealed_secret(secret: Mapping[str, Any]) -> str | None:
    """Name of the SealedSecret controlling this Secret, if any."""
    for ref in (secret.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("controller") and ref.get("kind") == sealing.KIND:
            return str(ref.get("name"))
    return None


class Unsealer:
    """The SealedSecret work queue of one running controller process."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        registry: KeyRegistry,
        flags: ControllerFlags,
        metrics: ControllerMetrics,
        recorder: events.EventRecorder,
        knowledge: SyncKnowledge,
        executor: Executor,
    ) -> None:
        self._store = store
        self._registry = registry
        self._flags = flags
        self._metrics = metrics
        self._recorder = recorder
        self._knowledge = knowledge
        self._executor = executor
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._pending: set[tuple[str, str]] = set()
        self._processing: set[tuple[str, str]] = set()
        self._dirty: set[tuple[str, str]] = set()
        self._writing_status = False
        self._last_opener: str | None = None  # the key that opened the last SealedSecret
        self.reconciled = 0  # how many reconciles finished (tests wait on progress)

    # ----------------------------------------------------------------- intake

    def enqueue(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def on_store_event(self, event_type: str, resource: str, obj: Mapping[str, Any]) -> None:
        """ObjectStore listener: enqueue only; never reconcile inside the store's call."""
        metadata = obj.get("metadata") or {}
        if resource == SEALED:
            if event_type == "DELETED":
                self._metrics.unseal_requests.inc()
                self._knowledge.forget(str(metadata.get("uid", "")))
            elif not self._writing_status and (
                event_type == "ADDED" or _spec_may_have_changed(obj)
            ):
                self.enqueue(str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        elif resource == "secrets" and event_type == "DELETED" and not self._flags.skip_recreate:
            owner = owner_sealed_secret(obj)
            if owner is not None:
                self.enqueue(str(metadata.get("namespace", "")), owner)

    def initial_sync(self) -> int:
        """Queue every SealedSecret whose state the restart cannot vouch for."""
        loaded = self._registry.fingerprints
        queued = 0
        for entry in self._store.entries(SEALED, None):
            if self._unchanged_since_sync(entry, loaded):
                continue
            obj = entry.obj()
            generation = int(obj["metadata"].get("generation", 0))
            if self._already_synced(obj, generation, loaded):
                continue
            self.enqueue(entry.namespace, entry.name)
            queued += 1
        return queued

    def _unchanged_since_sync(self, entry: Entry, loaded: frozenset[str]) -> bool:
        """Fast path: not written since we synced it, keys loaded, its Secret still ours."""
        known = self._knowledge.get(entry.uid)
        if known is None or known[2] != entry.rv or not known[1] <= loaded:
            return False
        try:
            secret = self._store.entry("secrets", entry.namespace, entry.name)
        except ApiError:
            return False
        return entry.uid in secret.owner_uids

    def _already_synced(
        self, obj: Mapping[str, Any], generation: int, loaded: frozenset[str]
    ) -> bool:
        metadata = obj["metadata"]
        status = obj.get("status") or {}
        synced = any(
            c.get("type") == CONDITION_SYNCED and c.get("status") == "True"
            for c in status.get("conditions") or ()
        )
        if not (synced and status.get("observedGeneration") == generation):
            return False
        if not self._knowledge.still_valid(str(metadata["uid"]), generation, loaded):
            return False
        try:
            secret = self._store.get("secrets", metadata["namespace"], metadata["name"])
        except ApiError:
            return False
        return controlled_by(secret, str(metadata["uid"])) or bool(
            (secret["metadata"].get("annotations") or {}).get(ANNOTATION_PATCH) == "true"
        )

    # ----------------------------------------------------------------- workers

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(WORKERS_PER_CLUSTER):
                group.create_task(self._worker(), name=f"unseal-worker-{index}")

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            if key in self._processing:
                # Like client-go's workqueue: never two workers on one key; redo it after.
                self._dirty.add(key)
                continue
            self._processing.add(key)
            try:
                await self.reconcile(*key)
            except ApiError as exc:
                # A conflicting write raced us: the informer would requeue it.
                _log.debug("sandbox_unseal_requeued", namespace=key[0], name=key[1],
                           code=exc.code)
                self._dirty.add(key)
                await asyncio.sleep(0.05)
            except Exception:
                # handleErr upstream: log and drop the key, keep the worker alive.
                _log.exception("sandbox_unseal_failed", namespace=key[0], name=key[1])
            finally:
                self._processing.discard(key)
                self.reconciled += 1
            if key in self._dirty:
                self._dirty.discard(key)
                self.enqueue(*key)

    async def reconcile(self, namespace: str, name: str) -> None:
        self._metrics.unseal_requests.inc()
        try:
            sealed = self._store.get(SEALED, namespace, name)
        except ApiError as exc:
            if exc.code == 404:
                return  # deleted: its Secret goes with it through the owner reference
            raise
        uid = str(sealed["metadata"]["uid"])
        generation = int(sealed["metadata"].get("generation", 0))
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._executor,
                unseal_attributed,
                sealed,
                self._registry.likeliest_first(self._last_opener),
            )
        except (DecryptionError, InputError) as exc:
            self._metrics.unseal_errors.labels(reason="unseal", namespace=namespace).inc()
            self._recorder.record(
                sealed, events.WARNING, events.REASON_UNSEAL_FAILED, f"Failed to unseal: {exc}"
            )
            self._set_status(namespace, name, generation, error=str(exc))
            return
        try:
            self._apply_secret(sealed, result.secret)
        except NotManagedError as exc:
            message = str(exc)
            self._recorder.record(sealed, events.WARNING, events.REASON_UPDATE_FAILED, message)
            self._metrics.unseal_errors.labels(reason="unmanaged", namespace=namespace).inc()
            self._set_status(namespace, name, generation, error=f"failed update: {message}")
            return
        except ApiError as exc:
            if exc.code == 409:
                raise  # requeue
            self._recorder.record(sealed, events.WARNING, events.REASON_UPDATE_FAILED, exc.message)
            self._metrics.unseal_errors.labels(reason="update", namespace=namespace).inc()
            self._set_status(namespace, name, generation, error=exc.message)
            return
        if result.fingerprints is not None:
            self._knowledge.remember(uid, generation, result.fingerprints)
            if len(result.fingerprints) == 1:
                self._last_opener = next(iter(result.fingerprints))
        self._recorder.record(
            sealed, events.NORMAL, events.REASON_UNSEALED, events.MESSAGE_UNSEALED
        )
        self._set_status(namespace, name, generation, error=None)

    def _apply_secret(self, sealed: Mapping[str, Any], new: dict[str, Any]) -> None:
        namespace = new["metadata"]["namespace"]
        name = new["metadata"]["name"]
        try:
            existing = self._store.get("secrets", namespace, name)
        except ApiError as exc:
            if exc.code != 404:
                raise
            self._store.create("secrets", namespace, new)
            return
        uid = str(sealed["metadata"]["uid"])
        annotations = existing["metadata"].get("annotations") or {}
        managed = annotations.get(ANNOTATION_MANAGED) == "true"
        patch = annotations.get(ANNOTATION_PATCH) == "true"
        if not controlled_by(existing, uid) and not managed and not patch:
            raise NotManagedError(
                f'Resource "{name}" already exists and is not managed by SealedSecret'
            )
        original = copy.deepcopy(existing)
        meta = existing["metadata"]
        new_meta = new["metadata"]
        if patch:
            existing["data"] = {**(existing.get("data") or {}), **new.get("data", {})}
            for field in ("labels", "annotations"):
                merged = {**(meta.get(field) or {}), **(new_meta.get(field) or {})}
                if merged:
                    meta[field] = merged
        else:
            existing["data"] = new.get("data", {})
            for field in ("labels", "annotations"):
                if new_meta.get(field):
                    meta[field] = new_meta[field]
                else:
                    meta.pop(field, None)
        if not patch or managed:
            if new_meta.get("ownerReferences"):
                meta["ownerReferences"] = new_meta["ownerReferences"]
            else:
                meta.pop("ownerReferences", None)
        if existing != original:
            self._store.update("secrets", namespace, name, existing)

    def _set_status(self, namespace: str, name: str, generation: int, *, error: str | None) -> None:
        if not self._flags.update_status:
            return
        try:
            sealed = self._store.get(SEALED, namespace, name)
        except ApiError:
            return  # deleted meanwhile
        if sealed["metadata"].get("generation", 0) != generation:
            return  # changed meanwhile: the newer generation is already queued
        status = sealed.get("status") or {}
        conditions = list(status.get("conditions") or [])
        wanted = "False" if error is not None else "True"
        now = now_rfc3339()
        current = next((c for c in conditions if c.get("type") == CONDITION_SYNCED), None)
        flipped = current is None or current.get("status") != wanted
        if not flipped and status.get("observedGeneration") == generation:
            return
        condition: dict[str, Any] = {
            "type": CONDITION_SYNCED,
            "status": wanted,
            "lastUpdateTime": now,
            "lastTransitionTime": now
            if flipped
            else (current or {}).get("lastTransitionTime", now),
        }
        if error is not None:
            condition["message"] = error
        conditions = [c for c in conditions if c.get("type") != CONDITION_SYNCED] + [condition]
        sealed["status"] = {**status, "conditions": conditions, "observedGeneration": generation}
        self._writing_status = True
        try:
            self._store.update(SEALED, namespace, name, sealed, subresource="status")
        except ApiError as exc:
            self._metrics.unseal_errors.labels(reason="status", namespace=namespace).inc()
            if exc.code == 409:
                raise
        finally:
            self._writing_status = False
