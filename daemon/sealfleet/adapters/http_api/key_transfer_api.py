"""``POST /api/v1/keys/import`` and ``POST /api/v1/keys/export``: backups through the
running daemon, on its unix socket only.

Both carry private keys: an import's body is a plaintext key List (the CLI decrypted
the backup with an identity that never leaves the user), an export's answer is every
stored key under the caller's encryption (or, asked for explicitly, in the clear).  So
neither is offered on the TCP listener, whatever the token: 403.  The daemon's side sits
behind :class:`KeyTransferPort`, so this adapter never imports the app layer.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from sealfleet.adapters.http_api import jobs_api
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import JobRecord
from sealfleet.errors import InputError, RefusedError

IMPORT_PATH = "/api/v1/keys/import"
EXPORT_PATH = "/api/v1/keys/export"
MAX_BODY = 1 << 20     # a key List of hundreds of 4096-bit keys


class ExportAsked(Protocol):
    """How an export is to be encrypted: recipients, a passphrase, plaintext, or none
    of them (the daemon's ``[backup]`` encryption)."""

    @property
    def recipients(self) -> str | None: ...
    @property
    def passphrase(self) -> str | None: ...
    @property
    def plaintext(self) -> bool: ...


class KeyTransferPort(Protocol):
    """What the API needs of the daemon for imports and exports."""

    async def submit_import(self, document: bytes, *, origin: str,
                            actor: str) -> JobRecord: ...

    async def export(self, request: ExportAsked, *, actor: str) -> bytes: ...


@dataclass(frozen=True)
class ExportRequest:
    recipients: str | None = None      # a recipients file's text (age1..., ssh-...)
    passphrase: str | None = field(default=None, repr=False)   # never in a repr or log
    plaintext: bool = False


def _socket_only(request: web.Request) -> KeyTransferPort:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        raise web.HTTPForbidden(reason="key imports and exports carry private keys: only "
                                       "on the daemon's unix socket")
    port = request.app[TRANSFER]
    if port is None:
        raise web.HTTPServiceUnavailable(reason="this server runs no jobs")
    return port


async def _read(request: web.Request) -> bytes:
    # The body as the guard read it (it does so on the API's thread, whose loop the
    # stream belongs to; aiohttp keeps the bytes): one over the app's client_max_size
    # (1 MiB too) is already a 413 there, this only holds should the two ever part.
    data = await request.read()
    if len(data) > MAX_BODY:
        raise InputError("the request body is larger than 1 MiB")
    return data


async def keys_import(request: web.Request) -> web.Response:
    port = _socket_only(request)
    document = await _read(request)
    if not document:
        raise InputError("the body must be a key List (YAML or JSON)")
    origin = request.headers.get("X-Sealfleet-Origin", "POST " + IMPORT_PATH)[:200]
    try:
        job = await port.submit_import(document, origin=origin,
                                       actor=jobs_api.actor_of(request))
    except RefusedError as refused:
        return web.json_response({"error": {"code": "refused", "message": str(refused)}},
                                 status=409)
    store: Store = request.app[jobs_api.STORE]
    return web.json_response(jobs_api.job_document(job, await store.jobs.job_items(job.id)),
                             status=202)


async def keys_export(request: web.Request) -> web.Response:
    port = _socket_only(request)
    raw = await _read(request)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InputError("the request body is not JSON") from None
    if not isinstance(body, dict) or set(body) - {"recipients", "passphrase", "plaintext"}:
        raise InputError("the body takes recipients, passphrase or plaintext")
    recipients, passphrase = body.get("recipients"), body.get("passphrase")
    plaintext = body.get("plaintext", False)
    if not isinstance(recipients, str | None) or not isinstance(passphrase, str | None) \
            or not isinstance(plaintext, bool):
        raise InputError("recipients and passphrase are strings, plaintext a boolean")
    if sum((recipients is not None, passphrase is not None, plaintext)) > 1:
        raise InputError("give one of recipients, passphrase and plaintext")
    try:
        data = await port.export(ExportRequest(recipients, passphrase, plaintext),
                                 actor=jobs_api.actor_of(request))
    except RefusedError as refused:
        return web.json_response({"error": {"code": "refused", "message": str(refused)}},
                                 status=409)
    return web.Response(body=data, content_type="application/octet-stream")


TRANSFER: web.AppKey[KeyTransferPort | None] = web.AppKey("key_transfer")


def register(app: web.Application, port: KeyTransferPort | None) -> None:
    app[TRANSFER] = port
    app.router.add_post(IMPORT_PATH, keys_import)
    app.router.add_post(EXPORT_PATH, keys_export)
