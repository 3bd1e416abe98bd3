"""In-memory object storage for one emulated cluster: what etcd plus the registry give a real one.

The emulated apiserver and the emulated sealed-secrets controller both read and write
through one :class:`ObjectStore` per cluster, so they see the same objects, the same
resourceVersion sequence and the same watch events, exactly as the real controller and a
real client do through a real apiserver.

Why objects are kept as JSON bytes rather than dicts: a sandbox holds up to 100k objects
for 20 clusters and must serve a 5,000-item list in pages quickly.  Keeping the serialized
form (plus a tiny index of labels and selectable fields) costs about one copy of each
object, lets list pages be built by joining bytes, and makes every ``get`` a fresh,
independent copy for free (``json.loads``).

Semantics copied from the real kube-apiserver registry (facts, not code):
- one monotonically increasing resourceVersion per cluster, as etcd's revision;
- ``uid``, ``creationTimestamp``, ``generation`` are system-managed; generation exists
  only for kinds that have it (Deployments, Pods, CRDs and custom resources; not Secrets,
  Namespaces, Services, Events or Leases) and is bumped on spec changes only (custom
  resources: any change outside metadata and status; Deployments: also annotations);
- ``generateName`` appends 5 characters from apimachinery's vowel-less alphabet;
- an update carrying a stale resourceVersion is a 409 Conflict, a no-op update does not
  bump the resourceVersion and emits no event;
- with a status subresource, the main resource ignores ``.status`` and ``/status``
  changes only ``.status``;
- deleting an owner deletes its dependents (ownerReferences by uid), as the garbage
  collector does in the background, unless the propagation policy is ``Orphan``;
- watch history is bounded; asking for an older resourceVersion is 410 Gone.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import collections
import dataclasses
import datetime
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

_log = structlog.get_logger(__name__)

Obj = dict[str, Any]
Listener = Callable[[str, str, Obj], None]
Causes = list[tuple[str, str, str]]  # (field, reasonType, message) of a 422

# apimachinery's util/rand alphabet: no vowels (and no 0, 1, 3) so that generated
# names never spell words.
GENERATE_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
DEFAULT_HISTORY = 5000
BOOTSTRAP_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
SECRET_MAX_BYTES = 1024 * 1024

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error as the apiserver reports it: HTTP code, machine reason, human message."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Obj | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def status(self) -> Obj:
        """The ``kind: Status`` body the real apiserver sends with this error."""
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        details = dict(self.details or {})
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        if details:
            body["details"] = details
        return body


def _details(rtype: ResourceType | None, name: str | None) -> Obj:
    details: Obj = {}
    if name:
        details["name"] = name
    if rtype is not None:
        if rtype.group:
            details["group"] = rtype.group
        details["kind"] = rtype.plural
    return details


def not_found(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(
        404, "NotFound", f'{rtype.qualified} "{name}" not found', details=_details(rtype, name)
    )


def already_exists(rtype: ResourceType, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{rtype.qualified} "{name}" already exists',
        details=_details(rtype, name),
    )


def conflict(rtype: ResourceType, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rtype.qualified} "{name}": {why}',
        details=_details(rtype, name),
    )


def invalid(rtype: ResourceType, name: str, causes: Causes) -> ApiError:
    """422 Invalid; each cause is (field, reasonType, message) as field.Error renders it."""
    text = ", ".join(f"{field}: {msg}" for field, _, msg in causes)
    details = _details(rtype, name)
    details["kind"] = rtype.kind
    details["causes"] = [
        {"reason": reason, "message": msg, "field": field} for field, reason, msg in causes
    ]
    return ApiError(422, "Invalid", f'{rtype.kind} "{name}" is invalid: {text}', details=details)


def gone(message: str, *, reason: str = "Expired") -> ApiError:
    return ApiError(410, reason, message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def too_old(since: int, oldest: int) -> ApiError:
    return gone(f"too old resource version: {since} ({oldest})")


# ------------------------------------------------------------------------ resources


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """What storage needs to know about a resource (discovery adds verbs and short names)."""

    plural: str
    kind: str
    group: str  # "" for core
    version: str
    namespaced: bool
    generation: str  # "none" | "spec" | "custom" (all but metadata/status) | "spec+annotations"
    has_status: bool  # status subresource

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How messages name the resource: ``secrets``, ``sealedsecrets.bitnami.com``."""
        return self.key


