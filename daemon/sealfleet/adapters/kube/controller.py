"""The sealed-secrets controller of one cluster, reached the way kubeseal reaches it.

kubeseal reads the controller's Service first, takes ``spec.ports[0].name`` and goes
through the API server's service proxy as ``http:<service>:<portName>`` (a trailing
colon when the port is unnamed); we do exactly the same, so the RBAC a cluster grants
kubeseal (``services/proxy`` on those names) is all the daemon needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sealfleet.adapters.kube.client import KubeClient, error_for_status, status_message
from sealfleet.domain.keys import Certificate, load_certificate
from sealfleet.domain.planning import controller_flags
from sealfleet.errors import InputError, PermanentError, TransientError

SEALED_SECRETS_PATH = "/apis/bitnami.com/v1alpha1/sealedsecrets"


@dataclass(frozen=True)
class Deployment:
    """What we track of the controller's Deployment: does it exist, is it serving."""

    name: str
    replicas: int
    ready_replicas: int
    generation: int
    # Its key flags (None: the controller would refuse them, or the container is absent).
    flags: controller_flags.ControllerFlags | None = None

    @property
    def available(self) -> bool:
        return self.ready_replicas > 0


def secrets_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets"


def sealed_secret_path(namespace: str, name: str) -> str:
    return f"/apis/bitnami.com/v1alpha1/namespaces/{namespace}/sealedsecrets/{name}"


async def read_deployment(client: KubeClient, namespace: str, name: str) -> Deployment:
    """The controller's Deployment (``NotFound`` when it is not installed)."""
    document = await client.get_json(deployment_path(namespace, name))
    spec = document.get("spec") or {}
    status = document.get("status") or {}
    metadata = document.get("metadata") or {}
    try:
        flags: controller_flags.ControllerFlags | None = flags_of_deployment(
            document, f"{namespace}/{name}")
    except PermanentError:
        flags = None
    return Deployment(name=name, replicas=_int(spec.get("replicas"), 1),
                      ready_replicas=_int(status.get("readyReplicas"), 0),
                      generation=_int(metadata.get("generation"), 0), flags=flags)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) else default


async def proxy_name(client: KubeClient, namespace: str, name: str) -> str:
    """``http:<name>:<portName>`` from the Service's first port, as kubeseal builds it."""
    document = await client.get_json(f"/api/v1/namespaces/{namespace}/services/{name}")
    ports = (document.get("spec") or {}).get("ports") or []
    if not ports or not isinstance(ports[0], dict):
        raise PermanentError(f"service {namespace}/{name} has no ports")
    port_name = ports[0].get("name") or ""
    return f"http:{name}:{port_name}"


def _proxy_path(namespace: str, proxy: str, endpoint: str) -> str:
    return f"/api/v1/namespaces/{namespace}/services/{proxy}/proxy/v1/{endpoint}"


async def fetch_certificate(client: KubeClient, namespace: str, proxy: str) -> Certificate:
    """``/v1/cert.pem``: the certificate of the key the controller seals with now."""
    path = _proxy_path(namespace, proxy, "cert.pem")
    text = await client.get_text(path, accept="application/x-pem-file, */*")
    try:
        return load_certificate(text.encode())
    except InputError as exc:
        raise PermanentError(f"GET {path}: not a PEM certificate") from exc


async def verify(client: KubeClient, namespace: str, proxy: str,
                 sealed_secret: dict[str, Any]) -> bool:
    """``/v1/verify``: can the controller decrypt this SealedSecret with its keys?

    200 means yes and 409 means no.  429 (the controller's rate limit, 2/s by default)
    becomes a :class:`TransientError` carrying ``Retry-After`` for the retry helper.
    """
    path = _proxy_path(namespace, proxy, "verify")
    body = {key: sealed_secret[key] for key in ("apiVersion", "kind", "metadata", "spec")
            if key in sealed_secret}
    body.setdefault("apiVersion", "bitnami.com/v1alpha1")
    body.setdefault("kind", "SealedSecret")
    response = await client.request("POST", path, body=body, accept="application/json, */*")
    if response.status == 200:
        return True
    if response.status == 409:
        return False
    message = status_message(response.text)
    if response.status == 429:
        raise TransientError(f"POST {path}: rate limited", retry_after=response.retry_after)
    raise error_for_status(response.status, f"POST {path}", message, response.retry_after)


