"""The service proxy: ``/api/v1/namespaces/{ns}/services/{[scheme:]name[:port]}/proxy/{path}``.

kubeseal reaches the controller this way, naming the service ``http:NAME:`` when the port
is unnamed.  Instead of a network hop, the request goes to an in-process handler that the
emulated controller registers per (namespace, service); with none registered (or with the
controller's handler answering 503 itself, when its pod is down) the client sees the real
apiserver's 503 ServiceUnavailable Status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sealfleet.sandbox.apiserver.context import ClusterContext
from sealfleet.sandbox.objects import ApiError, bad_request

if TYPE_CHECKING:
    from sealfleet.sandbox.apiserver.rest import Target


def split_scheme_name_port(spec: str) -> tuple[str, str, str]:
    """``[scheme:]name[:port]`` as the apiserver splits it (empty parts allowed)."""
    parts = spec.split(":")
    if len(parts) == 1:
        scheme, name, port = "", parts[0], ""
    elif len(parts) == 2:
        scheme, name, port = "", parts[0], parts[1]
    elif len(parts) == 3:
        scheme, name, port = parts
    else:
        raise bad_request(f'invalid service request "{spec}"')
    if scheme not in ("", "http", "https"):
        raise bad_request(f'invalid service request "{spec}"')
    return scheme, name, port


def unavailable(service: str) -> ApiError:
    return ApiError(
        503,
        "ServiceUnavailable",
        f'no endpoints available for service "{service}"',
    )


def _port_matches(service: dict[str, Any], port: str) -> bool:
    ports = (service.get("spec") or {}).get("ports") or []
    if not ports:
        return False
    if port == "":
        return True
    return any(port in (str(p.get("port")), p.get("name")) for p in ports)


async def forward(ctx: ClusterContext, request: web.Request, target: Target) -> web.StreamResponse:
    namespace = str(target.namespace)
    _, name, port = split_scheme_name_port(str(target.name))
    service = ctx.store.get("services", namespace, name)  # 404 NotFound like the real one
    if not _port_matches(service, port):
        raise unavailable(name)
    handler = ctx.service_handlers.get((namespace, name))
    if handler is None:
        raise unavailable(name)
    url = URL.build(path="/" + target.subpath, query_string=request.query_string)
    # The apiserver authenticates the caller; the backend never sees the caller's token.
    headers = CIMultiDict(request.headers)
    headers.popall("Authorization", None)
    proxied = request.clone(rel_url=url, headers=headers)
    return await handler(proxied)
