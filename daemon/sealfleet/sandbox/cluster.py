"""One emulated cluster: an ObjectStore, the HTTPS apiserver over it, and the controller.

The controller's two Services are wired into the apiserver's service proxy: a request to
``/api/v1/namespaces/kube-system/services/http:sealed-secrets-controller:/proxy/v1/cert.pem``
reaches the running controller process in-process, or gets the apiserver's 503 "no
endpoints available" while the Pod is not ready (restarting, crash-looping, deleted).
With :meth:`SandboxCluster.enable_flux` an emulated Flux (:mod:`sealfleet.sandbox.flux`)
runs beside it, applying the cluster's directory of the sandbox's GitOps repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from concurrent.futures import Executor
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from sealfleet.errors import PermanentError
from sealfleet.sandbox.apiserver import ApiServer, Tokens
from sealfleet.sandbox.apiserver.context import DEFAULT_BOOKMARK_INTERVAL
from sealfleet.sandbox.apiserver.listener import ConnectionGauge
from sealfleet.sandbox.apiserver.proxy import unavailable
from sealfleet.sandbox.controller import ControllerFlags, ControllerWorkload
from sealfleet.sandbox.controller.workload import DEFAULT_STARTUP_DELAY
from sealfleet.sandbox.flux import FluxController
from sealfleet.sandbox.objects import ObjectStore
from sealfleet.sandbox.seeding import SeedTarget
from sealfleet.sandbox.tls import CertificateAuthority


class SandboxCluster:
    """Use as ``async with SandboxCluster(...)``; the controller runs while inside.

    *connections* is the gauge its apiserver counts connections on (a sandbox shares one
    between all its clusters).
    """

    def __init__(self, name: str, *, ca: CertificateAuthority, executor: Executor,
                 flags: ControllerFlags | None = None,
                 crash_backoff: tuple[float, float] = (10.0, 300.0),
                 rng: random.Random | None = None,
                 bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
                 startup_delay: float = DEFAULT_STARTUP_DELAY,
                 connections: ConnectionGauge | None = None) -> None:
        self.name = name
        self.store = ObjectStore()
        self.api = ApiServer(self.store, ca.issue_server(), tokens=Tokens(),
                             bookmark_interval=bookmark_interval, connections=connections)
        self.workload = ControllerWorkload(self.store, executor=executor, cluster=name,
                                           flags=flags, crash_backoff=crash_backoff, rng=rng,
                                           startup_delay=startup_delay)
        self.workload.install()
        self.flux: FluxController | None = None
        self._task: asyncio.Task[None] | None = None
        self._flux_task: asyncio.Task[None] | None = None

    def enable_flux(self, url: str, *, interval: float, source_interval: float,
                    prune: bool = True) -> FluxController:
        """Flux's objects and controllers for this cluster (before ``async with``)."""
        self.flux = FluxController(self.store, cluster=self.name)
        self.flux.install(url, interval=interval, source_interval=source_interval,
                          prune_objects=prune)
        return self.flux

    @property
    def seed_target(self) -> SeedTarget:
        return SeedTarget(self.name, self.store, self.workload.knowledge,
                          self.workload.namespace)

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def tokens(self) -> Tokens:
        return self.api.tokens

    async def __aenter__(self) -> SandboxCluster:
        await self.api.start()
        namespace, name = self.workload.namespace, self.workload.name
        for service in (name, f"{name}-metrics"):
            self.api.register_service_handler(namespace, service, self._handler(service))
        self._task = asyncio.create_task(self.workload.run(), name=f"{self.name}-kubelet")
        if self.flux is not None:
            self._flux_task = asyncio.create_task(self.flux.run(), name=f"{self.name}-flux")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._flux_task is not None:
            self._flux_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flux_task
            self._flux_task = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.api.stop()

    async def wait_serving(self) -> None:
        """Until the controller answers (its Pod is ready) and Flux, if any, has made its
        first pass."""
        while self.workload.process is None or (
                self.flux is not None and not self.flux.first_pass.is_set()):
            if self._flux_task is not None and self._flux_task.done():
                self._flux_task.result()  # surface a Flux-loop failure
            if self._task is not None and self._task.done():
                self._task.result()  # surface a kubelet-loop failure
            if self.workload.last_crash is not None:
                raise PermanentError(f"{self.name}: the emulated controller crashed at "
                                     f"start: {self.workload.last_crash}")
            await asyncio.sleep(0.02)

    def _handler(self, service: str) -> Any:
        workload = self.workload

        async def handle(request: web.Request) -> web.StreamResponse:
            if workload.process is None:
                raise unavailable(service)
            body = await request.read()
            headers = CIMultiDict(request.headers)
            if "X-Forwarded-For" not in headers:
                # The real apiserver's proxy adds the client address.
                headers["X-Forwarded-For"] = request.remote or ""
            reply = await workload.proxy(service, request.method, request.path, headers, body)
            return web.Response(status=reply.status, body=reply.body,
                                headers=dict(reply.headers))

        return handle
