"""Reaching the controller as kubeseal does: Service port name, service proxy, verify."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web

from sealfleet.adapters.kube import controller
from sealfleet.adapters.kube.client import NotFound
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import PermanentError, TransientError

NS, NAME = "kube-system", "sealed-secrets-controller"


def install(cluster: Any, *, port_name: str | None = None, ready: int = 1) -> None:
    port: dict[str, Any] = {"port": 8080, "targetPort": 8080}
    if port_name:
        port["name"] = port_name
    cluster.store.create("services", NS, {"metadata": {"name": NAME},
                                          "spec": {"ports": [port]}})
    deployment = cluster.store.create("deployments.apps", NS, {
        "metadata": {"name": NAME}, "spec": {"replicas": 1, "template": {}}})
    deployment["status"] = {"readyReplicas": ready}
    cluster.store.update("deployments.apps", NS, NAME, deployment, subresource="status")


def serve(cluster: Any, key: SealingKey, *, verify_status: int = 200) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/cert.pem":
            return web.Response(body=key.certificate.pem, content_type="application/x-pem-file")
        if request.path == "/v1/verify" and request.method == "POST":
            received.append(json.loads(await request.read()))
            headers = {"Retry-After": "3"} if verify_status == 429 else {}
            return web.Response(status=verify_status, text="", headers=headers)
        return web.Response(status=404)

    cluster.server.register_service_handler(NS, NAME, handler)
    return received


async def test_proxy_name_has_a_trailing_colon_when_the_port_is_unnamed(cluster: Any) -> None:
    install(cluster)
    async with cluster.client() as client:
        assert await controller.proxy_name(client, NS, NAME) == f"http:{NAME}:"


async def test_proxy_name_uses_the_first_port_name(cluster: Any) -> None:
    install(cluster, port_name="http")
    async with cluster.client() as client:
        assert await controller.proxy_name(client, NS, NAME) == f"http:{NAME}:http"


async def test_cert_pem_through_the_proxy_names_the_sealing_key(
        cluster: Any, rsa2048_keys: list[SealingKey]) -> None:
    install(cluster)
    serve(cluster, rsa2048_keys[1])
    async with cluster.client() as client:
        proxy = await controller.proxy_name(client, NS, NAME)
        certificate = await controller.fetch_certificate(client, NS, proxy)
        deployment = await controller.read_deployment(client, NS, NAME)
    assert certificate.fingerprint == rsa2048_keys[1].fingerprint
    assert deployment.available


async def test_no_controller_endpoint_is_transient_and_missing_deployment_not_found(
        cluster: Any) -> None:
    install(cluster)
    async with cluster.client() as client:
        with pytest.raises(TransientError):
            await controller.fetch_certificate(client, NS, f"http:{NAME}:")
        with pytest.raises(NotFound):
            await controller.read_deployment(client, NS, "other")
        with pytest.raises(NotFound):
            await controller.proxy_name(client, NS, "other")


@pytest.mark.parametrize(("status", "expected"), [(200, True), (409, False)])
async def test_verify_maps_200_and_409(cluster: Any, rsa2048_keys: list[SealingKey],
                                       status: int, expected: bool) -> None:
    install(cluster)
    received = serve(cluster, rsa2048_keys[0], verify_status=status)
    sealed = {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
              "metadata": {"name": "db", "namespace": "apps", "resourceVersion": "9"},
              "spec": {"encryptedData": {"k": "AAAA"}}, "status": {"x": 1}}
    async with cluster.client() as client:
        assert await controller.verify(client, NS, f"http:{NAME}:", sealed) is expected
    assert received[0]["spec"] == sealed["spec"]
    assert "status" not in received[0]


async def test_verify_rate_limit_is_transient_with_retry_after(
        cluster: Any, rsa2048_keys: list[SealingKey]) -> None:
    install(cluster)
    serve(cluster, rsa2048_keys[0], verify_status=429)
    async with cluster.client() as client:
        with pytest.raises(TransientError) as caught:
            await controller.verify(client, NS, f"http:{NAME}:", {"spec": {}})
    assert caught.value.retry_after == 3.0


async def test_a_non_certificate_answer_is_permanent(cluster: Any) -> None:
    install(cluster)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="hello")

    cluster.server.register_service_handler(NS, NAME, handler)
    async with cluster.client() as client:
        with pytest.raises(PermanentError):
            await controller.fetch_certificate(client, NS, f"http:{NAME}:")
