"""Probing a cluster's sealed-secrets controller for the key it seals with.

``/v1/cert.pem`` through the service proxy is the truth; when the controller cannot
be reached (no ready replica, no Service, crash loop) the sealing key falls back to
the controller's own rule over the key Secrets the cluster holds.  A down controller
is not a down cluster: the problem is kept in the cluster's state (and its status),
while a broken apiserver is noticed by the lists and watches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import Gone, KubeClient, NotFound
from sealfleet.app.cluster import status
from sealfleet.app.cluster.state import ClusterState, Deps
from sealfleet.domain.controller_state import ControllerState
from sealfleet.domain.keys import SealingKeySource, most_recent_key
from sealfleet.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

POLL_INTERVAL = 60.0    # seconds between cert.pem checks between key events
# While the controller does not serve the newest active key it holds (it loads key
# Secrets only when it starts: a renewal's restart is under way) or is not serving at
# all, probe again after 1, 2, 4... seconds (up to POLL_INTERVAL): the report learns the
# new sealing key within seconds of the restart, not a minute later.
SETTLING_FIRST = 1.0


class ControllerProbe:
    def __init__(self, state: ClusterState, deps: Deps, *,
                 on_sealing_key_changed: Callable[[], None]) -> None:
        self._state = state
        self._deps = deps
        self._on_sealing_key_changed = on_sealing_key_changed
        self._settling: float | None = None      # the next short interval, while unsettled
        self._unsettled = asyncio.Event()

    async def poll(self, client: KubeClient) -> None:
        while True:
            interval = POLL_INTERVAL if self._settling is None else self._settling
            with contextlib.suppress(TimeoutError):
                # A probe that finds the controller unsettled cuts a long wait short.
                async with asyncio.timeout(interval):
                    await self._unsettled.wait()
            self._unsettled.clear()
            if self._settling is not None:
                self._settling = min(POLL_INTERVAL, self._settling * 2)
            self._deps.on_progress()
            await self.probe(client)

    async def probe(self, client: KubeClient) -> None:
        """Learn the sealing key: ``/v1/cert.pem``, else the newest active key held."""
        state = self._state
        namespace, name = state.cluster.controller_namespace, state.cluster.controller_name
        fingerprint: str | None = None
        source: SealingKeySource | None = None
        problem: str | None = None
        controller_state = ControllerState.NOT_SERVING
        changed_flags = False
        try:
            deployment = await controller.read_deployment(client, namespace, name)
            if deployment.flags is not None:
                renew = int(deployment.flags.key_renew_period.total_seconds())
                if renew != state.key_renew_seconds:
                    state.key_renew_seconds = renew
                    changed_flags = True
            if not deployment.available:
                # The cause: what the certificate fetch then fails with (a Service
                # without endpoints, a 503) is only its consequence.
                problem = f"deployment {namespace}/{name} has no ready replicas"
                controller_state = ControllerState.NO_READY_REPLICAS
            state.proxy = await controller.proxy_name(client, namespace, name)
        except Gone:
            raise
        except NotFound as error:
            problem, controller_state = str(error), ControllerState.NOT_INSTALLED
        except (TransientError, PermanentError) as error:
            problem = problem or str(error)
        else:
            try:
                certificate = await controller.fetch_certificate(client, namespace,
                                                                 state.proxy)
            except Gone:
                raise
            except (NotFound, TransientError, PermanentError) as error:
                problem = problem or str(error)
            else:
                # The certificate is the sealing key's truth; a Deployment saying it has
                # no ready replica is still reported (an answer from a Pod on its way
                # out, a status that lags): the next probe sees which it was.
                if controller_state is not ControllerState.NO_READY_REPLICAS:
                    controller_state = ControllerState.SERVING
                fingerprint, source = certificate.fingerprint, SealingKeySource.CERT_PEM
                if not state.cluster.read_key_secrets:
                    await self._deps.keystore.record_certificate(certificate)
        newest = self._newest_active_key()
        self._settle(controller_state is ControllerState.SERVING
                     and (newest is None or fingerprint == newest))
        if fingerprint is None:
            fingerprint = newest
            source = SealingKeySource.NEWEST_ACTIVE if fingerprint else None
        await self._note(fingerprint, source, problem, controller_state,
                         changed_flags=changed_flags)

    def _settle(self, settled: bool) -> None:
        if settled:
            self._settling = None
        elif self._settling is None:
            self._settling = SETTLING_FIRST
            self._unsettled.set()

    def _newest_active_key(self) -> str | None:
        held = [k for k in self._state.holdings.values() if k.active]
        newest = most_recent_key(held, created=lambda k: k.creation_timestamp)
        return newest.fingerprint if newest else None

    async def _note(self, fingerprint: str | None, source: SealingKeySource | None,
                    problem: str | None, controller_state: ControllerState, *,
                    changed_flags: bool = False) -> None:
        state = self._state
        if problem != state.controller_problem:
            if problem is not None:
                log.warning("controller_unavailable", error=problem,
                            controller_state=controller_state, sealing_key_source=source)
            else:
                log.info("controller_recovered")
        changed_problem = (changed_flags or problem != state.controller_problem
                           or controller_state != state.controller_state)
        state.controller_problem, state.controller_state = problem, controller_state
        changed_key = fingerprint != state.sealing_key
        if not changed_key and source == state.sealing_key_source and not changed_problem:
            return
        state.sealing_key, state.sealing_key_source = fingerprint, source
        if state.reachable is not None:
            await status.record(state, self._deps)
        if changed_key:
            log.info("sealing_key_changed", sealing_key=fingerprint, source=source)
            self._on_sealing_key_changed()
        self._deps.on_change()
