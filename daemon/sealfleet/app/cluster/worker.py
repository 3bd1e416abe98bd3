"""One cluster's worker: the connection loop that keeps its slice of the inventory current.

A session (one connection) scans, then follows the cluster:

1. the key Secrets (:mod:`key_secret_observer`), unless in least-privilege mode;
2. the controller (:mod:`controller_probe`): which key it seals with;
3. the SealedSecrets (:mod:`sealed_secret_observer`): resumed or listed, then watched;
4. then every follower at once in one TaskGroup, with the write-behind, the verifier
   (least-privilege mode) and the resync timer, until ``resync_interval`` calls for a
   fresh list or an error ends the session.

Errors end the session, never the worker: the cluster is marked unreachable with its
last error (logged once on failure and once on recovery), waits with jittered
exponential backoff, and starts a new session.  A malformed object is recorded with its
reason; it never ends anything.

A session holds a turn at the fleet's connect gate from its first connection attempt
until its SealedSecrets watch streams (the scan in between), so the fleet bounds how
many clusters connect and scan at once; a session that fails gives its turn back at
once.  The key Secrets' watch, a second connection, then waits for a background turn
(:mod:`sealfleet.app.connect_gate`): the clusters still waiting to scan go first.  It
resumes from the key list's resourceVersion, so it misses nothing while it waits.  Once
the watches stream, the cluster's upkeep (events, the controller poll) needs no turn.  The
backoff starts small again after a session that scanned, and a transient failure's wait
ends early when another cluster comes back (the gate's recovery hint: after a
fleet-wide outage the fleet is whole again soon, not after the longest backoff).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import structlog

from sealfleet.adapters import retry
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.rsa_pool import RsaWorkerError
from sealfleet.adapters.store.records import ClusterRegistration
from sealfleet.app.cluster import status
from sealfleet.app.cluster.controller_probe import ControllerProbe
from sealfleet.app.cluster.inventory import ClusterInventory
from sealfleet.app.cluster.key_secret_observer import KeySecretObserver
from sealfleet.app.cluster.sealed_secret_observer import SealedSecretObserver
from sealfleet.app.cluster.state import ClusterState, Deps
from sealfleet.app.cluster.verifier import Verifier
from sealfleet.app.cluster.write_behind import WriteBehind
from sealfleet.app.config import ClusterSettings
from sealfleet.app.connect_gate import ConnectGate
from sealfleet.errors import (
    FleetError,
    StoreError,
    TransientError,
    drop_tracebacks,
    first_error,
)

log = structlog.get_logger(__name__)

# A store error is retried on its own, quickly: it says nothing about the cluster, and
# the busy timeout has already waited (10 s) before it is raised.
_STORE_BACKOFF = retry.BackoffPolicy(initial=0.5, cap=5.0)


class _ResyncDue(Exception):
    """Internal: the resync interval has passed; end the session and list again."""


class _Turn:
    """One turn at a gate, given back exactly once: early, or when the block ends."""

    def __init__(self, gate: ConnectGate, *, background: bool = False) -> None:
        self._gate = gate
        self._background = background
        self._held = False

    async def __aenter__(self) -> _Turn:
        await self._gate.acquire(background=self._background)
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._gate.release(background=self._background)


class ClusterWorker:
    """Keeps one cluster's inventory current; :meth:`run` never returns.

    *load_gate* bounds how many stored inventories load at once, *connect_gate* how
    many clusters connect and scan at once; both are the fleet's.
    """

    def __init__(self, cluster: ClusterSettings, deps: Deps, *,
                 load_gate: asyncio.Semaphore, connect_gate: ConnectGate) -> None:
        self.state = ClusterState(cluster=cluster, inventory=ClusterInventory(cluster.name))
        self._deps = deps
        self._load_gate = load_gate
        self._connect_gate = connect_gate
        self._writer = WriteBehind(self.state, deps)
        self._sealed = SealedSecretObserver(self.state, deps, self._writer)
        self._controller = ControllerProbe(self.state, deps,
                                           on_sealing_key_changed=self._sealed.reclassify_all)
        self._keys = KeySecretObserver(self.state, deps, self._writer,
                                       after_change=self._controller.probe)
        self._verifier = Verifier(self.state, deps)
        self._store_backoff = retry.Backoff(_STORE_BACKOFF)
        self._backoff = retry.Backoff(deps.options.backoff)   # the cluster's failures
        self._scanned = False                                 # this session scanned

    # What the fleet manager, the tests and the benchmarks read of a worker.
    @property
    def name(self) -> str:
        return self.state.name

    @property
    def first_pass(self) -> asyncio.Event:
        return self.state.first_pass

    @property
    def reachable(self) -> bool | None:
        return self.state.reachable

    @property
    def last_error(self) -> str | None:
        return self.state.last_error

    @property
    def inventory(self) -> ClusterInventory:
        return self.state.inventory

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Sessions forever; failures are marked, logged once, and backed off."""
        options = self._deps.options
        with structlog.contextvars.bound_contextvars(cluster=self.name):
            try:
                await self._load()
                backoff = self._backoff
                while True:
                    self._scanned = False
                    try:
                        await self._session()
                    except _ResyncDue as resync:
                        drop_tracebacks(resync)
                        backoff.reset()
                        self.state.resume = False  # the point of a resync is a fresh list
                        continue
                    except StoreError as error:
                        # Ours, not the cluster's (a locked or full database): the cluster
                        # stays reachable; try again soon, resuming where the store stands.
                        drop_tracebacks(error)
                        await self._store_failed(error)
                        continue
                    except RsaWorkerError as error:
                        # Ours too: RSA workers died under this cluster's items.
                        drop_tracebacks(error)
                        await self._rsa_failed(error)
                        continue
                    except FleetError as error:
                        drop_tracebacks(error)  # a session's error is retried, never kept
                        await status.mark_failed(self.state, self._deps, error)
                        if self._scanned:  # a failure after a good session: start small
                            backoff.reset()
                        # Next session: try to resume the watch where it stopped.
                        self.state.resume = True
                        if isinstance(error, TransientError) and error.retry_after is None:
                            # Another cluster's recovery may end this wait early (never
                            # one the server asked for, nor one after a permanent error).
                            await self._connect_gate.back_off(
                                backoff.delay_for(error), spread=options.backoff.initial)
                        elif isinstance(error, TransientError):
                            await asyncio.sleep(backoff.delay_for(error))
                        else:
                            await asyncio.sleep(backoff.next_delay(options.backoff.cap / 2))
            finally:
                self._sealed.close()

    async def _load(self) -> None:
        """The stored inventory, so that unchanged objects cost nothing after a restart.

        A few clusters at a time (the gate): full records are big, the entries small.
        """
        async with self._load_gate:
            records = await self._deps.store.inventory.sealed_secrets_of_cluster(self.name)
            self.state.inventory.load(records)
            self.state.resume = bool(records)
            del records
        self._deps.on_progress()

    async def _session(self) -> None:
        try:
            await self._connected()
        except (_ResyncDue, FleetError):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Stopped while a task of the session failed: the TaskGroup (or the last
                # flush) raised that failure instead of the cancellation.  The stop
                # wins: nothing is marked or retried.
                raise asyncio.CancelledError from None
            raise

    async def _connected(self) -> None:
        """One connection: scan, then follow until an error or the resync interval."""
        cluster, deps = self.state.cluster, self._deps
        async with _Turn(self._connect_gate) as turn, KubeClient.connect(
                str(cluster.kubeconfig), cluster.context,
                request_timeout=deps.options.request_timeout) as client:
            started = time.monotonic()
            # Written with the scan's status (or a failure's): one write, not two.
            self.state.registration = ClusterRegistration(
                client.server, cluster.controller_namespace, cluster.controller_name)
            keys_rv = await self._keys.list(client) if cluster.read_key_secrets else None
            await self._controller.probe(client)
            sealed_rv = await self._sealed.scan(client)
            # The scan's last records, its watch positions and its status: one write.
            await status.mark_scanned(self.state, deps,
                                      int((time.monotonic() - started) * 1000),
                                      write=self._writer.flush)
            self._store_ok()
            self._scanned = True
            deps.on_scanned()
            if self._backoff.failures:
                self._connect_gate.note_recovered()  # back after failing: others may be too
            try:
                async with asyncio.TaskGroup() as group:
                    def spawn(task: str, coro: Coroutine[Any, Any, None]) -> None:
                        group.create_task(coro, name=f"{self.name}:{task}")

                    watching = asyncio.Event()
                    spawn("watch-sealedsecrets", self._sealed.follow(
                        client, sealed_rv, on_open=watching.set))
                    if keys_rv is not None:
                        spawn("watch-keys", self._follow_keys(client, keys_rv))
                    spawn("controller", self._controller.poll(client))
                    spawn("flush", self._writer.run())
                    spawn("keystore", self._sealed.follow_keystore(client))
                    if not cluster.read_key_secrets:
                        spawn("verify", self._verifier.run(client))
                    spawn("resync", self._resync_timer())
                    await watching.wait()
                    turn.release()  # connected and following: the next cluster's turn
                    # Only the tasks end a session.  The body waits for that, so that a
                    # failing task cancels it: a task failing after the body returned
                    # would leave this task marked as being cancelled (Python 3.11's
                    # TaskGroup), and a cancelled worker stops.
                    await asyncio.get_running_loop().create_future()
            except BaseExceptionGroup as group_error:
                raise first_error(group_error, prefer=(FleetError, _ResyncDue)) from None
            finally:
                await asyncio.shield(self._writer.flush())

    async def _follow_keys(self, client: KubeClient, resource_version: str) -> None:
        """The key Secrets' watch, opened on a background turn (see the docstring)."""
        async with _Turn(self._connect_gate, background=True) as turn:
            await self._keys.follow(client, resource_version, on_open=turn.release)

    async def _store_failed(self, error: StoreError) -> None:
        if self._store_backoff.failures == 0:
            log.warning("store_write_failed", error=str(error))
        self.state.resume = True
        await asyncio.sleep(self._store_backoff.next_delay())

    async def _rsa_failed(self, error: RsaWorkerError) -> None:
        log.warning("attribution_failed", error=str(error))
        await status.register(self.state, self._deps)
        self.state.resume = True
        await asyncio.sleep(self._backoff.delay_for(error))

    def _store_ok(self) -> None:
        if self._store_backoff.failures:
            log.info("store_write_recovered")
            self._store_backoff.reset()

    async def _resync_timer(self) -> None:
        await asyncio.sleep(self._deps.options.resync_interval)
        raise _ResyncDue
