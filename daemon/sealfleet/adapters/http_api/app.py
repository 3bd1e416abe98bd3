"""The aiohttp application: the read endpoints, the HTML pages and the routes.

No endpoint ever returns key material or plaintext (keys are described by fingerprint
and validity only).  Auth, the query check, the one error shape and where each handler
runs are the guard's (:mod:`.guard`).

Two loops serve a request (:mod:`.server`, :mod:`.http_thread`).  aiohttp and the guard
run on the API's own thread.  The handlers that read nothing but immutable data
(``/healthz``, the OpenAPI document, and the snapshot's pre-serialised bodies:
``/api/v1/staleness``, ``/api/v1/clusters``, ``/api/v1/clusters/{name}``,
``/api/v1/keys``: ``ON_API_THREAD``) answer there too, so a busy main loop does not
delay them.  Every other handler reads the store, the jobs or live state owned by the
main loop, and runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import MultiMapping
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from sealfleet.adapters.http_api import (
    gitops,
    http_thread,
    jobs_api,
    key_transfer_api,
    openapi,
    reseal_api,
    status_page,
)
from sealfleet.adapters.http_api.guard import (
    QUERY_NAMES,
    THREAD_SAFE_HANDLERS,
    TOKENS,
    ApiError,
    Handler,
    Tokens,
    error_response,
    guard,
)
from sealfleet.adapters.http_api.metrics import InventoryCollector, ScrapeInputs, make_registry
from sealfleet.adapters.http_api.pages import cluster as cluster_page
from sealfleet.adapters.http_api.pages import jobs as jobs_page
from sealfleet.adapters.http_api.pages import keys as keys_page
from sealfleet.adapters.http_api.snapshot import InventoryView, Snapshot, dumps
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import GitLink, SealedSecretRecord
from sealfleet.domain import check
from sealfleet.domain.attribution import RsaWork
from sealfleet.domain.staleness import SecretState, iso

MAX_PAGE = openapi.MAX_PAGE
# ASCII digits only (not \d): str.isdigit() is true for superscripts (int() then raises)
# and int() takes fullwidth or Arabic-Indic digits; four digits cover MAX_PAGE.
_LIMIT = re.compile(r"[0-9]{1,4}")
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
    rsa_work: Callable[[], RsaWork | None] = lambda: None   # attribution's, since start
    jobs: jobs_api.JobSubmitter | None = None
    certificates: jobs_api.CertificateSource | None = None
    # Unix time of the newest backup (0.0: none yet), e.g. metrics.newest_file_timestamp;
    # None: backups are not configured, and the metric is left out.
    last_backup: Callable[[], float | None] | None = None
    check: gitops.DocumentChecker | None = None   # POST /api/v1/check (the daemon's keys)
    reseal: reseal_api.ResealPlanner | None = None   # POST /api/v1/reseal dry runs
    key_transfer: key_transfer_api.KeyTransferPort | None = None   # keys import/export


DEPS = web.AppKey("deps", ApiDeps)
REGISTRY = web.AppKey("registry", CollectorRegistry)
SCRAPE_INPUTS = web.AppKey("scrape_inputs", ScrapeInputs)
OPENAPI_BODY = web.AppKey("openapi_body", bytes)


def _json_body(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=_JSON)


# A snapshot's body (1.3 MB for 1,000 clusters) goes out in one send.  With the socket's
# default buffer (208 KB) it went in some seven pieces, each a loop iteration queued
# behind every other ready callback: during a first pass that made the request's p99.
_BIG_BODY = 128 * 1024
_SEND_BUFFER_MAX = 8 << 20   # the kernel caps it at net.core.wmem_max anyway


def _snapshot_body(request: web.Request, body: bytes) -> web.Response:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and len(body) > _BIG_BODY:
        with contextlib.suppress(OSError):   # a smaller buffer only costs iterations
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                            min(len(body) + _BIG_BODY, _SEND_BUFFER_MAX))
    return _json_body(body)


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
    await request.app[SCRAPE_INPUTS].refresh()
    # On a thread: for 1,000 clusters a scrape is some 25,000 samples, tens of CPU-ms of
    # text that on the loop stalled every other request (and cluster) for as long.
    body = await asyncio.to_thread(generate_latest, request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _snapshot(request: web.Request) -> Snapshot:
    """The snapshot to answer from, on the API's thread.  The one the refresher keeps
    fresh is read as it is (immutable, replaced atomically); without a refresher (tests,
    one-shot tools) ``current()`` may rebuild, on the main loop (it locks with the main
    loop's asyncio objects)."""
    view = request.app[DEPS].view
    snap = view.served()
    if snap is not None:
        return snap
    return await http_thread.on_loop(request.app.get(http_thread.MAIN_LOOP), view.current())


async def staleness(request: web.Request) -> web.Response:
    return _snapshot_body(request, (await _snapshot(request)).staleness_body)


async def clusters(request: web.Request) -> web.Response:
    return _snapshot_body(request, (await _snapshot(request)).clusters_body)


async def cluster(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = (await _snapshot(request)).cluster_bodies.get(name)
    if body is None:
        raise ApiError(404, "not_found", f"no cluster named {name!r}")
    return _json_body(body)


async def keys(request: web.Request) -> web.Response:
    return _snapshot_body(request, (await _snapshot(request)).keys_body)


def sealed_secret_entry(record: SealedSecretRecord,
                        link: GitLink | None = None) -> dict[str, Any]:
    return {
        "source": "cluster", "git": gitops.link_entry(link),
        "managed_by": gitops.managed_by_entry(record),
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


def _page_params(query: MultiMapping[str]) -> dict[str, Any]:
    """The store's arguments from a query the guard has checked (known names, once each)."""
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
    if not _LIMIT.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_PAGE:
        raise ApiError(400, "bad_request", f"limit must be an integer from 1 to {MAX_PAGE}")
    params["limit"] = int(limit_text)
    return params


async def sealed_secrets(request: web.Request) -> web.Response:
    query = request.query
    source = query.get("source", "cluster")
    if source not in gitops.SOURCES:
        raise ApiError(400, "bad_request", f"source must be one of {', '.join(gitops.SOURCES)}")
    params = _page_params(query)
    store = request.app[DEPS].store
    if source == "git":
        documents, next_cursor = await store.git.list_sealed_secrets(**params)
        pending = await store.git_pending.branches_for([gitops.pending_key(d)
                                                        for d in documents])
        return _json_body(dumps({"items": [gitops.git_entry(d, pending.get(gitops.pending_key(d)))
                                           for d in documents],
                                 "next_cursor": next_cursor}))
    records, next_cursor = await store.inventory.list_sealed_secrets(**params)
    links = await store.git.links_for([gitops.link_key(r) for r in records if r.items])
    return _json_body(dumps({"items": [sealed_secret_entry(r, links.get(gitops.link_key(r)))
                                       for r in records],
                             "next_cursor": next_cursor}))


async def check_documents(request: web.Request) -> web.Response:
    checker = request.app[DEPS].check
    if checker is None:
        raise ApiError(503, "unavailable", "checks need the daemon's keys: none are here")
    try:
        asked = await gitops.check_request(await request.read())
    except gitops.BadRequest as exc:
        raise ApiError(400, "bad_request", str(exc)) from None
    try:
        answer = await checker.check(asked)
    except check.UnknownClusterError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return _json_body(dumps(answer))


async def openapi_json(request: web.Request) -> web.Response:
    return _json_body(request.app[OPENAPI_BODY])


# The handlers that answer on the API's own thread: each reads nothing but immutable
# data (constants, the OpenAPI document, a snapshot's bytes through _snapshot).  A
# handler added here must touch no asyncio object of the main loop and nothing the main
# loop mutates; anything else (the store, jobs, readiness, metrics) stays off this list.
ON_API_THREAD: frozenset[Handler] = frozenset({healthz, openapi_json, staleness, clusters,
                                               cluster, keys})


def _html(page: bytes) -> web.Response:
    return web.Response(body=page, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": _HTML_CSP,
                                 "X-Content-Type-Options": "nosniff"})


async def index(request: web.Request) -> web.Response:
    return _html(await request.app[DEPS].view.status_page(status_page.render))


async def cluster_html(request: web.Request) -> web.Response:
    """One cluster from the snapshot, plus one keyset page of its SealedSecrets."""
    deps = request.app[DEPS]
    query = cluster_page.parse_query(request.query)
    name = request.match_info["name"]
    snap = await deps.view.current()
    body = snap.cluster_bodies.get(name)
    if body is None:
        raise ApiError(404, "not_found", f"no cluster named {name!r}")
    records, next_cursor = await deps.store.inventory.list_sealed_secrets(
        cluster=name, state=query.state, cursor=query.cursor, limit=query.limit)
    return _html(cluster_page.render(json.loads(body), snap.report, snap.keys, records,
                                     next_cursor, query))


async def keys_html(request: web.Request) -> web.Response:
    snap = await request.app[DEPS].view.current()
    return _html(keys_page.render(snap.report, snap.keys))


async def jobs_html(request: web.Request) -> web.Response:
    jobs = request.app[DEPS].store.jobs
    in_progress = [job for state in jobs_page.IN_PROGRESS
                   for job in await jobs.list_jobs(state=state, limit=jobs_page.RECENT)]
    recent = await jobs.list_jobs(limit=jobs_page.RECENT)
    return _html(jobs_page.render(in_progress, recent, dt.datetime.now(dt.UTC)))


def build_app(deps: ApiDeps) -> web.Application:
    """The read API.  The caller owns running it (see :mod:`.server`)."""
    app = web.Application(middlewares=[guard], handler_args={"max_field_size": 16384})
    app[DEPS] = deps
    app[TOKENS] = Tokens(read=deps.read_token, admin=deps.admin_token)
    app[THREAD_SAFE_HANDLERS] = ON_API_THREAD
    inputs = app[SCRAPE_INPUTS] = ScrapeInputs(job_tallies=deps.store.jobs.tallies,
                                               last_backup=deps.last_backup)
    app[REGISTRY] = make_registry(InventoryCollector(lambda: deps.view.snapshot,
                                                     deps.attribution_backlog, inputs,
                                                     rsa_work=deps.rsa_work,
                                                     store_writes=lambda: deps.store.write_groups))
    document = openapi.document()
    app[OPENAPI_BODY] = json.dumps(document, indent=1).encode()
    # The HTML pages are not in the document (it describes the JSON API), so their
    # query parameters are declared here for the same check.
    app[QUERY_NAMES] = {**openapi.query_names(document),
                        "/clusters/{name}": cluster_page.QUERY_NAMES}
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/staleness", staleness)
    app.router.add_get("/api/v1/clusters", clusters)
    app.router.add_get("/api/v1/clusters/{name}", cluster)
    app.router.add_get("/api/v1/keys", keys)
    app.router.add_get("/api/v1/sealed-secrets", sealed_secrets)
    app.router.add_post(gitops.CHECK_PATH, check_documents)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    jobs_api.register(app, store=deps.store, submitter=deps.jobs,
                      certificates=deps.certificates or jobs_api.StoreCertificates(deps.store))
    reseal_api.register(app, planner=deps.reseal)
    key_transfer_api.register(app, deps.key_transfer)
    app.router.add_get("/clusters/{name}", cluster_html)
    app.router.add_get("/keys", keys_html)
    app.router.add_get("/jobs", jobs_html)
    return app
