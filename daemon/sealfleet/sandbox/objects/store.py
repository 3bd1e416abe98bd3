"""The ObjectStore: all objects of one emulated cluster, one resourceVersion counter."""

from __future__ import annotations

import bisect
import builtins
import collections
import datetime
import random
import uuid
from collections.abc import Callable, Iterable

import structlog

from sealfleet.sandbox.objects import registry
from sealfleet.sandbox.objects.entries import (
    Entry,
    Obj,
    WatchEvent,
    WatchStream,
    dump,
    kind_first,
    now_rfc3339,
)
from sealfleet.sandbox.objects.errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    gone,
    invalid,
    not_found,
    too_old,
)
from sealfleet.sandbox.objects.resources import RESOURCE_TYPES, ResourceType, resource_type

_log = structlog.get_logger(__name__)

Listener = Callable[[str, str, Obj], None]

# apimachinery's util/rand alphabet: no vowels (and no 0, 1, 3) so that generated
# names never spell words.
GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
DEFAULT_HISTORY = 5000
BOOTSTRAP_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")


class ObjectStore:
    """All objects of one emulated cluster, with one resourceVersion counter."""

    def __init__(self, *, history: int = DEFAULT_HISTORY, bootstrap: bool = True) -> None:
        self._rv = 0
        self._objects: dict[str, dict[tuple[str, str], Entry]] = {k: {} for k in RESOURCE_TYPES}
        self._sorted: dict[str, list[tuple[str, str]]] = {k: [] for k in RESOURCE_TYPES}
        self._by_uid: dict[str, tuple[str, str, str]] = {}
        self._dependents: dict[str, set[str]] = collections.defaultdict(set)
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=max(history, 1))
        self._compacted_rv = 0
        self._streams: list[WatchStream] = []
        self._listeners: list[Listener] = []
        self._rand = random.Random()
        if bootstrap:
            for ns in BOOTSTRAP_NAMESPACES:
                self.create("namespaces", None, {"metadata": {"name": ns}})

    # ---------------------------------------------------------------- observation

    @property
    def resource_version(self) -> int:
        return self._rv

    @property
    def oldest_watchable_rv(self) -> int:
        """Watches and continue tokens from this resourceVersion onwards still work."""
        return self._compacted_rv

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(event_type, resource, obj)`` synchronously after every change.

        ``obj`` is shared between listeners: do not mutate it.
        """
        self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        self._listeners.remove(fn)

    def watch(self, resource: str, namespace: str | None, since_rv: int | None) -> WatchStream:
        """Events after ``since_rv`` (None: only future events); 410 Gone when too old."""
        resource_type(resource)
        stream = WatchStream(self, resource, namespace)
        if since_rv is not None and since_rv < self._compacted_rv:
            raise too_old(since_rv, self._compacted_rv)
        if since_rv is not None and since_rv < self._rv:
            start = bisect.bisect_right(self._history, since_rv, key=lambda e: e.rv)
            for i in range(start, len(self._history)):
                event = self._history[i]
                if stream.matches(event):
                    stream.push(event)
        self._streams.append(stream)
        return stream

    def _unsubscribe(self, stream: WatchStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def check_list_rv(self, rv: int) -> None:
        """410 Expired for a continue token whose list resourceVersion was compacted."""
        if rv < self._compacted_rv:
            raise gone(
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter, or use the continue "
                "token in this response to retrieve the remainder of the results."
            )

    # ---------------------------------------------------------------------- reads

    def get(self, resource: str, namespace: str | None, name: str) -> Obj:
        return self.entry(resource, namespace, name).obj()

    def entry(self, resource: str, namespace: str | None, name: str) -> Entry:
        rtype = resource_type(resource)
        entry = self._objects[resource].get((self._ns(rtype, namespace), name))
        if entry is None:
            raise not_found(rtype, name)
        return entry

    def entries(
        self, resource: str, namespace: str | None, *, after: tuple[str, str] | None = None
    ) -> list[Entry]:
        """Stored entries sorted by (namespace, name), optionally only after a key."""
        rtype = resource_type(resource)
        keys = self._sorted[resource]
        objects = self._objects[resource]
        if namespace is not None and rtype.namespaced:
            lo = bisect.bisect_left(keys, (namespace, ""))
            hi = bisect.bisect_left(keys, (namespace + "\x00", ""))
        else:
            lo, hi = 0, len(keys)
        if after is not None:
            lo = max(lo, bisect.bisect_right(keys, after))
        return [objects[k] for k in keys[lo:hi]]

    def list(self, resource: str, namespace: str | None) -> tuple[list[Obj], int]:
        return [e.obj() for e in self.entries(resource, namespace)], self._rv

    def count(self, resource: str) -> int:
        return len(self._objects[resource])

    # --------------------------------------------------------------------- writes

    def create(
        self, resource: str, namespace: str | None, obj: Obj, *, dry_run: bool = False
    ) -> Obj:
        rtype = resource_type(resource)
        obj = _detach(obj)
        ns = self._ns(rtype, namespace)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        for field in ("name", "generateName"):
            if field in meta and not isinstance(meta[field], str | None):
                raise bad_request(f"metadata.{field} must be a string")
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise invalid(
                    rtype,
                    "",
                    [
                        (
                            "metadata.name",
                            "FieldValueRequired",
                            "Required value: name or generateName is required",
                        )
                    ],
                )
            meta["name"] = self._generate_name(resource, ns, str(prefix))
        name = str(meta["name"])
        obj["kind"] = rtype.kind
        obj["apiVersion"] = rtype.api_version
        registry.validate(rtype, obj, None)
        if (ns, name) in self._objects[resource]:
            raise already_exists(rtype, name)
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rtype.generation != "none":
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        registry.prepare_for_create(rtype, obj)
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return obj
        meta["resourceVersion"] = str(self._rv + 1)
        raw = _serialize(obj)  # before committing: unserializable input changes nothing
        self._rv += 1
        self._store(resource, ns, obj, "ADDED", raw=raw)
        return obj

    def load(
        self,
        resource: str,
        objects: Iterable[Obj],
        *,
        created_at: str | None = None,
        keep_creation_timestamps: bool = False,
    ) -> builtins.list[Obj]:
        """Store complete objects as one batch, as an etcd restore would: the bulk path.

        For seeding a cluster with thousands of objects that are well-formed by
        construction.  Each object gets what :meth:`create` assigns (a fresh ``uid``, the
        next resourceVersion in order, ``creationTimestamp`` (``created_at`` or now),
        ``generation`` 1 for kinds that have one, ``kind``/``apiVersion``) and nothing
        else: no admission, validation, defaulting or pruning (nor a check that the
        namespace exists: create it first), and ``.status`` is kept
        (``create`` drops it for kinds with a status subresource), so a seeded object can
        arrive already reconciled.  With ``keep_creation_timestamps`` an object that
        already has a ``metadata.creationTimestamp`` keeps it, as objects restored from
        a backup keep their ages (``created_at`` or now fills in the others).

        The dicts are filled in place and returned, never copied (a copy per object costs
        as much as its serialization): afterwards they show exactly what was stored.  Each
        is serialized exactly once, and only those bytes are kept, so changing a dict later
        changes nothing stored (listeners get the same dict: they must not).  Listeners and
        watchers see one ``ADDED`` event per object, in order, exactly as for creates; the
        watch history is bounded, so a big load compacts it like any burst of writes.

        All or nothing: a missing name, a namespace that does not fit the resource, a
        name that already exists (or repeats within the batch) or an unserializable
        object raises before anything is stored (the dicts may be partly filled in).
        """
        rtype = resource_type(resource)
        batch = objects if isinstance(objects, list) else list(objects)
        created_at = created_at or now_rfc3339()
        stored = self._objects[resource]
        seen: set[tuple[str, str]] = set()
        raws: builtins.list[bytes] = []  # (``list`` here is the method above)
        for offset, obj in enumerate(batch, start=1):
            meta = obj.get("metadata") if isinstance(obj, dict) else None
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
                raise bad_request("a bulk-loaded object needs metadata.name")
            name = meta["name"]
            ns = self._ns(rtype, meta.get("namespace"))
            if not rtype.namespaced:
                meta.pop("namespace", None)
            key = (ns, name)
            if key in stored or key in seen:
                raise already_exists(rtype, name)
            seen.add(key)
            obj["kind"] = rtype.kind
            obj["apiVersion"] = rtype.api_version
            for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            if not (keep_creation_timestamps and meta.get("creationTimestamp")):
                meta["creationTimestamp"] = created_at
            if rtype.generation != "none":
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
            meta["resourceVersion"] = str(self._rv + offset)
            raws.append(_serialize(obj))
        for obj, raw in zip(batch, raws, strict=True):
            self._rv += 1
            self._store(resource, obj["metadata"].get("namespace", ""), obj, "ADDED", raw=raw)
        return batch

    def update(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        obj: Obj,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        rtype = resource_type(resource)
        ns = self._ns(rtype, namespace)
        obj = _detach(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if meta.get("name", name) != name:
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL "
                f"({name})"
            )
        if rtype.namespaced and meta.get("namespace") and meta["namespace"] != ns:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent "
                "on the request"
            )
        if subresource not in (None, "status") or (
            subresource == "status" and not rtype.has_status
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        old_entry = self.entry(resource, ns if rtype.namespaced else None, name)
        old = old_entry.obj()
        old_meta = old["metadata"]
        sent_rv = meta.get("resourceVersion")
        if sent_rv not in (None, "") and str(sent_rv) != old_meta["resourceVersion"]:
            raise conflict(
                rtype,
                name,
                "the object has been modified; please apply your changes to the latest version "
                "and try again",
            )
        if meta.get("uid") not in (None, "") and meta["uid"] != old_meta["uid"]:
            raise conflict(
                rtype,
                name,
                f"Precondition failed: UID in precondition: {meta['uid']}, UID in object meta: "
                f"{old_meta['uid']}",
            )

        if subresource == "status":
            new = old
            new["status"] = obj.get("status")
            if new["status"] is None:
                del new["status"]
        else:
            new = obj
            new["kind"] = rtype.kind
            new["apiVersion"] = rtype.api_version
            if rtype.has_status:  # the main resource cannot change status
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            new_meta = new["metadata"]
            new_meta["name"] = name
            if rtype.namespaced:
                new_meta["namespace"] = ns
            else:
                new_meta.pop("namespace", None)
            for field in ("uid", "creationTimestamp", "deletionTimestamp",
                          "deletionGracePeriodSeconds", "generation"):
                if field in old_meta:
                    new_meta[field] = old_meta[field]
                else:
                    new_meta.pop(field, None)
            registry.validate(rtype, new, old)
            registry.prepare_for_update(rtype, new, old)
            if rtype.generation != "none" and registry.generation_changes(rtype, new, old):
                new_meta["generation"] = int(old_meta.get("generation", 0)) + 1
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        kind_first(new)
        if _serialize(new) == old_entry.raw:
            return new  # a no-op: etcd is not written, no event, same resourceVersion
        if dry_run:
            return new
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        self._store(resource, ns, new, "MODIFIED", old_entry)
        return new

    def delete(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        propagation: str = "Background",
        grace_period: int | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """Delete an object; a Pod on a node is only marked (graceful deletion).

        As the real pod strategy decides: a scheduled Pod that has not finished gets
        ``deletionTimestamp`` = now + its grace period (``grace_period``, else
        ``spec.terminationGracePeriodSeconds``) and stays, Terminating, until its kubelet
        deletes it with grace 0.  The returned object then carries the timestamp.
        """
        rtype = resource_type(resource)
        entry = self.entry(resource, namespace, name)
        if uid is not None and uid != entry.uid:
            raise conflict(
                rtype,
                name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {entry.uid}",
            )
        if resource_version is not None and str(resource_version) != str(entry.rv):
            raise conflict(
                rtype,
                name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{resource_version}, ResourceVersion in object meta: {entry.rv}",
            )
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise bad_request(f"unsupported propagationPolicy {propagation!r}")
        obj = entry.obj()
        grace = _pod_grace_period(obj, grace_period) if resource == "pods" else 0
        if grace > 0:
            return self._mark_deleting(resource, entry, obj, grace, dry_run=dry_run)
        if dry_run:
            return obj
        self._remove(resource, entry)
        if propagation == "Orphan":
            self._orphan(entry.uid)
        else:
            self._collect_garbage(entry.uid)
        if resource == "namespaces":
            self._delete_namespace_contents(entry.name)
        return obj

    def _mark_deleting(self, resource: str, entry: Entry, obj: Obj, grace: int, *,
                       dry_run: bool) -> Obj:
        meta = obj["metadata"]
        current = meta.get("deletionGracePeriodSeconds")
        if meta.get("deletionTimestamp") and isinstance(current, int) and current <= grace:
            return obj  # already terminating at least as fast: a repeated delete changes nothing
        deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=grace)
        meta["deletionTimestamp"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["deletionGracePeriodSeconds"] = grace
        meta["generation"] = int(meta.get("generation", 0)) + 1
        if dry_run:
            return obj
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._store(resource, entry.namespace, obj, "MODIFIED", entry)
        return obj

    # ------------------------------------------------------------------- internals

    @staticmethod
    def _ns(rtype: ResourceType, namespace: str | None) -> str:
        if not rtype.namespaced:
            return ""
        if not namespace:
            raise bad_request(f"{rtype.kind} is namespaced: a namespace is required")
        return namespace

    def _generate_name(self, resource: str, ns: str, prefix: str) -> str:
        # The real apiserver trims the prefix so that prefix + 5 chars fit in 63.
        prefix = prefix[: 63 - 5]
        for _ in range(16):
            name = prefix + "".join(self._rand.choices(GENERATE_NAME_ALPHABET, k=5))
            if (ns, name) not in self._objects[resource]:
                return name
        raise ApiError(500, "InternalError", "could not generate a unique name")

    def _store(
        self,
        resource: str,
        ns: str,
        obj: Obj,
        event_type: str,
        old: Entry | None = None,
        *,
        raw: bytes | None = None,
    ) -> None:
        if raw is None:
            kind_first(obj)
            raw = dump(obj)
        entry = Entry(obj, raw)
        key = (ns, entry.name)
        if old is None:
            bisect.insort(self._sorted[resource], key)
        else:
            for owner in old.owner_uids:
                self._dependents[owner].discard(old.uid)
        self._objects[resource][key] = entry
        self._by_uid[entry.uid] = (resource, ns, entry.name)
        for owner in entry.owner_uids:
            self._dependents[owner].add(entry.uid)
        self._emit(
            WatchEvent(
                event_type, resource, ns, entry.name, entry.rv, raw, old.raw if old else None
            ),
            obj,
        )

    def _remove(self, resource: str, entry: Entry) -> None:
        key = (entry.namespace, entry.name)
        del self._objects[resource][key]
        keys = self._sorted[resource]
        del keys[bisect.bisect_left(keys, key)]
        self._by_uid.pop(entry.uid, None)
        for owner in entry.owner_uids:
            self._dependents[owner].discard(entry.uid)
        self._rv += 1
        obj = entry.obj()
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(
            WatchEvent("DELETED", resource, entry.namespace, entry.name, self._rv, dump(obj)), obj
        )

    def _collect_garbage(self, owner_uid: str) -> None:
        for dependent_uid in sorted(self._dependents.pop(owner_uid, set())):
            location = self._by_uid.get(dependent_uid)
            if location is None:
                continue
            resource, ns, name = location
            entry = self._objects[resource][(ns, name)]
            remaining = [u for u in entry.owner_uids if u != owner_uid and u in self._by_uid]
            if remaining:  # other owners still alive: the GC only drops the dead reference
                self._orphan_one(resource, entry, owner_uid)
                continue
            self._remove(resource, entry)
            self._collect_garbage(dependent_uid)

    def _orphan(self, owner_uid: str) -> None:
        for dependent_uid in sorted(self._dependents.pop(owner_uid, set())):
            location = self._by_uid.get(dependent_uid)
            if location is not None:
                resource, ns, name = location
                self._orphan_one(resource, self._objects[resource][(ns, name)], owner_uid)

    def _orphan_one(self, resource: str, entry: Entry, owner_uid: str) -> None:
        obj = entry.obj()
        refs = [r for r in obj["metadata"].get("ownerReferences", []) if r.get("uid") != owner_uid]
        if refs:
            obj["metadata"]["ownerReferences"] = refs
        else:
            obj["metadata"].pop("ownerReferences", None)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._store(resource, entry.namespace, obj, "MODIFIED", entry)

    def _delete_namespace_contents(self, ns: str) -> None:
        for resource, rtype in RESOURCE_TYPES.items():
            if rtype.namespaced:
                for entry in list(self.entries(resource, ns)):
                    if (entry.namespace, entry.name) in self._objects[resource]:
                        self._remove(resource, entry)
                        self._collect_garbage(entry.uid)

    def _emit(self, event: WatchEvent, obj: Obj) -> None:
        if len(self._history) == self._history.maxlen:
            self._compacted_rv = self._history[0].rv
        self._history.append(event)
        for stream in list(self._streams):
            if stream.matches(event):
                stream.push(event)
        for listener in list(self._listeners):
            try:
                listener(event.type, event.resource, obj)
            except Exception:  # a broken listener must not break the write that happened
                _log.exception("sandbox_listener_failed", resource=event.resource)


def _pod_grace_period(pod: Obj, requested: int | None) -> int:
    """``CheckGracefulDelete`` of the pod strategy: 0 means delete at once."""
    spec = pod.get("spec") or {}
    default = spec.get("terminationGracePeriodSeconds", 30)
    if requested is not None:
        period = int(requested)
    else:  # defaulted to 30 by the apiserver when the Pod was made
        period = default if isinstance(default, int) else 30
    if not spec.get("nodeName"):
        return 0  # never scheduled: no kubelet has anything to stop
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    return 1 if period < 0 else period


def _detach(obj: object) -> Obj:
    """A copy of the parts of ``obj`` that writes mutate; the rest is serialized unchanged.

    A full deep copy would cost as much as the serialization itself; the stored form is
    bytes, so sharing untouched nested values with the caller's dict is harmless.
    """
    if not isinstance(obj, dict):
        raise bad_request("the object provided is not a JSON object")
    copied = dict(obj)
    meta = copied.get("metadata")
    if isinstance(meta, dict):
        meta = dict(meta)
        for field in ("labels", "annotations"):
            if isinstance(meta.get(field), dict):
                meta[field] = dict(meta[field])
        copied["metadata"] = meta
    for field in ("data", "stringData"):
        if isinstance(copied.get(field), dict):
            copied[field] = dict(copied[field])
    return copied


def _serialize(obj: Obj) -> bytes:
    kind_first(obj)
    try:
        return dump(obj)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"the object cannot be serialized as JSON: {exc}") from None
