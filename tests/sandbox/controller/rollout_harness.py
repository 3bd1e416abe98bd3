"""Helpers for the rollout tests: one kubernetes-asyncio client held open for tight
observation of Pods, the Deployment and ``cert.pem`` through the service proxy."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from controller_harness import CONTROLLER, NAMESPACE, PROXY, SandboxHarness
from kubernetes_asyncio import client as k8s_client

from sealfleet.domain import keys as keys_domain

# Long enough that a poll loop sees the window many times over; not a measured quantity.
STARTUP = 2.0
DEPLOYMENT = f"deployment/{CONTROLLER}"


def pod_hash(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["labels"]["pod-template-hash"])


def pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_waiting(pod: dict[str, Any]) -> str | None:
    (container,) = (pod.get("status") or {}).get("containerStatuses") or [{}]
    return ((container.get("state") or {}).get("waiting") or {}).get("reason")


def condition(deployment: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in deployment["status"]["conditions"] if c["type"] == kind)


class Cluster:
    """One kubernetes-asyncio client, as the daemon holds one, for tight observation."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self._api = api

    async def _get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        response = await self._api.call_api(path, method, header_params={"Accept": "*/*"},
                                            auth_settings=["BearerToken"],
                                            _preload_content=False)
        try:
            return response.status, await response.read()
        finally:
            response.release()

    async def pods(self) -> list[dict[str, Any]]:
        _, body = await self._get(f"/api/v1/namespaces/{NAMESPACE}/pods")
        items: list[dict[str, Any]] = json.loads(body)["items"]
        return items

    async def deployment(self) -> dict[str, Any]:
        _, body = await self._get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/"
                                  f"{CONTROLLER}")
        found: dict[str, Any] = json.loads(body)
        return found

    async def delete_pod(self, name: str) -> dict[str, Any]:
        _, body = await self._get(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}", "DELETE")
        answer: dict[str, Any] = json.loads(body)
        return answer

    async def cert(self) -> tuple[int, str | None]:
        """cert.pem through the service proxy: the status and the fingerprint served."""
        status, body = await self._get(f"{PROXY}/v1/cert.pem")
        if status != 200:
            return status, None
        return status, keys_domain.load_certificate(body).fingerprint


@contextlib.asynccontextmanager
async def observing(harness: SandboxHarness) -> AsyncIterator[Cluster]:
    async with harness.api_client() as api:
        yield Cluster(api)


async def add_key(harness: SandboxHarness, key: keys_domain.SealingKey, name: str) -> None:
    manifest = json.dumps(keys_domain.key_secret_manifest(key, name=name))
    created = await harness.kubectl("apply", "-f", "-", stdin=manifest)
    assert created.returncode == 0, created.stderr



async def kubectl_pods(harness: SandboxHarness) -> list[dict[str, Any]]:
    listed = await harness.kubectl_json("get", "pods", "-n", NAMESPACE)
    items: list[dict[str, Any]] = listed["items"]
    return items
