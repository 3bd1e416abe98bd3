"""KubeClient's writes against the emulated apiserver over HTTPS: create, patch (three
formats), replace and delete, their preconditions, and what their errors may say."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from aiohttp import web

from sealfleet.adapters.kube.client import AlreadyExists, Conflict, NotFound, PatchType
from sealfleet.errors import PermanentError

NS = "apps"
# Plain Secrets of an application namespace (the sandbox serves no ConfigMaps).
OBJECTS = f"/api/v1/namespaces/{NS}/secrets"
SECRETS = "/api/v1/namespaces/kube-system/secrets"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {k: b64(v) for k, v in data.items()}}


async def test_create_then_a_second_create_of_the_name_is_already_exists(cluster: Any) -> None:
    async with cluster.client() as client:
        created = await client.create_json(OBJECTS, secret("one", a="1"))
        with pytest.raises(AlreadyExists) as caught:
            await client.create_json(OBJECTS, secret("one", a="2"))
    assert created["metadata"]["resourceVersion"]
    assert isinstance(caught.value, Conflict)
    assert cluster.store.get("secrets", NS, "one")["data"] == {"a": b64("1")}


@pytest.mark.parametrize("patch_type", list(PatchType))
async def test_each_patch_format_applies_and_a_stale_resource_version_conflicts(
        cluster: Any, patch_type: PatchType) -> None:
    patch: Any = ([{"op": "add", "path": "/data/b", "value": b64("2")}]
                  if patch_type is PatchType.JSON else {"data": {"b": b64("2")}})
    async with cluster.client() as client:
        created = await client.create_json(OBJECTS, secret("cm", a="1"))
        version = created["metadata"]["resourceVersion"]
        patched = await client.patch_json(f"{OBJECTS}/cm", patch, patch_type=patch_type,
                                          resource_version=version)
        assert patched["data"] == {"a": b64("1"), "b": b64("2")}
        with pytest.raises(Conflict):  # the object moved on since `version`
            await client.patch_json(f"{OBJECTS}/cm", patch, patch_type=patch_type,
                                    resource_version=version)
        # Without a precondition it applies to whatever is there.
        await client.patch_json(f"{OBJECTS}/cm", patch, patch_type=patch_type)


async def test_strategic_merge_patches_a_pod_template_annotation_in_place(
        cluster: Any) -> None:
    deployments = f"/apis/apps/v1/namespaces/{NS}/deployments"
    body = {"metadata": {"name": "d"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}},
                     "spec": {"containers": [{"name": "c", "image": "x"}]}}}}
    async with cluster.client() as client:
        created = await client.create_json(deployments, body)
        patched = await client.patch_json(
            f"{deployments}/d", {"spec": {"template": {"metadata": {"annotations": {
                "restarted": "now"}}}}}, patch_type=PatchType.STRATEGIC)
    template = patched["spec"]["template"]
    assert template["metadata"] == {"labels": {"app": "d"}, "annotations": {"restarted": "now"}}
    assert template["spec"]["containers"][0]["name"] == "c"
    assert patched["metadata"]["generation"] == created["metadata"]["generation"] + 1


async def test_replace_needs_the_version_it_read_and_conflicts_when_it_moved(
        cluster: Any) -> None:
    async with cluster.client() as client:
        created = await client.create_json(OBJECTS, secret("cm", a="1"))
        with pytest.raises(ValueError, match="resourceVersion"):
            await client.replace_json(f"{OBJECTS}/cm", secret("cm", a="2"))
        replaced = await client.replace_json(f"{OBJECTS}/cm",
                                             {**created, "data": {"a": b64("2")}})
        with pytest.raises(Conflict):
            await client.replace_json(f"{OBJECTS}/cm", {**created, "data": {"a": b64("3")}})
    assert replaced["data"] == {"a": b64("2")}
    assert cluster.store.get("secrets", NS, "cm")["data"] == {"a": b64("2")}


async def test_delete_honours_uid_and_resource_version_preconditions(cluster: Any) -> None:
    async with cluster.client() as client:
        created = await client.create_json(OBJECTS, secret("cm", a="1"))
        metadata = created["metadata"]
        with pytest.raises(Conflict):
            await client.delete(f"{OBJECTS}/cm", uid="another-uid")
        with pytest.raises(Conflict):
            await client.delete(f"{OBJECTS}/cm", resource_version="1")
        assert cluster.store.get("secrets", NS, "cm")
        await client.delete(f"{OBJECTS}/cm", uid=metadata["uid"],
                            resource_version=metadata["resourceVersion"])
        with pytest.raises(NotFound):
            await client.delete(f"{OBJECTS}/cm")


async def test_a_forbidden_write_names_neither_the_token_nor_the_data(
        cluster: Any, rsa2048_keys: list[Any]) -> None:
    from sealfleet.domain.keys import key_secret_manifest
    manifest = key_secret_manifest(rsa2048_keys[0], name="k")
    async with cluster.client(restricted=True) as client:
        with pytest.raises(PermanentError) as caught:
            await client.create_json(SECRETS, manifest)
    message = str(caught.value)
    assert "403" in message
    assert cluster.server.tokens.restricted not in message
    assert manifest["data"]["tls.key"][:16] not in message


async def test_a_refusal_that_quotes_the_secret_it_was_sent_is_scrubbed(
        cluster: Any, rsa2048_keys: list[Any]) -> None:
    """An admission webhook (here: a service behind the proxy) quoting the refused object."""
    from sealfleet.domain.keys import key_secret_manifest
    manifest = key_secret_manifest(rsa2048_keys[0], name="k")
    key_b64 = manifest["data"]["tls.key"]
    cluster.store.create("services", "kube-system", {"metadata": {"name": "echo"},
                                                     "spec": {"ports": [{"port": 80}]}})

    async def quote_back(request: web.Request) -> web.StreamResponse:
        sent = json.loads(await request.read())
        message = f"denied: data.tls.key {sent['data']['tls.key'][40:400]} is not allowed"
        return web.json_response({"kind": "Status", "status": "Failure", "code": 422,
                                  "reason": "Invalid", "message": message}, status=422)

    cluster.server.register_service_handler("kube-system", "echo", quote_back)
    async with cluster.client() as client:
        with pytest.raises(PermanentError) as caught:
            await client.create_json("/api/v1/namespaces/kube-system/services/echo/proxy/x",
                                     manifest)
    message = str(caught.value)
    assert "denied: data.tls.key" in message
    assert "[REDACTED]" in message
    for start in range(0, len(key_b64) - 12, 12):
        assert key_b64[start:start + 12] not in message
    pem = base64.b64decode(key_b64).decode()
    assert pem.splitlines()[1][:12] not in message
