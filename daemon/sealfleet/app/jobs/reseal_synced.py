"""Waiting until a cluster's controller reports ``Synced`` for the objects a reseal wrote.

One read of the objects still waited for (a list, or a GET each when few are left),
then, after a list, a watch from that list's resourceVersion: each object is looked at
once per change the controller makes, instead of the whole list once per poll (with
1,000 objects written that is ten lists of 1,000 objects parsed per cluster, against
two watch events per object).  Nothing can be missed between the read and the watch:
the watch starts where the list's snapshot ends.  When the watch cannot be had or
breaks (410 Gone, the cluster unreachable, no permission), polling goes on as before:
a list or GETs, the pause growing from :data:`POLL` to :data:`POLL_MAX`.  The whole
wait is bounded by *timeout*.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import KubeClient, NotFound
from sealfleet.app.jobs.reseal_reads import list_now_at, object_path, synced_state
from sealfleet.errors import FleetError, TransientError

log = structlog.get_logger(__name__)

POLL = 0.2              # first pause between Synced polls, growing to POLL_MAX
POLL_MAX = 2.0
GETS = 16               # objects left to wait for that are read one by one
_WATCH_SECONDS = 300    # the longest watch asked for (the wait is bounded anyway)


class SyncWait:
    """The objects of one step still waiting for their Synced (ref -> generation
    written); *on_synced* and *on_failed* are called once for each as it settles."""

    def __init__(self, client: KubeClient, waiting: Mapping[str, int], *,
                 on_synced: Callable[[str], None], on_failed: Callable[[str, str], None],
                 timeout: float, gets: int = GETS) -> None:
        self._client = client
        self._waiting = dict(waiting)
        self._on_synced = on_synced
        self._on_failed = on_failed
        self._timeout = timeout
        self._gets = gets
        self._deadline = time.monotonic() + timeout
        self._last: dict[str, str] = {}     # ref -> what its status said last
        self.reads = 0                      # lists or rounds of GETs made
        self.watched = 0                    # watch events of waited objects looked at

    async def run(self) -> None:
        """Until every object settled, or the timeout failed those left."""
        waiting = self._waiting
        pause = POLL
        watch = True
        while waiting:
            listed: dict[str, dict[str, Any]] | None
            version: str | None = None
            try:
                listed, version = await self._read()
            except TransientError as error:
                if time.monotonic() > self._deadline:
                    raise
                log.info("reseal_sync_poll_failed", error=str(error))
                listed = None    # unknown: nothing is taken as deleted
            for ref in list(waiting):
                obj = listed.get(ref) if listed is not None else None
                if obj is not None:
                    self._settle(ref, obj)
                elif listed is not None:
                    self._fail(ref, "deleted before the controller synced it")
            if waiting and time.monotonic() > self._deadline:
                for ref, generation in waiting.items():
                    self._on_failed(ref, f"the controller did not report Synced for "
                                         f"generation {generation} within "
                                         f"{self._timeout:.0f}s "
                                         f"({self._last.get(ref, 'no status')})")
                return
            if waiting and watch and version:
                watch = await self._follow(version)
                continue     # settled, or read again (after a broken watch: polling)
            if waiting:
                await asyncio.sleep(pause)
                pause = min(pause * 1.5, POLL_MAX)

    def _settle(self, ref: str, obj: Mapping[str, Any]) -> None:
        generation = self._waiting[ref]
        observed, status, message = synced_state(obj)
        if observed is not None and observed >= generation and status == "True":
            del self._waiting[ref]
            self._on_synced(ref)
        elif observed is not None and observed >= generation and status == "False":
            self._fail(ref, f"the controller reports Synced=False: {message}")
        else:
            self._last[ref] = f"observedGeneration {observed}, Synced {status}"

    def _fail(self, ref: str, reason: str) -> None:
        del self._waiting[ref]
        self._on_failed(ref, reason)

    async def _read(self) -> tuple[dict[str, dict[str, Any]], str | None]:
        """The objects still waited for: a list (with its resourceVersion) when many
        are left, else one GET each."""
        self.reads += 1
        if len(self._waiting) > self._gets:
            return await list_now_at(self._client)
        found: dict[str, dict[str, Any]] = {}
        for ref in self._waiting:
            namespace, _, name = ref.partition("/")
            try:
                found[ref] = await self._client.get_json(object_path(namespace, name))
            except NotFound:
                continue
        return found, None

    async def _follow(self, version: str) -> bool:
        """Settle objects from watch events after *version*, until none is left, the
        deadline passes or the watch ends; False when it broke (poll from then on)."""
        remaining = self._deadline - time.monotonic()
        events = self._client.watch(controller.SEALED_SECRETS_PATH, resource_version=version,
                                    timeout_seconds=int(min(remaining, _WATCH_SECONDS)) + 1)
        try:
            async with contextlib.aclosing(events), asyncio.timeout(max(remaining, 0.0)):
                async for event in events:
                    if event.type == "BOOKMARK":
                        continue
                    meta = event.object.get("metadata") or {}
                    ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
                    if ref not in self._waiting:
                        continue
                    self.watched += 1
                    if event.type == "DELETED":
                        self._fail(ref, "deleted before the controller synced it")
                    else:
                        self._settle(ref, event.object)
                    if not self._waiting:
                        return True
        except TimeoutError:
            return True      # the deadline: the next read is the last
        except FleetError as error:
            log.info("reseal_sync_watch_failed", error=str(error))
            return False
        return True          # the server ended the watch: read again, watch again
