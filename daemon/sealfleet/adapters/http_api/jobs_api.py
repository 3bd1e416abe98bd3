"""Mutating endpoints (each answers ``202`` with the job it journaled), the jobs and the
audit log, and the fleet's certificate.

Mutations need the admin token over TCP (the guard in :mod:`.app` enforces it; the unix
socket stays trusted).  The daemon's job runner sits behind :class:`JobSubmitter`, so
this adapter never imports the app layer.  ``GET /api/v1/cert.pem`` needs no token at
all: a certificate is public, and ``kubeseal --cert URL`` cannot send one.
"""

from __future__ import annotations

import datetime as dt
import json
import pwd
import socket
import struct
from collections.abc import Mapping, Sequence
from typing import Protocol

from aiohttp import web

from sealfleet.adapters.store import Store
from sealfleet.adapters.store.job_objects import StepCounts, progress_document
from sealfleet.adapters.store.records import AuditEntry, JobItem, JobRecord, JsonObject, JsonValue
from sealfleet.domain.jobs import JobState
from sealfleet.domain.keys import most_recent_key
from sealfleet.domain.staleness import iso
from sealfleet.errors import InputError, RefusedError

PUBLIC_PATHS = frozenset({"/api/v1/cert.pem"})
_JOB_LIMIT = 200


class JobSubmitter(Protocol):
    """What the API needs of the daemon's job runner."""

    async def submit(self, kind: str, params: JsonObject, *, actor: str) -> JobRecord: ...


class CertificateSource(Protocol):
    """The certificate to seal with: the fleet's master one, or one cluster's."""

    async def certificate_pem(self, cluster: str | None) -> bytes | None: ...


