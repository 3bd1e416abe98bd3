"""One cluster's API server, spoken to as raw JSON.

Kubeconfig handling (parsed once per file, authentication through kubernetes-asyncio's
loader, TLS contexts shared by content) is :mod:`sealfleet.adapters.kube.kubeconfig`;
each connection here is one aiohttp session on that shared TLS context.  We speak JSON
ourselves rather than through kubernetes-asyncio's ``ApiClient``: its generated models
cost several times the JSON parse on a list of thousands of objects (the inventory
needs plain dicts anyway), and each ``ApiClient`` builds its own SSL context.

What a connection holds is kept to what it needs, because a fleet daemon holds one per
cluster for as long as it runs: small TLS receive buffers (:mod:`tls`), no cookie jar,
idle pooled connections closed after a few seconds, and the environment's proxy read
once per client.

Every library error is translated here, exactly once, into our hierarchy:

- :class:`Gone` (HTTP 410 or a watch ERROR event with code 410): the resourceVersion
  or continue token is too old; the caller relists.
- :class:`NotFound` (404): a :class:`PermanentError` callers may expect (legacy key
  Secret absent, controller Service missing).
- :class:`Conflict` (409; :class:`AlreadyExists` when a create finds the name taken):
  a precondition (resourceVersion, uid) failed; the caller re-reads and re-plans.
- :class:`~sealfleet.errors.TransientError`: timeouts, refused or dropped connections,
  5xx, 429 (with ``retry_after`` from ``Retry-After`` on 429 and 503).
- :class:`~sealfleet.errors.PermanentError`: other 4xx (401, 403...), TLS verification
  failures, kubeconfig problems.

Messages carry the method, path and the server's Status message, never a body; when a
write fails, any Secret value we sent is scrubbed from the server's message too (an
apiserver or an admission webhook may quote the object it refused).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from urllib.request import proxy_bypass

import aiohttp
import yarl
from aiohttp.helpers import ProxyInfo, proxies_from_env

from sealfleet.adapters.kube import kubeconfig as kubeconfig_files
from sealfleet.adapters.kube import tls, writing
from sealfleet.domain.redaction import mask_text
from sealfleet.errors import PermanentError, TransientError

DEFAULT_PAGE_SIZE = 500
_MAX_MESSAGE = 200
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_USER_AGENT = "sealfleet"
# Parallel requests per cluster (kubernetes-asyncio's default pool size, kept).
_CONNECTIONS_PER_CLUSTER = 100
# Seconds an idle pooled connection is kept: long enough for a scan's or a probe's
# requests one after another, short enough that between the minute's probes a cluster
# holds only its watches' connections (one TLS connection is some 60 KB of memory).
_IDLE_KEEPALIVE = 5.0
# Watch events carrying large objects exceed aiohttp's default read buffer; etcd's
# default request limit is 1.5 MiB (kubernetes-asyncio uses the same figure).
_READ_BUFFER = 2**21


class Gone(TransientError):
    """410: the resourceVersion (or list continue token) has expired; relist."""


class NotFound(PermanentError):
    """404: the object does not exist."""


class Conflict(PermanentError):
    """409: the object changed since it was read (resourceVersion or uid precondition
    failed).  Retrying the same request cannot succeed: re-read, re-plan, write again."""


class AlreadyExists(Conflict):
    """409 AlreadyExists: a create found the name taken."""


class PatchType(enum.StrEnum):
    """The three patch formats of PATCH, by Content-Type."""

    MERGE = "application/merge-patch+json"
    STRATEGIC = "application/strategic-merge-patch+json"
    JSON = "application/json-patch+json"


@dataclass(frozen=True)
class ListPage:
    """One page of a paginated list: its items and the list's resourceVersion."""

    items: list[dict[str, Any]]
    resource_version: str
    last: bool


@dataclass(frozen=True)
class WatchEvent:
    """ADDED, MODIFIED, DELETED or BOOKMARK with the object as a dict."""

    type: str
    object: dict[str, Any]

    @property
    def resource_version(self) -> str | None:
        metadata = self.object.get("metadata") or {}
        value = metadata.get("resourceVersion")
        return str(value) if value else None


@dataclass(frozen=True)
class Response:
    """A completed non-streaming call: status, headers we use, the raw body."""

    status: int
    body: bytes
    retry_after: float | None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: rare from kube; fall back to our own backoff