async def rotate(client: KubeClient, namespace: str, proxy: str,
                 sealed_secret: Mapping[str, Any]) -> dict[str, str]:
    """``/v1/rotate``: the controller reseals every item with its newest key.

    Only the returned ``spec.encryptedData`` is given back: the controller rebuilds the
    object's metadata (name, namespace and the scope annotation only; template labels
    copied from the top level), so the caller splices these values into the object it
    read and never writes the response whole.  Any failure is a 500 from the controller
    (no 409 exists for this endpoint); its message is not quoted (it may echo the body).
    """
    path = _proxy_path(namespace, proxy, "rotate")
    body = {key: sealed_secret[key] for key in ("apiVersion", "kind", "metadata", "spec")
            if key in sealed_secret}
    body.setdefault("apiVersion", "bitnami.com/v1alpha1")
    body.setdefault("kind", "SealedSecret")
    # The answer's Content-Type is Go's sniffed text/plain (the handler sets it too late).
    response = await client.request("POST", path, body=body, accept="application/json, */*")
    if response.status != 200:
        raise error_for_status(response.status, f"POST {path}", "", response.retry_after)
    try:
        document = json.loads(response.body)
    except ValueError:
        raise TransientError(f"POST {path}: malformed response") from None
    spec = document.get("spec") if isinstance(document, dict) else None
    encrypted = spec.get("encryptedData") if isinstance(spec, dict) else None
    if not isinstance(encrypted, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in encrypted.items()):
        raise TransientError(f"POST {path}: the answer has no spec.encryptedData")
    return dict(encrypted)



# ------------------------------------------------------------------ controller flags

# The controller container: the static manifest's name, then the Helm chart's.
_CONTAINER_NAMES = ("sealed-secrets-controller", "controller")
_VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def deployment_path(namespace: str, name: str) -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


async def read_controller_flags(client: KubeClient, namespace: str,
                                name: str) -> controller_flags.ControllerFlags:
    """The key-related flags of the controller's Deployment (``NotFound`` when absent)."""
    document = await client.get_json(deployment_path(namespace, name))
    return flags_of_deployment(document, f"{namespace}/{name}")


def flags_of_deployment(deployment: Mapping[str, Any],
                        where: str) -> controller_flags.ControllerFlags:
    """Parse the controller container's ``command[1:]`` + ``args`` and env as the
    controller would; a value it would refuse is a PermanentError naming the flag."""
    pod_spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = [c for c in pod_spec.get("containers") or [] if isinstance(c, Mapping)]
    if not containers:
        raise PermanentError(f"deployment {where} has no containers")
    container = next((c for wanted in _CONTAINER_NAMES for c in containers
                      if c.get("name") == wanted), containers[0])
    env: dict[str, str] = {}
    unresolved: list[str] = []
    for variable in container.get("env") or []:
        if not isinstance(variable, Mapping) or not isinstance(variable.get("name"), str):
            continue
        if "valueFrom" in variable:
            env.pop(variable["name"], None)
            if variable["name"].startswith(controller_flags.ENV_PREFIX):
                unresolved.append(variable["name"])
        else:
            env[variable["name"]] = str(variable.get("value", ""))
    for source in container.get("envFrom") or []:
        if isinstance(source, Mapping):
            kind = "configMapRef" if "configMapRef" in source else "secretRef"
            ref = source.get(kind) or {}
            unresolved.append(f"envFrom {kind} {ref.get('name', '?')}")
    args = [_expand(str(a), env) for a in [*(container.get("command") or [])[1:],
                                              *(container.get("args") or [])]]
    try:
        return controller_flags.parse_controller_flags(args, env, unresolved=unresolved)
    except controller_flags.FlagsError as exc:
        raise PermanentError(f"deployment {where}: {exc}") from None


def _expand(arg: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of container args (``$$`` escapes; an unknown
    variable is left as written, as the kubelet leaves it)."""
    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VARIABLE.sub(substitute, arg)
