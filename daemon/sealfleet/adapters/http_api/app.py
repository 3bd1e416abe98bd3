"""The aiohttp application: read endpoints, one error shape, bearer auth on TCP.

Auth is decided per connection: a request that came over the unix socket is trusted
(the socket's mode 0660 and its directory are the access control); a request over TCP
must carry ``Authorization: Bearer <token>`` - the read token (or the admin token) for
GET, the admin token for anything else.  Tokens are compared in constant time.

Every error, including the router's own 404/405, is JSON of one shape:
``{"error": {"code": "...", "message": "..."}}``.  Messages never quote secrets; no
endpoint ever returns key material or plaintext (keys are described by fingerprint
and validity only).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from sealfleet.adapters.http_api import openapi, status_page
from sealfleet.adapters.http_api.metrics import InventoryCollector, make_registry
from sealfleet.adapters.http_api.snapshot import InventoryView, dumps
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import SealedSecretRecord
from sealfleet.domain.staleness import SecretState, iso
from sealfleet.errors import InputError, StoreError

log = structlog.get_logger(__name__)

MAX_PAGE = 1000
_SEALED_SECRET_PARAMS = frozenset({"cluster", "namespace", "state", "limit", "cursor"})
_READ_METHODS = frozenset({"GET", "HEAD"})
_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 503: "unavailable"}
_JSON = "application/json"
_HTML_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


@dataclass(frozen=True)
class ApiDeps:
    """Everything the handlers need, passed explicitly."""

    view: InventoryView
    store: Store
    readiness: Callable[[], Mapping[str, bool]] = lambda: {"migrations": True}
    read_token: bytes | None = field(default=None, repr=False)
    admin_token: bytes | None = field(default=None, repr=False)
    attribution_backlog: Callable[[], int | None] = lambda: None


DEPS = web.AppKey("deps", ApiDeps)
REGISTRY = web.AppKey("registry", CollectorRegistry)
OPENAPI_BODY = web.AppKey("openapi_body", bytes)


class ApiError(Exception):
    """An error response: HTTP status, stable code and a one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | CIMultiDict[str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps({"error": {"code": code, "message": message}}),
                        content_type=_JSON, headers=headers)


def _over_unix_socket(request: web.Request) -> bool:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX


def _presented_token(request: web.Request) -> bytes:
    """The token from ``Bearer <token>``, or from ``Basic`` with the token as password.

    Basic exists so that a browser can open the status page: it prompts for a user name
    (ignored) and a password (the read token) by itself, with no token in the URL.
    """
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    given = given.strip()
    if scheme.lower() == "bearer" and given:
        return given.encode()
    if scheme.lower() == "basic" and given:
        try:
            _, _, password = base64.b64decode(given, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            password = b""
        if password:
            return password
    raise ApiError(401, "unauthorized", "bearer token required on the TCP listener")


def _check_token(request: web.Request, deps: ApiDeps) -> None:
    presented = _presented_token(request)
    admin_ok = deps.admin_token is not None and hmac.compare_digest(presented, deps.admin_token)
    if request.method in _READ_METHODS:
        read_ok = deps.read_token is not None and hmac.compare_digest(presented,
                                                                      deps.read_token)
        if read_ok or admin_ok:
            return
        raise ApiError(401, "unauthorized", "invalid bearer token")
    if not admin_ok:
        raise ApiError(403, "forbidden", "this endpoint requires the admin token")


@web.middleware
async def guard(request: web.Request,
                handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                ) -> web.StreamResponse:
    """Auth, then the handler; every failure becomes the one JSON error shape."""
    try:
        if not _over_unix_socket(request):
            _check_token(request, request.app[DEPS])
        return await handler(request)
    except ApiError as exc:
        headers: CIMultiDict[str] | None = None
        if exc.status == 401:
            # Two challenges: API clients use Bearer; browsers prompt for Basic.
            headers = CIMultiDict([("WWW-Authenticate", "Bearer"),
                                   ("WWW-Authenticate", 'Basic realm="sealfleet"')])
        return error_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, _STATUS_CODES.get(exc.status, "error"),
                              exc.reason or "error")
    except InputError as exc:
        return error_response(400, "bad_request", str(exc))
    except StoreError as exc:
        log.warning("api_store_unavailable", error=str(exc), path=request.path)
        return error_response(503, "unavailable", "inventory store unavailable")
    except Exception:
        log.exception("api_handler_failed", path=request.path)
        return error_response(500, "internal_error", "internal error")