def status_reason(text: str) -> str | None:
    """The machine ``reason`` of a Kubernetes Status body (``AlreadyExists``, ...)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else None


def status_message(text: str) -> str:
    """The ``message`` of a Kubernetes Status body, else a bounded first line."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message: str = body["message"]
    else:
        message = text.strip().splitlines()[0] if text.strip() else ""
    # It ends up in last_error (stored, served by the API), not only in logs.
    return mask_text(message)[:_MAX_MESSAGE]


def error_for_status(status: int, what: str, message: str,
                     retry_after: float | None = None, *,
                     reason: str | None = None) -> TransientError | PermanentError:
    """Our error for an unsuccessful HTTP status (also used for watch ERROR events)."""
    text = f"{what}: HTTP {status}" + (f": {message}" if message else "")
    if status == 410:
        return Gone(text)
    if status == 404:
        return NotFound(text)
    if status == 409:
        return AlreadyExists(text) if reason == "AlreadyExists" else Conflict(text)
    if status in _TRANSIENT_STATUSES:
        return TransientError(text, retry_after=retry_after if status in (429, 503) else None)
    return PermanentError(text)


def _translate(exc: BaseException, what: str) -> TransientError | PermanentError:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLCertVerificationError):
        return PermanentError(f"{what}: TLS verification failed")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransientError(f"{what}: {type(exc).__name__}: {mask_text(str(exc))[:_MAX_MESSAGE]}")
    if isinstance(exc, TimeoutError):
        return TransientError(f"{what}: timed out")
    if isinstance(exc, ValueError):  # json.JSONDecodeError and UnicodeDecodeError
        return TransientError(f"{what}: malformed response")
    return PermanentError(f"{what}: {type(exc).__name__}")


@functools.cache
def _env_proxies() -> dict[str, ProxyInfo]:
    """HTTPS_PROXY / HTTP_PROXY (with ~/.netrc credentials), read once per process: the
    environment of a running daemon does not change, and reading them (and the netrc
    file) took 0.16 ms for every cluster connection."""
    return proxies_from_env()