class StoreCertificates:
    """Certificates as the inventory knows them: the newest key of the fleet master set
    (the controller's ordering), or the certificate a cluster was last seen sealing with."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def certificate_pem(self, cluster: str | None) -> bytes | None:
        records = {r.fingerprint: r for r in await self._store.keys.list_keys()}
        if cluster is None:
            master = [records[f] for f in await self._store.keys.fleet_master()
                      if f in records and records[f].certificate_pem]
            newest = most_recent_key(master)
            return newest.certificate_pem.encode() if newest and newest.certificate_pem \
                else None
        for known in await self._store.inventory.list_clusters():
            if known.name == cluster and not known.removed and known.sealing_key:
                record = records.get(known.sealing_key)
                return record.certificate_pem.encode() \
                    if record and record.certificate_pem else None
        return None


def job_document(job: JobRecord, steps: Sequence[JobItem],
                 objects: Mapping[str, StepCounts] | None = None) -> dict[str, JsonValue]:
    """A job as the API and ``sealfleet jobs show -o json`` print it; with *objects* (the
    per-object journal's counts per step) also its ``progress``."""
    document: dict[str, JsonValue] = {
        "id": job.id, "kind": job.kind, "state": job.state, "actor": job.actor,
        "params": dict(job.params), "error": job.error, "result": dict(job.result),
        "created_at": iso(job.created_at), "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at), "updated_at": iso(job.updated_at),
        "counts": dict(job.items),
        "steps": [{"ref": s.ref, "state": s.state, "attempt": s.attempt, "error": s.error,
                   "detail": dict(s.detail), "updated_at": iso(s.updated_at)} for s in steps],
    }
    if objects:
        document["progress"] = progress_document(objects)
    return document


def actor_of(request: web.Request) -> str:
    """Who asks: the local user on the unix socket (its peer credentials), else the token."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _, uid, _ = struct.unpack("3i", raw)
            return f"local:{pwd.getpwuid(uid).pw_name}"
        except (OSError, KeyError):
            return "local"
    return "admin-token"


def _json(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json")


async def _body(request: web.Request) -> dict[str, JsonValue]:
    # No can_read_body test: the guard has read the body by now (so the stream is at
    # its end); read() gives its bytes, b"" when there was none.
    try:
        body = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InputError("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    return body


def _submitter(request: web.Request) -> JobSubmitter:
    submitter = request.app[SUBMITTER]
    if submitter is None:
        raise web.HTTPServiceUnavailable(reason="this server runs no jobs")
    return submitter


async def _submit(request: web.Request, kind: str, params: JsonObject) -> web.Response:
    try:
        job = await _submitter(request).submit(kind, params, actor=actor_of(request))
    except RefusedError as refused:
        return _json({"error": {"code": "refused", "message": str(refused)}}, status=409)
    store: Store = request.app[STORE]
    return _json(job_document(job, await store.jobs.job_items(job.id),
                              await store.jobs.object_counts(job.id)), status=202)


def _fingerprint(request: web.Request) -> str:
    fingerprint = request.match_info["fingerprint"]
    if not fingerprint.startswith("SHA256:") or len(fingerprint) != 50:
        raise InputError("not a key fingerprint (SHA256:<43 base64 characters>)")
    return fingerprint


async def keys_sync(request: web.Request) -> web.Response:
    await _body(request)
    return await _submit(request, "key_sync", {})


async def keys_renew(request: web.Request) -> web.Response:
    await _body(request)
    return await _submit(request, "renewal", {})


async def keys_compromise(request: web.Request) -> web.Response:
    await _body(request)
    return await _submit(request, "compromise", {"fingerprint": _fingerprint(request)})


async def keys_retire(request: web.Request) -> web.Response:
    body = await _body(request)
    purge = body.get("purge", False)
    if not isinstance(purge, bool):
        raise InputError("purge must be true or false")
    return await _submit(request, "retire", {"fingerprint": _fingerprint(request),
                                             "purge": purge})


async def keys_adopt(request: web.Request) -> web.Response:
    body = await _body(request)
    cluster, share = body.get("cluster"), body.get("share", False)
    if not isinstance(cluster, str) or not cluster:
        raise InputError("cluster is required (the name of a configured cluster)")
    if not isinstance(share, bool):
        raise InputError("share must be true or false")
    return await _submit(request, "adopt", {"cluster": cluster, "share": share})


async def jobs(request: web.Request) -> web.Response:
    store: Store = request.app[STORE]
    state = request.query.get("state")
    if state is not None and state not in {s.value for s in JobState}:
        raise InputError(f"state must be one of {', '.join(s.value for s in JobState)}")
    found = await store.jobs.list_jobs(state=state, limit=_JOB_LIMIT)
    return _json({"jobs": [job_document(job, ()) for job in found]})


async def job(request: web.Request) -> web.Response:
    store: Store = request.app[STORE]
    found = await store.jobs.get_job(request.match_info["id"])
    if found is None:
        raise web.HTTPNotFound(reason="no such job")
    return _json(job_document(found, await store.jobs.job_items(found.id),
                              await store.jobs.object_counts(found.id)))


async def audit(request: web.Request) -> web.Response:
    store: Store = request.app[STORE]
    since_text = request.query.get("since")
    since: dt.datetime | None = None
    if since_text is not None:
        try:
            since = dt.datetime.fromisoformat(since_text.replace("Z", "+00:00"))
        except ValueError:
            raise InputError("since must be an ISO 8601 time") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=dt.UTC)
    entries: list[AuditEntry] = []
    after = 0
    while len(entries) < _JOB_LIMIT:
        page = await store.audit.entries(after_id=after, limit=500)
        if not page:
            break
        entries.extend(e for e in page if since is None or e.at >= since)
        after = page[-1].id
    return _json({"entries": [{"id": e.id, "at": iso(e.at), "event": e.event, "actor": e.actor,
                               "details": dict(e.details)} for e in entries[-_JOB_LIMIT:]]})


async def cert_pem(request: web.Request) -> web.Response:
    cluster = request.query.get("cluster")
    source = request.app[CERTIFICATES]
    pem = await source.certificate_pem(cluster) if source is not None else None
    if pem is None:
        raise web.HTTPNotFound(reason="no such cluster or no sealing certificate known yet"
                               if cluster else "no fleet master certificate yet")
    return web.Response(body=pem, content_type="application/x-pem-file")


SUBMITTER: web.AppKey[JobSubmitter | None] = web.AppKey("job_submitter")
CERTIFICATES: web.AppKey[CertificateSource | None] = web.AppKey("certificates")
STORE = web.AppKey("jobs_store", Store)


def register(app: web.Application, *, store: Store, submitter: JobSubmitter | None,
             certificates: CertificateSource | None) -> None:
    app[STORE] = store
    app[SUBMITTER] = submitter
    app[CERTIFICATES] = certificates
    app.router.add_post("/api/v1/keys/sync", keys_sync)
    app.router.add_post("/api/v1/keys/renew", keys_renew)
    app.router.add_post("/api/v1/keys/adopt", keys_adopt)
    app.router.add_post("/api/v1/keys/{fingerprint}/compromise", keys_compromise)
    app.router.add_post("/api/v1/keys/{fingerprint}/retire", keys_retire)
    app.router.add_get("/api/v1/jobs", jobs)
    app.router.add_get("/api/v1/jobs/{id}", job)
    app.router.add_get("/api/v1/audit", audit)
    app.router.add_get("/api/v1/cert.pem", cert_pem)

