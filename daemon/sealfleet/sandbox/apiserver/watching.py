"""Watch streams: newline-delimited JSON events over a chunked HTTP response.

As on a real apiserver: without a resourceVersion (or with "0", or with
``sendInitialEvents=true``) the stream starts with a synthetic ADDED event per existing
object; with one, it replays the retained history after it, and a resourceVersion older
than the history gets a 200 response carrying a single ``ERROR`` event whose object is a
410 Status (reason Expired).  ``allowWatchBookmarks`` adds BOOKMARK events while idle and
one before a ``timeoutSeconds`` expiry; ``sendInitialEvents`` ends the initial burst with a
bookmark annotated ``k8s.io/initial-events-end``.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import web

from sealfleet.sandbox.apiserver import tables
from sealfleet.sandbox.apiserver.context import ClusterContext
from sealfleet.sandbox.apiserver.selectors import FieldRequirement, Selector
from sealfleet.sandbox.objects import ApiError, Entry, WatchEvent, bad_request, dump, too_old

if TYPE_CHECKING:
    from sealfleet.sandbox.apiserver.rest import Target

DEFAULT_TIMEOUT_SECONDS = 1800
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_BURST = 256            # queued events written at once at most


def _line(event_type: str, raw: bytes) -> bytes:
    return b'{"type":"' + event_type.encode() + b'","object":' + raw + b"}\n"


class _Writer:
    """Formats events for one watch: raw objects, or one-row Tables for kubectl."""

    def __init__(self, request: web.Request, response: web.StreamResponse, target: Target) -> None:
        self.response = response
        self.target = target
        self.table = tables.wants_table(request.headers.get("Accept", ""))
        self.include = request.query.get("includeObject", "Metadata")

    def line(self, event_type: str, raw: bytes) -> bytes:
        if self.table and event_type != "ERROR":
            obj = json.loads(raw)
            if event_type == "BOOKMARK":
                body = tables.table(self.target.resource, [], list_meta=obj["metadata"])
            else:
                body = tables.table(self.target.resource, [obj], include_object=self.include)
            raw = dump(body)
        return _line(event_type, raw)

    async def event(self, event_type: str, raw: bytes) -> None:
        await self.response.write(self.line(event_type, raw))

    async def bookmark(self, rv: int, *, initial_end: bool = False) -> None:
        rtype = self.target.served.rtype
        meta: dict[str, object] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        await self.event(
            "BOOKMARK",
            dump({"kind": rtype.kind, "apiVersion": rtype.api_version, "metadata": meta}),
        )

    async def error(self, exc: ApiError) -> None:
        await self.event("ERROR", dump(exc.status()))


def _selector(request: web.Request, target: Target) -> Selector:
    selector = Selector.parse(
        request.query.get("labelSelector"),
        request.query.get("fieldSelector"),
        resource=target.resource,
    )
    if target.name:  # watching one object: .../watch/.../secrets/NAME or .../secrets/NAME?watch=1
        selector.fields.append(FieldRequirement("metadata.name", False, target.name))
    return selector


def _timeout(value: str | None) -> float:
    if value in (None, ""):
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = int(str(value))
    except ValueError:
        raise bad_request(f"invalid timeoutSeconds {value!r}") from None
    return float(seconds) if seconds > 0 else DEFAULT_TIMEOUT_SECONDS


def _since(value: str | None) -> int | None:
    if value in (None, "", "0"):
        return None
    try:
        return int(str(value))
    except ValueError:
        raise bad_request(f"invalid resource version: {value}") from None


async def serve(ctx: ClusterContext, request: web.Request, target: Target) -> web.StreamResponse:
    query = request.query
    selector = _selector(request, target)
    timeout = _timeout(query.get("timeoutSeconds"))
    bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
    send_initial = query.get("sendInitialEvents", "").lower() in ("1", "true")
    since = _since(query.get("resourceVersion"))
    if send_initial and not bookmarks:
        raise ApiError(
            422,
            "Invalid",
            'ListOptions.meta.k8s.io "" is invalid: allowWatchBookmarks: Forbidden: '
            "sendInitialEvents requires setting allowWatchBookmarks=true",
        )
    store = ctx.store
    namespace = target.namespace

    response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    writer = _Writer(request, response, target)

    # Snapshot and subscription happen in one synchronous step: no event can slip between.
    initial: list[Entry] = []
    try:
        if ctx.faults.gone_next_watch:
            ctx.faults.gone_next_watch = False
            raise too_old(since or 0, store.resource_version)
        if since is None or send_initial:
            initial = [e for e in store.entries(target.resource, namespace) if selector.matches(e)]
            stream = store.watch(target.resource, namespace, store.resource_version)
            start_rv = store.resource_version
        else:
            stream = store.watch(target.resource, namespace, since)
            start_rv = since
    except ApiError as exc:
        await writer.error(exc)
        await response.write_eof()
        return response

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    cut_after = ctx.faults.watch_cut_after
    sent = 0
    ctx.active_watches.add(stream)
    try:
        for entry in initial:
            await writer.event("ADDED", entry.raw)
            sent += 1
            if cut_after is not None and sent >= cut_after:
                return _cut(request, response)
        if send_initial:
            await writer.bookmark(start_rv, initial_end=True)
        next_bookmark = loop.time() + ctx.bookmark_interval
        while True:
            now = loop.time()
            if now >= deadline:
                break
            wait = deadline - now
            if bookmarks:
                wait = min(wait, max(next_bookmark - now, 0.0))
            event = stream.get_nowait()
            if event is None:
                if stream.closed:  # the server stops or goes into outage
                    return _cut(request, response)
                try:
                    event = await asyncio.wait_for(anext(stream), timeout=wait)
                except TimeoutError:
                    event = None
                except StopAsyncIteration:
                    return _cut(request, response)
            if event is None:
                if bookmarks and loop.time() >= next_bookmark:
                    await writer.bookmark(store.resource_version)
                    next_bookmark = loop.time() + ctx.bookmark_interval
                continue
            # Every event already queued goes out in one write (one chunk, one TLS
            # record or a few): a burst of writes costs a send per burst, not per event.
            lines: list[bytes] = []
            while event is not None:
                shown = _as_seen_through(event, selector)
                if shown is not None:
                    lines.append(writer.line(shown, event.raw))
                    sent += 1
                    if cut_after is not None and sent >= cut_after:
                        break
                if len(lines) >= _BURST:
                    break
                event = stream.get_nowait()
            if lines:
                await response.write(b"".join(lines))
            if cut_after is not None and sent >= cut_after:
                return _cut(request, response)
        if bookmarks:
            await writer.bookmark(store.resource_version)
        await response.write_eof()
        return response
    except ConnectionError:  # the client went away
        return response
    finally:
        ctx.active_watches.discard(stream)
        stream.close()


def _as_seen_through(event: WatchEvent, selector: Selector) -> str | None:
    """The event type a selector-filtered watcher sees, or None when it sees nothing.

    As the watch cache does: an object modified into the selection is ADDED for the
    watcher, one modified out of it is DELETED.
    """
    if selector.empty:
        return event.type
    matches_now = selector.matches(Entry(json.loads(event.raw), event.raw))
    if event.type != "MODIFIED" or event.old_raw is None:
        return event.type if matches_now else None
    matched_before = selector.matches(Entry(json.loads(event.old_raw), event.old_raw))
    if matches_now:
        return "MODIFIED" if matched_before else "ADDED"
    return "DELETED" if matched_before else None


def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Drop the connection mid-stream, as a network failure or apiserver crash would."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response