RESOURCE_TYPES: dict[str, ResourceType] = {
    rt.key: rt
    for rt in (
        ResourceType("namespaces", "Namespace", "", "v1", False, "none", True),
        ResourceType("secrets", "Secret", "", "v1", True, "none", False),
        ResourceType("services", "Service", "", "v1", True, "none", True),
        ResourceType("pods", "Pod", "", "v1", True, "spec", True),
        ResourceType("events", "Event", "", "v1", True, "none", False),
        ResourceType("deployments", "Deployment", "apps", "v1", True, "spec+annotations", True),
        ResourceType("leases", "Lease", "coordination.k8s.io", "v1", True, "none", False),
        ResourceType(
            "customresourcedefinitions",
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            "v1",
            False,
            "spec",
            True,
        ),
        ResourceType(
            "sealedsecrets", "SealedSecret", "bitnami.com", "v1alpha1", True, "custom", True
        ),
    )
}


def resource_type(resource: str) -> ResourceType:
    try:
        return RESOURCE_TYPES[resource]
    except KeyError:
        raise ApiError(
            404, "NotFound", f"the server could not find the requested resource ({resource})"
        ) from None


# --------------------------------------------------------------------------- entries


def dump(obj: Obj) -> bytes:
    """Compact JSON, as the apiserver writes it (no spaces)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _kind_first(obj: Obj) -> None:
    """The apiserver writes kind and apiVersion first; keep stored bytes comparable."""
    if next(iter(obj)) != "kind":
        ordered = {"kind": obj.pop("kind"), "apiVersion": obj.pop("apiVersion")}
        ordered.update(obj)
        obj.clear()
        obj.update(ordered)


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Entry:
    """One stored object: its serialized form plus the few fields selectors look at."""

    __slots__ = ("labels", "name", "namespace", "owner_uids", "raw", "rv", "secret_type", "uid")

    def __init__(self, obj: Obj, raw: bytes) -> None:
        meta = obj["metadata"]
        self.raw = raw
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace") or ""
        self.uid: str = meta["uid"]
        self.rv = int(meta["resourceVersion"])
        self.labels: dict[str, str] = dict(meta.get("labels") or {})
        self.secret_type: str | None = obj.get("type") if isinstance(obj.get("type"), str) else None
        self.owner_uids: tuple[str, ...] = tuple(
            ref["uid"]
            for ref in meta.get("ownerReferences") or ()
            if isinstance(ref, dict) and "uid" in ref
        )

    def obj(self) -> Obj:
        """A fresh, independent copy of the object."""
        result: Obj = json.loads(self.raw)
        return result


@dataclasses.dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    resource: str
    namespace: str
    name: str
    rv: int
    raw: bytes
    old_raw: bytes | None = None  # the previous state of a MODIFIED object (selector moves)

    @property
    def object(self) -> Obj:
        result: Obj = json.loads(self.raw)
        return result


class WatchStream:
    """Events for one resource (optionally one namespace) after a resourceVersion.

    Created by :meth:`ObjectStore.watch`, which raises 410 Gone at once when the
    requested resourceVersion is older than the retained history.  Iterate it with
    ``async for``; call :meth:`close` (or use ``with``) to unsubscribe.
    """

    def __init__(self, store: ObjectStore, resource: str, namespace: str | None) -> None:
        self._store = store
        self.resource = resource
        self.namespace = namespace
        self._queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        self.closed = False

    def matches(self, event: WatchEvent) -> bool:
        return event.resource == self.resource and (
            self.namespace is None or event.namespace == self.namespace
        )

    def push(self, event: WatchEvent) -> None:
        self._queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._store._unsubscribe(self)

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        return await self._queue.get()

    def get_nowait(self) -> WatchEvent | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None


# ----------------------------------------------------------------------------- store


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
        obj = json.loads(dump(obj))  # never keep a reference to the caller's dict
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
        self._validate(rtype, obj, None)
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
        self._prepare_for_create(rtype, obj)
        if dry_run:
            meta["resourceVersion"] = str(self._rv)
            return obj
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._store(resource, ns, obj, "ADDED")
        return obj

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
        obj = json.loads(dump(obj))
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
            for field in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
                if field in old_meta:
                    new_meta[field] = old_meta[field]
                else:
                    new_meta.pop(field, None)
            self._validate(rtype, new, old)
            self._prepare_for_update(rtype, new, old)
            if rtype.generation != "none" and self._generation_changes(rtype, new, old):
                new_meta["generation"] = int(old_meta.get("generation", 0)) + 1
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        _kind_first(new)
        if dump(new) == old_entry.raw:
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
        dry_run: bool = False,
    ) -> Obj:
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
        self, resource: str, ns: str, obj: Obj, event_type: str, old: Entry | None = None
    ) -> None:
        _kind_first(obj)
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

    # -------------------------------------------------------------- registry rules

    def _validate(self, rtype: ResourceType, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        name = str(meta.get("name", ""))
        causes: Causes = []
        if rtype.plural in ("namespaces",):
            pattern, what = _DNS_LABEL, "RFC 1123 label"
        elif rtype.plural == "services":
            pattern, what = _DNS_1035_LABEL, "RFC 1035 label"
        else:
            pattern, what = _DNS_SUBDOMAIN, "RFC 1123 subdomain"
        limit = 63 if pattern is not _DNS_SUBDOMAIN else 253
        if len(name) > limit or not pattern.match(name):
            causes.append(
                (
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{name}": a lowercase {what} must consist of lower case '
                    "alphanumeric characters or '-'",
                )
            )
        for field in ("labels", "annotations"):
            value = meta.get(field)
            if value is not None and (
                not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values())
            ):
                causes.append(
                    (
                        f"metadata.{field}",
                        "FieldValueInvalid",
                        "Invalid value: must be a map of strings",
                    )
                )
        if rtype.plural == "secrets":
            causes.extend(self._secret_causes(obj, old))
        if causes:
            raise invalid(rtype, name, causes)

    @staticmethod
    def _secret_causes(obj: Obj, old: Obj | None) -> Causes:
        causes: Causes = []
        string_data = obj.pop("stringData", None) or {}
        data = obj.get("data") or {}
        if not isinstance(data, dict) or not isinstance(string_data, dict):
            raise bad_request(
                'Secret in version "v1" cannot be handled as a Secret: data must be a map'
            )
        total = 0
        for key, value in data.items():
            if not isinstance(value, str):
                raise bad_request(
                    'Secret in version "v1" cannot be handled as a Secret: '
                    f"data[{key}] is not a string"
                )
            try:
                total += len(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                raise bad_request(
                    'Secret in version "v1" cannot be handled as a Secret: illegal base64 data'
                    f" in data[{key}]"
                ) from None
        for key, value in string_data.items():
            encoded = base64.b64encode(str(value).encode()).decode()
            data[key] = encoded
            total += len(str(value).encode())
        if data:
            obj["data"] = data
        for key in data:
            if not _SECRET_KEY.match(key) or key in (".", ".."):
                causes.append(
                    (
                        f"data[{key}]",
                        "FieldValueInvalid",
                        f'Invalid value: "{key}": a valid config key must consist of '
                        "alphanumeric characters, '-', '_' or '.'",
                    )
                )
        if total > SECRET_MAX_BYTES:
            causes.append(
                (
                    "data",
                    "FieldValueTooLong",
                    f"Too long: must have at most {SECRET_MAX_BYTES} bytes",
                )
            )
        obj.setdefault("type", "Opaque")
        if old is not None:
            if obj["type"] != old.get("type", "Opaque"):
                causes.append(
                    (
                        "type",
                        "FieldValueInvalid",
                        f'Invalid value: "{obj["type"]}": field is immutable',
                    )
                )
            if old.get("immutable"):
                if (obj.get("data") or {}) != (old.get("data") or {}):
                    causes.append(
                        (
                            "data",
                            "FieldValueForbidden",
                            "Forbidden: field is immutable when `immutable` is set",
                        )
                    )
                if not obj.get("immutable"):
                    causes.append(
                        (
                            "immutable",
                            "FieldValueForbidden",
                            "Forbidden: field is immutable when `immutable` is set",
                        )
                    )
        return causes

    @staticmethod
    def _prepare_for_create(rtype: ResourceType, obj: Obj) -> None:
        if rtype.plural == "namespaces":
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            labels = obj["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif rtype.has_status and rtype.plural != "pods":
            obj.pop("status", None)  # status is written through /status only

    @staticmethod
    def _prepare_for_update(rtype: ResourceType, new: Obj, old: Obj) -> None:
        if rtype.plural == "namespaces":
            new["spec"] = old.get("spec", {})
            labels = new["metadata"].setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = new["metadata"]["name"]

    @staticmethod
    def _generation_changes(rtype: ResourceType, new: Obj, old: Obj) -> bool:
        if rtype.generation == "custom":
            strip = ("metadata", "status", "kind", "apiVersion")
            return {k: v for k, v in new.items() if k not in strip} != {
                k: v for k, v in old.items() if k not in strip
            }
        changed = bool(new.get("spec") != old.get("spec"))
        if rtype.generation == "spec+annotations":
            changed = changed or new["metadata"].get("annotations") != old["metadata"].get(
                "annotations"
            )
        return changed
