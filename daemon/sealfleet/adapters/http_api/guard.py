"""The API's one middleware: auth, the query check, where the handler runs, one error shape.

Auth is decided per connection: a request that came over the unix socket is trusted
(the socket's mode 0660 and its directory are the access control); a request over TCP
must carry ``Authorization: Bearer <token>`` - the read token (or the admin token) for
GET, the admin token for anything else.  Tokens are compared in constant time.

Every error, including the router's own 404/405 (and, through :mod:`.protocol`, the
HTTP parser's own 400s), is JSON of one shape: ``{"error": {"code": "...", "message":
"..."}}``.  Messages never quote secrets.

Query parameters are those the OpenAPI document declares for the path, each at most
once: anything else is a 400 on every endpoint, checked here once rather than per handler.

The guard runs on the API's own thread (:mod:`.http_thread`), and so do the handlers
the application lists in ``THREAD_SAFE_HANDLERS``; every other handler runs on the main loop:
the guard reads the body first (the stream belongs to the API's loop; aiohttp keeps the
bytes for the handler's own ``read``), runs the handler there and awaits its response.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from multidict import CIMultiDict

from sealfleet.adapters.http_api import gitops, http_thread, jobs_api
from sealfleet.errors import InputError, StoreError

log = structlog.get_logger(__name__)

_READ_METHODS = frozenset({"GET", "HEAD"})
STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 500: "internal_error",
                503: "unavailable", 504: "timeout"}
# POSTs that only read (a check): the read token is enough for them on TCP.
READ_ONLY_POSTS = frozenset({gitops.CHECK_PATH})
_JSON = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Tokens:
    """The TCP listener's bearer tokens (None: that kind of access is not configured)."""

    read: bytes | None = field(default=None, repr=False)
    admin: bytes | None = field(default=None, repr=False)


TOKENS = web.AppKey("tokens", Tokens)
QUERY_NAMES: web.AppKey[Mapping[str, frozenset[str]]] = web.AppKey("query_names")
# The handlers that answer on the API's own thread (see app.ON_API_THREAD).
THREAD_SAFE_HANDLERS: web.AppKey[frozenset[Handler]] = web.AppKey("on_api_thread")


class ApiError(Exception):
    """An error response: HTTP status, stable code and a one-line message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | CIMultiDict[str] | None = None) -> web.Response:
    # ASCII JSON: a message may quote a path or parameter name, and any text at all
    # (a lone surrogate included) must serialise rather than turn an error into a 500.
    body = json.dumps({"error": {"code": code, "message": message}},
                      separators=(",", ":")).encode()
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


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
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gives back the
        # bytes sent (latin-1 or not UTF-8 at all), which then simply do not match.
        return given.encode("utf-8", "surrogateescape")
    if scheme.lower() == "basic" and given:
        try:
            _, _, password = base64.b64decode(given, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            password = b""
        if password:
            return password
    raise ApiError(401, "unauthorized", "bearer token required on the TCP listener")


def _check_query(request: web.Request) -> None:
    """Only the query parameters the document declares for this path, each at most once."""
    route = request.match_info.route
    if request.match_info.http_exception is not None or route.resource is None:
        return  # no such path or method: the router's 404/405 says so
    allowed: frozenset[str] = request.app[QUERY_NAMES].get(route.resource.canonical,
                                                           frozenset())
    query = request.query
    for name in query:
        if name not in allowed:
            hint = (f"allowed: {', '.join(sorted(allowed))}" if allowed
                    else "this endpoint takes none")
            raise ApiError(400, "bad_request",
                           f"unknown query parameter {_shown(name)}; {hint}")
        if len(query.getall(name)) > 1:
            raise ApiError(400, "bad_request",
                           f"query parameter {_shown(name)} given more than once")


def _shown(name: str) -> str:
    """A client-chosen name as quoted in an error: repr (escapes anything odd), cut short."""
    return repr(name) if len(name) <= 40 else repr(name[:40]) + "..."


def _check_token(request: web.Request, tokens: Tokens) -> None:
    presented = _presented_token(request)
    admin_ok = (tokens.admin is not None
                and hmac.compare_digest(presented, tokens.admin))
    if request.method in _READ_METHODS or (request.method == "POST"
                                           and request.path in READ_ONLY_POSTS):
        read_ok = tokens.read is not None and hmac.compare_digest(presented, tokens.read)
        if read_ok or admin_ok:
            return
        raise ApiError(401, "unauthorized", "invalid bearer token")
    if not admin_ok:
        raise ApiError(403, "forbidden", "this endpoint requires the admin token")


async def _read_body(request: web.Request) -> None:
    """The whole body, read on the loop its stream belongs to; aiohttp keeps it, so the
    handler's ``read()`` (``json()``, ``text()``) gets these bytes wherever it runs."""
    try:
        await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.client_max_size
        shown = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        raise ApiError(413, "too_large", f"the request body is larger than {shown}") from None


async def _on_main_loop(request: web.Request, handler: Handler) -> web.StreamResponse:
    """*handler*'s response, the handler run on the main loop (the body read here first).

    Only a finished ``web.Response`` may come back: preparing a response writes to the
    connection, whose transport belongs to the API's loop and is not thread-safe, so a
    handler that streams (``prepare``/``write``) cannot run on the main loop."""
    await _read_body(request)

    async def call() -> web.StreamResponse:
        return await handler(request)

    response = await http_thread.on_loop(request.app.get(http_thread.MAIN_LOOP), call())
    if response.prepared:
        raise RuntimeError("a handler run on the main loop prepared its response itself")
    return response


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Auth, then the handler; every failure becomes the one JSON error shape.

    Auth and the query check run on the API's thread; the handler too when it is one of
    the application's ``THREAD_SAFE_HANDLERS`` (or the router's own 404/405), else on
    the main loop."""
    try:
        if not _over_unix_socket(request) and request.path not in jobs_api.PUBLIC_PATHS:
            _check_token(request, request.app[TOKENS])
        _check_query(request)
        match = request.match_info
        thread_safe = request.app[THREAD_SAFE_HANDLERS]
        if match.http_exception is not None or match.handler in thread_safe:
            return await handler(request)
        return await _on_main_loop(request, handler)
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
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, STATUS_CODES.get(exc.status, "error"),
                              exc.reason or "error", allow)
    except InputError as exc:
        return error_response(400, "bad_request", str(exc))
    except StoreError as exc:
        log.warning("api_store_unavailable", error=str(exc), path=request.path)
        return error_response(503, "unavailable", "inventory store unavailable")
    except Exception:
        log.exception("api_handler_failed", path=request.path)
        return error_response(500, "internal_error", "internal error")
