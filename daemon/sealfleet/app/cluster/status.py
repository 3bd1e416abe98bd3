"""A cluster's reachability and scan outcome: kept in :class:`ClusterState`, recorded in
the store, logged on change only (once on failure, once on recovery)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import structlog

from sealfleet.adapters.store.records import ClusterRegistration, ClusterStatus
from sealfleet.app.cluster.state import ClusterState, Deps
from sealfleet.errors import FleetError, StoreError

log = structlog.get_logger(__name__)


def _status(state: ClusterState, *, scan_duration_ms: int | None = None) -> ClusterStatus:
    """The row as *state* has it (a scan time only when a scan just finished), with where
    the cluster is reached when that changed since the last write."""
    return ClusterStatus(
        reachable=state.reachable is not False, last_error=state.last_error,
        last_scan_at=dt.datetime.now(dt.UTC) if scan_duration_ms is not None else None,
        scan_duration_ms=scan_duration_ms, sealing_key=state.sealing_key,
        sealing_key_source=state.sealing_key_source, controller_error=state.controller_problem,
        controller_state=state.controller_state, key_renew_seconds=state.key_renew_seconds,
        registration=_unregistered(state))


def _unregistered(state: ClusterState) -> ClusterRegistration | None:
    """The registration to write, if the store does not have it yet (None if it has)."""
    return state.registration if state.registration != state.registered else None


async def _write(state: ClusterState, status: ClusterStatus,
                 write: Callable[[ClusterStatus], Awaitable[None]]) -> None:
    """*status* written by *write*; the store has the registration it carried from then."""
    await write(status)
    if status.registration is not None:
        state.registered = status.registration


async def register(state: ClusterState, deps: Deps) -> None:
    """Make the cluster known to the store without a status (a session that failed for
    the daemon's reasons, not the cluster's): the report lists it as not scanned yet."""
    registration = _unregistered(state)
    if registration is None:
        return
    try:
        await deps.store.inventory.upsert_cluster(
            state.name, server=registration.server,
            controller_namespace=registration.controller_namespace,
            controller_name=registration.controller_name)
    except StoreError:
        return   # best effort: the next status write carries it
    state.registered = registration


async def record(state: ClusterState, deps: Deps) -> None:
    """Write the cluster's status row (its controller changed)."""
    state.recorded_failure = None  # the row changes: the next failure is written again
    await _write(state, _status(state),
                 lambda status: deps.store.inventory.record_status(state.name, status))


async def mark_failed(state: ClusterState, deps: Deps, error: FleetError) -> None:
    message = str(error)
    if state.reachable is not False:
        log.warning("cluster_unreachable", error=message, error_kind=type(error).__name__)
    state.reachable, state.last_error = False, message
    try:
        # The same failure again (a cluster down for a while, retried with backoff; the
        # whole fleet during an outage): nothing new for the store or the report.
        failure = (message, state.sealing_key, state.sealing_key_source,
                   state.controller_problem, state.controller_state, state.key_renew_seconds)
        if failure == state.recorded_failure and _unregistered(state) is None:
            return
        await _write(state, _status(state),
                     lambda status: deps.store.inventory.record_status(state.name, status))
        state.recorded_failure = failure
        deps.on_change()
    finally:
        # Only once the failure is in the store: the first pass is what READY=1 and the
        # first report wait for, and a report read just then must show the cluster down
        # (it showed "not scanned yet" when this came before the write).  Set even when
        # the write fails: an unwritable store must not hold READY back for good.
        state.first_pass.set()


async def mark_scanned(state: ClusterState, deps: Deps, duration_ms: int, *,
                       write: Callable[[ClusterStatus], Awaitable[None]]) -> None:
    """The scan is done: its status goes to the store by *write*, the write-behind's last
    flush of the scan (one transaction with the scan's last records and positions)."""
    if state.reachable is False:
        log.info("cluster_recovered", previous_error=state.last_error)
    log.info("cluster_scanned", duration_ms=duration_ms, sealed_secrets=len(state.inventory),
             sealing_key=state.sealing_key, sealing_key_source=state.sealing_key_source)
    state.reachable, state.last_error = True, None
    state.recorded_failure = None
    await _write(state, _status(state, scan_duration_ms=duration_ms), write)
    state.first_pass.set()
    deps.on_change()