def _proxy_for(access: kubeconfig_files.ClusterAccess,
               ) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The kubeconfig's ``proxy-url``, else HTTPS_PROXY / HTTP_PROXY unless NO_PROXY
    names the server (what trust_env did per request, once)."""
    if access.proxy:
        return access.proxy, None
    url = yarl.URL(access.server)
    info = _env_proxies().get(url.scheme)
    if info is None or (url.host is not None and proxy_bypass(url.host)):
        return None, None
    return str(info.proxy), info.proxy_auth


class KubeClient:
    """Raw JSON calls to one cluster, with errors already translated."""

    def __init__(self, session: aiohttp.ClientSession, access: kubeconfig_files.ClusterAccess, *,
                 request_timeout: float = 30.0) -> None:
        self._session = session
        self._access = access
        self.request_timeout = request_timeout
        self._proxy, self._proxy_auth = _proxy_for(access)

    @classmethod
    @asynccontextmanager
    async def connect(cls, kubeconfig: str, context: str | None, *,
                      request_timeout: float = 30.0,
                      cache: kubeconfig_files.KubeconfigCache | None = None,
                      ) -> AsyncIterator[KubeClient]:
        """A client for *context* (None: the current-context) of the kubeconfig file.

        The file comes from *cache* (default: the process-wide one), parsed once per
        version of the file.  Raises ``kubeconfig.KubeconfigError`` (a
        :class:`PermanentError`) naming the file and the context.
        """
        cache = cache if cache is not None else kubeconfig_files.shared_cache()
        access = await cache.access(kubeconfig, context)
        tls.limit_receive_buffers()
        # One connector per connection (its pool is this cluster's sockets, closed with
        # it); its TLS context is the shared one.
        connector = aiohttp.TCPConnector(
            limit=_CONNECTIONS_PER_CLUSTER, keepalive_timeout=_IDLE_KEEPALIVE,
            ssl=access.ssl_context if access.ssl_context is not None else True)
        # No trust_env: it makes aiohttp read ~/.netrc and the proxy variables in the
        # default thread pool on every request (two thread hops each: with a fleet
        # restarting at once, that small pool became the queue every request waited
        # in).  HTTPS_PROXY and NO_PROXY are read once per client instead (_proxy_for),
        # and netrc is not a kubeconfig credential (kubectl ignores it too).  Cookies
        # mean nothing to an apiserver.
        session = aiohttp.ClientSession(connector=connector, trust_env=False,
                                        cookie_jar=aiohttp.DummyCookieJar(),
                                        read_bufsize=_READ_BUFFER)
        try:
            yield cls(session, access, request_timeout=request_timeout)
        finally:
            await session.close()

    @property
    def server(self) -> str:
        return self._access.server

    async def _call(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                    body: Any = None, accept: str = "application/json",
                    content_type: str = "application/json",
                    client_timeout: aiohttp.ClientTimeout | None = None,
                    ) -> aiohttp.ClientResponse:
        client_timeout = client_timeout or aiohttp.ClientTimeout(total=self.request_timeout)
        headers = {"Accept": accept, "Content-Type": content_type,
                   "User-Agent": _USER_AGENT}
        authorization = await self._access.credentials.authorization()
        if authorization:
            headers["Authorization"] = authorization
        url = self._access.server + path
        if query:
            url += "?" + urlencode(list(query.items()))
        data = json.dumps(body) if body is not None else None
        try:
            response = await self._session.request(
                method, url, headers=headers, data=data, timeout=client_timeout,
                proxy=self._proxy, proxy_auth=self._proxy_auth,
                server_hostname=self._access.tls_server_name)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _translate(exc, f"{method} {path}") from exc
        return response

    async def request(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                      body: Any = None, accept: str = "application/json",
                      content_type: str = "application/json") -> Response:
        """A whole call whatever its status (callers that care about e.g. 409 use this)."""
        what = f"{method} {path}"
        response = await self._call(method, path, query=query, body=body, accept=accept,
                                    content_type=content_type)
        try:
            body = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise _translate(exc, what) from exc
        finally:
            response.release()
        return Response(response.status, body, _retry_after(response.headers))

    async def get_json(self, path: str, *, query: Mapping[str, str] | None = None) -> Any:
        """GET a JSON document; any non-2xx status becomes our error."""
        response = await self.request("GET", path, query=query)
        if not 200 <= response.status < 300:
            raise error_for_status(response.status, f"GET {path}",
                                   status_message(response.text), response.retry_after)
        try:
            return json.loads(response.body)  # straight from bytes: no text copy of a page
        except ValueError as exc:
            raise _translate(exc, f"GET {path}") from exc

    async def create_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST *body* to a collection; the created object.  A taken name is
        :class:`AlreadyExists`."""
        return await self._write("POST", path, body)

    async def replace_json(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT *body* over the object at *path*; the updated object.

        *body* must carry the ``metadata.resourceVersion`` it was read at: a PUT without
        one overwrites whatever is there now, which we never mean.  A changed object is
        :class:`Conflict`.
        """
        metadata = body.get("metadata")
        if not isinstance(metadata, Mapping) or not metadata.get("resourceVersion"):
            raise ValueError(f"PUT {path}: the body has no metadata.resourceVersion")
        return await self._write("PUT", path, body)

    async def patch_json(self, path: str, patch: Any, *,
                         patch_type: PatchType = PatchType.MERGE,
                         resource_version: str | None = None) -> dict[str, Any]:
        """PATCH the object at *path*; the patched object.

        With *resource_version* the patch applies only to that version of the object
        (else :class:`Conflict`): merge and strategic patches carry it as
        ``metadata.resourceVersion``, which the apiserver checks; a JSON patch gets a
        ``replace`` of ``/metadata/resourceVersion`` first, which has the same effect.
        """
        if resource_version is not None:
            patch = writing.with_resource_version(patch, patch_type.value, resource_version)
        return await self._write("PATCH", path, patch, content_type=patch_type.value)

    async def delete(self, path: str, *, uid: str | None = None,
                     resource_version: str | None = None,
                     grace_period_seconds: int | None = None) -> dict[str, Any]:
        """DELETE the object at *path*, with ``DeleteOptions.preconditions`` when given.

        The answer is a Status, or the object itself while its deletion is under way
        (a Pod with a ``deletionTimestamp``).  A failed precondition is :class:`Conflict`;
        an absent object :class:`NotFound`.
        """
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        preconditions = {key: value for key, value in (("uid", uid),
                                                       ("resourceVersion", resource_version))
                         if value is not None}
        if preconditions:
            options["preconditions"] = preconditions
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        return await self._write("DELETE", path, options)

    async def _write(self, method: str, path: str, body: Any, *,
                     content_type: str = "application/json") -> dict[str, Any]:
        what = f"{method} {path}"
        response = await self.request(method, path, body=body, content_type=content_type)
        if not 200 <= response.status < 300:
            message = writing.scrub(status_message(response.text), body)
            raise error_for_status(response.status, what, message, response.retry_after,
                                   reason=status_reason(response.text))
        try:
            document = json.loads(response.body)
        except ValueError as exc:
            raise _translate(exc, what) from exc
        if not isinstance(document, dict):
            raise TransientError(f"{what}: response is not an object")
        return document

    async def get_text(self, path: str, *, accept: str) -> str:
        response = await self.request("GET", path, accept=accept)
        if not 200 <= response.status < 300:
            raise error_for_status(response.status, f"GET {path}",
                                   status_message(response.text), response.retry_after)
        return response.text

    async def list_pages(self, path: str, *, label_selector: str | None = None,
                         limit: int = DEFAULT_PAGE_SIZE) -> AsyncGenerator[ListPage, None]:
        """A paginated list (``limit`` + ``continue``), one page at a time.

        An expired continue token raises :class:`Gone`; the caller restarts the list,
        because the pages already seen may be from an older snapshot.
        """
        continue_token: str | None = None
        while True:
            query = {"limit": str(limit)}
            if label_selector:
                query["labelSelector"] = label_selector
            if continue_token:
                query["continue"] = continue_token
            document = await self.get_json(path, query=query)
            if not isinstance(document, dict):
                raise TransientError(f"GET {path}: list response is not an object")
            metadata = document.get("metadata") or {}
            continue_token = metadata.get("continue") or None
            page = ListPage(items=[i for i in document.get("items") or [] if isinstance(i, dict)],
                            resource_version=str(metadata.get("resourceVersion") or ""),
                            last=continue_token is None)
            # Hold nothing while suspended: the consumer decides how long a page lives.
            del document, metadata
            yield page
            del page
            if continue_token is None:
                return

    async def watch(self, path: str, *, resource_version: str,
                    label_selector: str | None = None,
                    timeout_seconds: int = 300,
                    on_open: Callable[[], None] | None = None,
                    ) -> AsyncGenerator[WatchEvent, None]:
        """Stream watch events from *resource_version* until the server ends the watch.

        Bookmarks are requested (they carry only a fresh resourceVersion).  A 410,
        as a status or as an ERROR event, raises :class:`Gone`.  *on_open* is called
        once the server answered 200: the watch streams (a connection of its own).  Use
        with ``contextlib.aclosing`` so the connection is released when the caller stops.
        """
        what = f"WATCH {path}"
        query = {"watch": "true", "allowWatchBookmarks": "true",
                 "resourceVersion": resource_version, "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            query["labelSelector"] = label_selector
        # No total timeout: a watch is long.  A read stall longer than the server's own
        # timeout means the connection is dead.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.request_timeout,
                                        sock_read=timeout_seconds + self.request_timeout)
        response = await self._call("GET", path, query=query, client_timeout=timeout)
        try:
            if not 200 <= response.status < 300:
                try:
                    text = (await response.read()).decode("utf-8", errors="replace")
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    raise _translate(exc, what) from exc
                raise error_for_status(response.status, what, status_message(text),
                                       _retry_after(response.headers))
            if on_open is not None:
                on_open()
            async for line in _lines(response, what):
                event = _parse_event(line, what)
                if event is not None:
                    yield event
        finally:
            response.release()


async def _lines(response: aiohttp.ClientResponse, what: str) -> AsyncIterator[bytes]:
    """Newline-delimited chunks of the body, whatever their length."""
    buffer = bytearray()
    try:
        async for chunk in response.content.iter_any():
            buffer.extend(chunk)
            start = 0
            while (end := buffer.find(b"\n", start)) != -1:
                if end > start:
                    yield bytes(buffer[start:end])
                start = end + 1
            del buffer[:start]
    except (aiohttp.ClientError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise _translate(exc, what) from exc
    if buffer.strip():
        yield bytes(buffer)


def _parse_event(line: bytes, what: str) -> WatchEvent | None:
    try:
        event = json.loads(line)
    except ValueError as exc:
        raise _translate(exc, what) from exc
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise TransientError(f"{what}: malformed watch event")
    kind = str(event.get("type") or "")
    obj: dict[str, Any] = event["object"]
    if kind == "ERROR":
        code = obj.get("code")
        status = code if isinstance(code, int) else 500
        raise error_for_status(status, what, str(obj.get("message") or "")[:_MAX_MESSAGE])
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        return None  # forward compatible: ignore event types we do not know
    return WatchEvent(kind, obj)