def _json_body(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=_JSON)


async def healthz(_request: web.Request) -> web.Response:
    return _json_body(b'{"status":"ok"}')


async def readyz(request: web.Request) -> web.Response:
    checks = dict(request.app[DEPS].readiness())
    if all(checks.values()):
        return _json_body(dumps({"ready": True, "checks": checks}))
    waiting = ", ".join(sorted(name for name, ok in checks.items() if not ok))
    return error_response(503, "not_ready", f"waiting for: {waiting}")


async def metrics(request: web.Request) -> web.Response:
    await request.app[DEPS].view.current()
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def staleness(request: web.Request) -> web.Response:
    return _json_body((await request.app[DEPS].view.current()).staleness_body)


async def clusters(request: web.Request) -> web.Response:
    return _json_body((await request.app[DEPS].view.current()).clusters_body)


async def cluster(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = (await request.app[DEPS].view.current()).cluster_bodies.get(name)
    if body is None:
        raise ApiError(404, "not_found", f"no cluster named {name!r}")
    return _json_body(body)


async def keys(request: web.Request) -> web.Response:
    return _json_body((await request.app[DEPS].view.current()).keys_body)


def sealed_secret_entry(record: SealedSecretRecord) -> dict[str, Any]:
    return {
        "cluster": record.cluster, "namespace": record.namespace, "name": record.name,
        "uid": record.uid, "resource_version": record.resource_version,
        "generation": record.generation, "scope": record.scope.cli_name,
        "state": str(record.state), "synced": record.synced,
        "synced_message": record.synced_message, "observed_at": iso(record.observed_at),
        "malformed_reason": record.malformed_reason,
        "ciphertext_fingerprint": record.ciphertext_fingerprint,
        "items": [{"item": item.item, "fingerprint": item.fingerprint}
                  for item in record.items],
    }


def _page_params(query: Mapping[str, str]) -> dict[str, Any]:
    unknown = sorted(set(query) - _SEALED_SECRET_PARAMS)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown query parameter {unknown[0]!r}; "
                       f"allowed: {', '.join(sorted(_SEALED_SECRET_PARAMS))}")
    params: dict[str, Any] = {}
    for name in ("cluster", "namespace", "cursor"):
        if name in query:
            if not query[name]:
                raise ApiError(400, "bad_request", f"{name} must not be empty")
            params[name] = query[name]
    if "state" in query:
        try:
            params["state"] = SecretState(query["state"])
        except ValueError:
            raise ApiError(400, "bad_request", f"state must be one of "
                           f"{', '.join(s.value for s in SecretState)}") from None
    limit_text = query.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE:
        raise ApiError(400, "bad_request", f"limit must be an integer from 1 to {MAX_PAGE}")
    params["limit"] = int(limit_text)
    return params


async def sealed_secrets(request: web.Request) -> web.Response:
    params = _page_params(request.query)
    records, next_cursor = await request.app[DEPS].store.inventory.list_sealed_secrets(**params)
    return _json_body(dumps({"items": [sealed_secret_entry(r) for r in records],
                             "next_cursor": next_cursor}))


async def openapi_json(request: web.Request) -> web.Response:
    return _json_body(request.app[OPENAPI_BODY])


async def index(request: web.Request) -> web.Response:
    snap = await request.app[DEPS].view.current()
    page = snap.status_page or status_page.render(snap.report)
    return web.Response(body=page, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": _HTML_CSP,
                                 "X-Content-Type-Options": "nosniff"})


def build_app(deps: ApiDeps) -> web.Application:
    """The read API.  The caller owns running it (see :mod:`.server`)."""
    app = web.Application(middlewares=[guard], handler_args={"max_field_size": 16384})
    app[DEPS] = deps
    app[REGISTRY] = make_registry(InventoryCollector(lambda: deps.view.snapshot,
                                                     deps.attribution_backlog))
    app[OPENAPI_BODY] = json.dumps(openapi.document(), indent=1).encode()
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/staleness", staleness)
    app.router.add_get("/api/v1/clusters", clusters)
    app.router.add_get("/api/v1/clusters/{name}", cluster)
    app.router.add_get("/api/v1/keys", keys)
    app.router.add_get("/api/v1/sealed-secrets", sealed_secrets)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    return app
