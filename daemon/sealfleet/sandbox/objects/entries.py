"""Stored objects and watch events: serialized once, parsed only when someone reads them."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealfleet.sandbox.objects.store import ObjectStore

Obj = dict[str, Any]


def dump(obj: Obj) -> bytes:
    """Compact JSON, as the apiserver writes it (no spaces)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def kind_first(obj: Obj) -> None:
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
        # None is the end-of-stream marker close() queues to wake a blocked reader.
        self._queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self.closed = False

    def matches(self, event: WatchEvent) -> bool:
        return event.resource == self.resource and (
            self.namespace is None or event.namespace == self.namespace
        )

    def push(self, event: WatchEvent) -> None:
        if not self.closed:
            self._queue.put_nowait(event)

    def close(self) -> None:
        """Unsubscribe; a reader gets the events already queued, then the end."""
        if not self.closed:
            self.closed = True
            self._store._unsubscribe(self)
            self._queue.put_nowait(None)

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # every later read ends too
            raise StopAsyncIteration
        return event

    def get_nowait(self) -> WatchEvent | None:
        """The next queued event, or None when there is none (yet, or ever: see ``closed``)."""
        try:
            event = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if event is None:
            self._queue.put_nowait(None)
        return event
