"""The controller's HTTP endpoints (``:8080`` and ``:8081/metrics``), reached through the
emulated apiserver's service proxy exactly as kubeseal reaches the real ones (§4).

Independent of the HTTP server: a request is (method, path, headers, body) and a reply is
(status, headers, body), so the apiserver's proxy can call it in-process.  Replies copy
the real controller's quirks: ``/v1/rotate`` answers compact JSON without apiVersion and
kind and, because the Go handler sets its content type after writing the header, with
Go's sniffed ``text/plain; charset=utf-8``; ``/v1/verify`` is rate limited (GCRA, per
path and X-Forwarded-For) and answers 409 for what no key decrypts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from sealfleet.domain import documents
from sealfleet.domain import sealed_secrets as sealing
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import DecryptionError, InputError
from sealfleet.sandbox.controller.flags import ControllerFlags
from sealfleet.sandbox.controller.keyring import KeyRegistry
from sealfleet.sandbox.controller.metrics import ControllerMetrics
from sealfleet.sandbox.controller.unsealing import unseal_attributed

TEXT = "text/plain; charset=utf-8"
PEM = "application/x-pem-file"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MISMATCH_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @staticmethod
    def text(status: int, text: str, **headers: str) -> Reply:
        return Reply(status, text.encode(), {"Content-Type": TEXT, **headers})


class GcraLimiter:
    """throttled's GCRA: rate r/s, MaxBurst b lets b+1 requests through at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._tolerance = self._interval * (burst + 1)
        self._tat: dict[str, float] = {}

    def allow(self, key: str, now: float) -> tuple[bool, float]:
        """(allowed, seconds to wait before retrying)."""
        if self._interval == 0.0:
            return True, 0.0
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + self._interval
        if new_tat - now > self._tolerance:
            return False, new_tat - now - self._tolerance
        self._tat[key] = new_tat
        if len(self._tat) > 65536:
            self._tat = {k: v for k, v in self._tat.items() if v > now}
        return True, 0.0


def _decode_sealed(body: bytes) -> dict[str, Any]:
    """Decode one SealedSecret as the controller's codec does, or raise InputError."""
    try:
        docs = documents.parse_documents(body.decode("utf-8"), source="request body")
    except (UnicodeDecodeError, InputError, ValueError) as exc:
        raise InputError(f"cannot decode request body: {exc}") from None
    if len(docs) != 1:
        raise InputError("expected exactly one document")
    doc = docs[0]
    if (
        not isinstance(doc, dict)
        or doc.get("kind") != sealing.KIND
        or doc.get("apiVersion") != sealing.API_VERSION
    ):
        raise InputError('no kind "SealedSecret" is registered for the request body')
    return doc


def rotate_document(sealed: Mapping[str, Any], keys: list[SealingKey], newest: SealingKey) -> bytes:
    """``/v1/rotate`` (v0.36): unseal with any key, reseal every item with the newest."""
    sealed = dict(sealed)
    top = dict(sealed.get("metadata") or {})
    spec = dict(sealed.get("spec") or {})
    template = dict(spec.get("template") or {})
    template_meta = dict(template.get("metadata") or {})
    # Since v0.36 (#1885/#1886) top-level labels and annotations that the template lacks
    # are copied into it before resealing, so that the scope survives.
    for field in ("labels", "annotations"):
        top_values = {
            k: v for k, v in (top.get(field) or {}).items() if k not in _MISMATCH_ANNOTATIONS
        }
        merged = {**(template_meta.get(field) or {}), **top_values}
        if merged:
            template_meta[field] = merged
    template["metadata"] = template_meta
    spec["template"] = template
    sealed["spec"] = spec
    secret = unseal_attributed(sealed, keys).secret
    scope = sealing.identity_of(sealed).scope
    resealed = sealing.seal_secret(secret, newest.public_key, scope=scope)
    resealed.pop("kind", None)
    resealed.pop("apiVersion", None)
    return json.dumps(resealed, separators=(",", ":")).encode()


class ControllerHttp:
    """One controller process's handlers; they see that process's key registry."""

    def __init__(
        self,
        *,
        registry: KeyRegistry,
        flags: ControllerFlags,
        metrics: ControllerMetrics,
        executor: Executor,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._executor = executor
        self._limiter = GcraLimiter(flags.rate_limit, flags.rate_limit_burst)
        self._limit_header = str(flags.rate_limit_burst + 1)

    async def handle_main(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply:
        """The ``:8080`` server (healthz, cert.pem, verify, rotate)."""
        path = "/" + path.lstrip("/")
        if path == "/healthz":
            return Reply.text(200, "ok\n")
        routes = {
            "/v1/cert.pem": ("GET", self._cert),
            "/v1/verify": ("POST", self._verify),
            "/v1/rotate": ("POST", self._rotate),
        }
        route = routes.get(path)
        if route is None:
            return Reply.text(404, "404 page not found\n")
        wanted, handler = route
        started = time.perf_counter()
        if method.upper() != wanted:
            reply = Reply.text(405, "Method Not Allowed\n")
        else:
            reply = await handler(path, headers, body)
        self._metrics.observe_http(path, method, reply.status, time.perf_counter() - started)
        return reply

    async def handle_metrics(self, method: str, path: str) -> Reply:
        """The ``:8081`` server: only ``/metrics``."""
        if "/" + path.lstrip("/") != "/metrics":
            return Reply.text(404, "404 page not found\n")
        body = await asyncio.get_running_loop().run_in_executor(None, self._metrics.exposition)
        return Reply(200, body, {"Content-Type": METRICS_CONTENT_TYPE})

    async def _cert(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        newest = self._registry.most_recent
        if newest is None or not newest.key.certificate.pem:
            return Reply.text(500, "cannot get certificate\n")
        return Reply(200, newest.key.certificate.pem, {"Content-Type": PEM})

    async def _verify(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        forwarded = _header(headers, "X-Forwarded-For")
        allowed, wait = self._limiter.allow(f"{path}\0{forwarded}", time.monotonic())
        if not allowed:
            retry_after = max(1, int(wait + 0.999))
            return Reply.text(
                429,
                "limit exceeded\n",
                **{
                    "Retry-After": str(retry_after),
                    "X-Ratelimit-Limit": self._limit_header,
                    "X-Ratelimit-Remaining": "0",
                },
            )
        try:
            sealed = _decode_sealed(body)
        except InputError as exc:
            return Reply.text(500, f"{exc}\n")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self._executor, unseal_attributed, sealed, self._registry.likeliest_first(None)
            )
        except (DecryptionError, InputError):
            return Reply.text(409, "Conflict\n")
        return Reply.text(200, "OK\n")

    async def _rotate(self, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        newest = self._registry.most_recent
        try:
            sealed = _decode_sealed(body)
            if newest is None:
                raise InputError("no key available")
            loop = asyncio.get_running_loop()
            payload = await loop.run_in_executor(
                self._executor,
                rotate_document,
                sealed,
                self._registry.likeliest_first(None),
                newest.key,
            )
        except (DecryptionError, InputError) as exc:
            return Reply.text(500, f"Error rotating secret: {exc}\n")
        return Reply(200, payload, {"Content-Type": TEXT})


def _header(headers: Mapping[str, str], name: str) -> str:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return ""
