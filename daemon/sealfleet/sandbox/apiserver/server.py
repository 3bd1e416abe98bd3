"""One emulated kube-apiserver: an aiohttp app over HTTPS on loopback, with its lifecycle.

The server owns the listening socket so that a full outage can be emulated faithfully:
the listener is closed (clients get "connection refused"), open connections and watch
streams are dropped, and recovery listens again on the same port, so kubeconfigs and
daemon configs written before the outage stay valid.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from sealfleet.sandbox.apiserver import discovery, openapi, rest
from sealfleet.sandbox.apiserver.auth import Tokens, forbid_path
from sealfleet.sandbox.apiserver.context import (
    DEFAULT_BOOKMARK_INTERVAL,
    ClusterContext,
    ServiceHandler,
)
from sealfleet.sandbox.apiserver.faults import Faults
from sealfleet.sandbox.apiserver.listener import ConnectionGauge, Listener
from sealfleet.sandbox.controller import manifests
from sealfleet.sandbox.objects import ApiError, ObjectStore
from sealfleet.sandbox.tls import ServerCertificate

_log = structlog.get_logger(__name__)

FAULTS_PATH = "/_sandbox/faults"
_HEALTH_PATHS = ("/healthz", "/livez", "/readyz")


def error_response(exc: ApiError) -> web.Response:
    response = rest.json_response(exc.status(), exc.code)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as exc:
        return error_response(exc)
    except (web.HTTPException, asyncio.CancelledError, ConnectionResetError):
        raise  # (a connection an outage dropped mid-request is aiohttp's to ignore)
    except Exception:  # a bug here must look like a real apiserver's 500, not crash a test
        _log.exception("sandbox_apiserver_handler_failed", method=request.method, path=request.path)
        return error_response(ApiError(500, "InternalError", "Internal error occurred"))


class ApiServer:
    """An HTTPS apiserver for one ObjectStore.  Use as ``async with ApiServer(...) as api``.

    After start: ``url`` (``https://127.0.0.1:<port>``), ``ca_pem`` and ``tokens`` (admin
    and restricted) are what a kubeconfig needs.  ``register_service_handler`` routes the
    service proxy to an in-process aiohttp handler (it receives a clone of the request
    whose path is the proxied sub-path, without the caller's Authorization header).
    ``set_faults(**settings)`` / ``clear_faults()`` change fault injection (see
    ``faults.Faults``); ``set_faults(outage=True)`` closes the listener and drops every
    connection, ``outage=False`` listens again on the same port.  ``connections`` (a
    ``ConnectionGauge``, which several servers may share) counts accepted connections and
    TLS handshakes in flight; ``ctx.requests`` counts requests by verb and resource.  The
    SealedSecret CRD is installed into the store on construction.
    """

    def __init__(
        self,
        store: ObjectStore,
        certificate: ServerCertificate,
        *,
        tokens: Tokens | None = None,
        controller_namespace: str = "kube-system",
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
        connections: ConnectionGauge | None = None,
    ) -> None:
        self.ctx = ClusterContext(
            store=store,
            tokens=tokens or Tokens(),
            controller_namespace=controller_namespace,
            bookmark_interval=bookmark_interval,
        )
        self.certificate = certificate
        self.host = host
        self.port = port
        self._ssl = certificate.ssl_context()
        self.connections = connections if connections is not None else ConnectionGauge()
        self._resources = rest.ResourceHandlers(self.ctx)
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self._install_crd()

    # ------------------------------------------------------------------ public API

    @property
    def store(self) -> ObjectStore:
        return self.ctx.store

    @property
    def tokens(self) -> Tokens:
        return self.ctx.tokens

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.certificate.ca_pem

    @property
    def faults(self) -> Faults:
        return self.ctx.faults

    async def set_faults(self, **changes: Any) -> Faults:
        """Change fault settings (same keys as the JSON endpoint); returns the new settings."""
        new = self.ctx.faults.updated(changes)
        outage_changed = new.outage != self.ctx.faults.outage
        self.ctx.faults = new
        if outage_changed:
            await self._apply_outage(new.outage)
        return new

    async def clear_faults(self) -> Faults:
        return await self.set_faults(**Faults().to_json())

    def register_service_handler(
        self, namespace: str, service: str, handler: ServiceHandler
    ) -> None:
        """Route ``.../services/<service>/proxy/...`` in ``namespace`` to ``handler``."""
        self.ctx.service_handlers[(namespace, service)] = handler

    def unregister_service_handler(self, namespace: str, service: str) -> None:
        self.ctx.service_handlers.pop((namespace, service), None)

    async def start(self) -> None:
        app = web.Application(middlewares=[_errors], client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=2.0,
            handler_cancellation=True,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self._listener = Listener(self._runner.server, self._ssl, self.host, self.connections)
        self._listen()
        _log.info("sandbox_apiserver_started", url=self.url)

    async def stop(self) -> None:
        self.ctx.end_watches()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ lifecycle

    def _listen(self) -> None:
        assert self._listener is not None
        self.port = self._listener.open(self.port)
        self.ctx.server_address = f"{self.host}:{self.port}"

    async def _apply_outage(self, down: bool, keep: web.BaseRequest | None = None) -> None:
        if self._listener is None:
            return
        if down:
            # Watch handlers see their stream closed and cut their connection; the
            # listener then drops every other connection and waits until all are closed.
            self.ctx.end_watches()
            await self._listener.close(keep=keep.transport if keep is not None else None)
            _log.info("sandbox_apiserver_outage", url=self.url)
        else:
            if not self._listener.listening:
                self._listen()
            _log.info("sandbox_apiserver_recovered", url=self.url)

    def _install_crd(self) -> None:
        crd = manifests.crd()
        key = "customresourcedefinitions.apiextensions.k8s.io"
        try:
            self.ctx.store.entry(key, None, crd["metadata"]["name"])
        except ApiError:
            self.ctx.store.create(key, None, crd)

    # ------------------------------------------------------------------- dispatch

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == FAULTS_PATH:
            return await self._faults_endpoint(request)
        faults = self.ctx.faults
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.roll_drop(self.ctx.rng):
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)  # never reaches the (aborted) client
        injected = faults.roll_error(self.ctx.rng)
        if injected is not None:
            raise injected
        user = self.ctx.tokens.user_for(request.headers.get("Authorization"))
        bare = path.rstrip("/")  # clients ask for /version/ as well as /version
        if bare in _HEALTH_PATHS:
            return web.Response(text="ok")
        if bare == "/version":
            return rest.json_response(discovery.KUBE_VERSION)
        if path.startswith("/openapi/"):
            return openapi.serve(request)
        document = self._discovery(request, path)
        if document is not None:
            return document
        target = rest.parse_path(path)
        if target is None:
            forbid_path(user, path)
            raise rest.not_found_path()
        return await self._resources.handle(request, target, user)

    def _discovery(self, request: web.Request, path: str) -> web.Response | None:
        path = path.rstrip("/") or "/"
        accept = request.headers.get("Accept", "")
        if path in ("/api", "/apis"):
            if discovery.wants_aggregated(accept):
                return rest.json_response(
                    discovery.aggregated(core=path == "/api"),
                    content_type=discovery.AGGREGATED_CONTENT_TYPE,
                )
            if path == "/api":
                return rest.json_response(discovery.api_versions(self.ctx.server_address))
            return rest.json_response(discovery.api_group_list())
        if path == "/api/v1":
            return rest.json_response(discovery.api_resource_list("v1"))
        parts = path.split("/")
        if len(parts) == 3 and parts[1] == "apis":
            group = discovery.api_group(parts[2])
            if group is None:
                raise rest.not_found_path()
            return rest.json_response(group)
        if len(parts) == 4 and parts[1] == "apis":
            resources = discovery.api_resource_list(f"{parts[2]}/{parts[3]}")
            if resources is None:
                raise rest.not_found_path()
            return rest.json_response(resources)
        return None

    async def _faults_endpoint(self, request: web.Request) -> web.Response:
        user = self.ctx.tokens.user_for(request.headers.get("Authorization"))
        forbid_path(user, FAULTS_PATH, "get" if request.method == "GET" else "create")
        if request.method == "GET":
            return rest.json_response(self.ctx.faults.to_json())
        if request.method != "POST":
            raise ApiError(405, "MethodNotAllowed", "use GET or POST")
        changes = await rest.read_json(request, "Faults")
        new = self.ctx.faults.updated(changes)
        outage_changed = new.outage != self.ctx.faults.outage
        self.ctx.faults = new
        if outage_changed:
            await self._apply_outage(new.outage, keep=request)
        response = rest.json_response(new.to_json())
        if new.outage:
            response.force_close()
        return response
