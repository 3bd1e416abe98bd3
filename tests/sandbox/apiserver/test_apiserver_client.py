"""The sandbox apiserver driven by kubernetes-asyncio, the client the daemon uses.

Model calls check that responses deserialize into the library's types; raw calls
(``_preload_content=False``) check the wire format itself: Status bodies, list metadata,
continue tokens and watch lines.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

if TYPE_CHECKING:
    from tests.sandbox.conftest import SandboxApi

GROUP, VERSION, PLURAL = "bitnami.com", "v1alpha1", "sealedsecrets"


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    assert body["kind"] == "Status"
    assert body["code"] == exc.status
    return body


def sealed_secret(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SealedSecret",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"encryptedData": {"k": "AgBy3i4OJSWK+PiTySYZZA=="}},
    }


async def raw_json(response: Any) -> Any:
    async with response:
        return json.loads(await response.read())


async def test_secret_crud_with_models(sandbox_api: SandboxApi) -> None:
    async with sandbox_api.api_client() as api:
        core = client.CoreV1Api(api)
        created = await core.create_namespaced_secret(
            "default",
            client.V1Secret(
                metadata=client.V1ObjectMeta(generate_name="db-", labels={"app": "db"}),
                string_data={"password": "hunter2"},
            ),
        )
        name = created.metadata.name
        assert name.startswith("db-")
        assert created.data == {"password": base64.b64encode(b"hunter2").decode()}
        read = await core.read_namespaced_secret(name, "default")
        assert read.metadata.uid == created.metadata.uid
        assert read.type == "Opaque"

        patched = await core.patch_namespaced_secret(
            name,
            "default",
            {"metadata": {"labels": {"tier": "backend"}}},
            _content_type="application/merge-patch+json",
        )
        assert patched.metadata.labels == {"app": "db", "tier": "backend"}

        created.metadata.labels = {"stale": "write"}
        with pytest.raises(ApiException) as stale:
            await core.replace_namespaced_secret(name, "default", created)
        assert status_of(stale.value)["reason"] == "Conflict"

        with pytest.raises(ApiException) as precondition:
            await core.delete_namespaced_secret(
                name, "default", body=client.V1DeleteOptions(preconditions={"uid": "wrong"})
            )
        assert precondition.value.status == 409
        deleted = await core.delete_namespaced_secret(name, "default")
        assert deleted.status == "Success"
        assert deleted.details.uid == created.metadata.uid
        with pytest.raises(ApiException) as gone:
            await core.read_namespaced_secret(name, "default")
        assert status_of(gone.value)["reason"] == "NotFound"


async def test_json_patch_and_strategic_merge(sandbox_api: SandboxApi) -> None:
    async with sandbox_api.api_client() as api:
        apps = client.AppsV1Api(api)
        await apps.create_namespaced_deployment(
            "default",
            {
                "metadata": {"name": "web"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [
                                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
                                {"name": "b", "image": "b:1"},
                            ]
                        },
                    },
                },
            },
        )
        patched = await apps.patch_namespaced_deployment(
            "web",
            "default",
            {
                "spec": {
                    "template": {
                        "metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
                        "spec": {
                            "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]
                        },
                    }
                }
            },
            _content_type="application/strategic-merge-patch+json",
        )
        containers = patched.spec.template.spec.containers
        assert [c.name for c in containers] == ["a", "b"]  # merged by name, not replaced
        assert [(e.name, e.value) for e in containers[0].env] == [("X", "1"), ("Y", "2")]
        assert containers[0].image == "a:1"
        assert patched.metadata.generation == 2
        patched = await apps.patch_namespaced_deployment(
            "web",
            "default",
            [{"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": "b:2"}],
            _content_type="application/json-patch+json",
        )
        assert patched.spec.template.spec.containers[1].image == "b:2"
        with pytest.raises(ApiException) as failed_test:
            await apps.patch_namespaced_deployment(
                "web",
                "default",
                [{"op": "test", "path": "/spec/template/spec/containers/1/image", "value": "x"}],
                _content_type="application/json-patch+json",
            )
        assert failed_test.value.status == 422


async def test_custom_objects_status_subresource_and_no_strategic_merge(
    sandbox_api: SandboxApi,
) -> None:
    async with sandbox_api.api_client() as api:
        custom = client.CustomObjectsApi(api)
        created = await custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, sealed_secret("s1")
        )
        assert created["metadata"]["generation"] == 1
        status = {
            "status": {
                "observedGeneration": 1,
                "conditions": [{"type": "Synced", "status": "True"}],
            }
        }
        after = await custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "s1",
            status,
            _content_type="application/merge-patch+json",
        )
        assert after["status"]["conditions"][0]["status"] == "True"
        assert after["metadata"]["generation"] == 1
        with pytest.raises(ApiException) as unsupported:
            await custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                "default",
                PLURAL,
                "s1",
                {"spec": {}},
                _content_type="application/strategic-merge-patch+json",
            )
        assert unsupported.value.status == 415

        ext = client.ApiextensionsV1Api(api)
        crd = await ext.read_custom_resource_definition("sealedsecrets.bitnami.com")
        assert crd.spec.versions[0].subresources.status == {}
        with pytest.raises(ApiException) as read_only:
            await ext.delete_custom_resource_definition("sealedsecrets.bitnami.com")
        assert read_only.value.status == 405


async def test_selectors_across_namespaces(sandbox_api: SandboxApi) -> None:
    async with sandbox_api.api_client() as api:
        core = client.CoreV1Api(api)
        await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team")))
        for ns, name, labels, kind in [
            ("default", "a", {"env": "prod", "tier": "web"}, "Opaque"),
            ("default", "b", {"env": "dev"}, "Opaque"),
            ("team", "c", {"env": "prod"}, "kubernetes.io/tls"),
            ("team", "d", {}, "Opaque"),
        ]:
            secret = client.V1Secret(
                metadata=client.V1ObjectMeta(name=name, labels=labels), type=kind
            )
            if kind == "kubernetes.io/tls":
                secret.data = {"tls.crt": "", "tls.key": ""}
            await core.create_namespaced_secret(ns, secret)

        async def names(**kwargs: Any) -> list[str]:
            result = await core.list_secret_for_all_namespaces(**kwargs)
            return [f"{s.metadata.namespace}/{s.metadata.name}" for s in result.items]

        assert await names(label_selector="env=prod") == ["default/a", "team/c"]
        assert await names(label_selector="env==prod,tier") == ["default/a"]
        assert await names(label_selector="env!=prod") == ["default/b", "team/d"]
        assert await names(label_selector="env in (dev, prod),!tier") == ["default/b", "team/c"]
        assert await names(label_selector="env notin (prod)") == ["default/b", "team/d"]
        assert await names(field_selector="type=kubernetes.io/tls") == ["team/c"]
        assert await names(field_selector="metadata.namespace=team,metadata.name!=c") == ["team/d"]
        with pytest.raises(ApiException) as unsupported:
            await names(field_selector="spec.nope=1")
        assert unsupported.value.status == 400

        with pytest.raises(ApiException) as no_ns:
            await core.create_namespaced_secret("missing", client.V1Secret(metadata={"name": "x"}))
        assert status_of(no_ns.value)["message"] == 'namespaces "missing" not found'

        await core.delete_collection_namespaced_secret("default", label_selector="env=dev")
        assert await names(field_selector="metadata.namespace=default") == ["default/a"]


async def test_pagination_and_expired_continue(sandbox_api: SandboxApi) -> None:
    store = sandbox_api.store
    for n in range(25):
        store.create("sealedsecrets.bitnami.com", "default", sealed_secret(f"s{n:02d}"))
    async with sandbox_api.api_client() as api:
        custom = client.CustomObjectsApi(api)
        seen: list[str] = []
        token = None
        pages = 0
        while True:
            page = await custom.list_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, limit=10, _continue=token
            )
            pages += 1
            assert page["kind"] == "SealedSecretList"
            seen += [item["metadata"]["name"] for item in page["items"]]
            token = page["metadata"].get("continue")
            if pages == 1:
                assert page["metadata"]["remainingItemCount"] == 15
                first_token = token
            if not token:
                break
        assert pages == 3
        assert seen == [f"s{n:02d}" for n in range(25)]

        for n in range(250):  # more changes than the fixture's 200-event history
            store.create("secrets", "default", {"metadata": {"name": f"churn{n}"}})
        with pytest.raises(ApiException) as expired:
            await custom.list_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, limit=10, _continue=first_token
            )
        assert (expired.value.status, status_of(expired.value)["reason"]) == (410, "Expired")


async def test_authentication_and_least_privilege(sandbox_api: SandboxApi) -> None:
    sandbox_api.store.create("secrets", "kube-system", {"metadata": {"name": "key"}})
    async with sandbox_api.api_client(restricted=True) as api:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as forbidden:
            await core.read_namespaced_secret("key", "kube-system")
        body = status_of(forbidden.value)
        assert body["reason"] == "Forbidden"
        assert body["details"] == {
            "name": "key",
            "kind": "secrets",
        }
        assert "cannot get resource" in body["message"]
        with pytest.raises(ApiException) as cluster_wide:
            await core.list_secret_for_all_namespaces()
        assert cluster_wide.value.status == 403
        assert (await core.list_namespaced_secret("default")).items == []
        assert (await core.read_namespace("kube-system")).metadata.name == "kube-system"
    async with sandbox_api.api_client() as api:
        api.configuration.api_key = {"BearerToken": "Bearer not-a-token"}
        api.configuration.refresh_api_key_hook = None
        with pytest.raises(ApiException) as unauthorized:
            await client.CoreV1Api(api).list_namespace()
        assert status_of(unauthorized.value)["reason"] == "Unauthorized"


async def test_watch_events_bookmarks_and_expiry(sandbox_api: SandboxApi) -> None:
    store = sandbox_api.store
    async with sandbox_api.api_client() as api:
        core = client.CoreV1Api(api)
        listed = await core.list_namespaced_secret("default")
        start = listed.metadata.resource_version
        store.create("secrets", "default", {"metadata": {"name": "w"}})
        secret = store.get("secrets", "default", "w")
        secret["metadata"]["labels"] = {"changed": "yes"}
        store.update("secrets", "default", "w", secret)
        store.delete("secrets", "default", "w")

        events = []
        async with Watch() as watch:
            async for event in watch.stream(
                core.list_namespaced_secret, "default", resource_version=start, timeout_seconds=1
            ):
                events.append((event["type"], event["object"].metadata.name))
        assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]

        response = await core.list_namespaced_secret(
            "default",
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=str(store.resource_version),
            timeout_seconds=1,
            _preload_content=False,
        )
        async with response:
            assert response.headers["Content-Type"] == "application/json"
            lines = [json.loads(line) for line in (await response.read()).splitlines()]
        assert lines
        assert all(line["type"] == "BOOKMARK" for line in lines)
        assert lines[-1]["object"]["metadata"]["resourceVersion"] == str(store.resource_version)

        for n in range(250):
            store.create("secrets", "default", {"metadata": {"name": f"churn{n}"}})
        response = await core.list_namespaced_secret(
            "default", watch=True, resource_version=start, timeout_seconds=5, _preload_content=False
        )
        async with response:
            assert response.status == 200
            lines = [json.loads(line) for line in (await response.read()).splitlines()]
        assert len(lines) == 1
        assert lines[0]["type"] == "ERROR"
        assert lines[0]["object"]["code"] == 410
        assert lines[0]["object"]["reason"] == "Expired"


async def test_watch_initial_events_then_changes(sandbox_api: SandboxApi) -> None:
    store = sandbox_api.store
    store.create("secrets", "default", {"metadata": {"name": "before", "labels": {"w": "1"}}})
    store.create("secrets", "default", {"metadata": {"name": "unlabelled"}})
    async with sandbox_api.api_client() as api:
        core = client.CoreV1Api(api)
        response = await core.list_namespaced_secret(
            "default",
            watch=True,
            label_selector="w=1",
            send_initial_events=True,
            allow_watch_bookmarks=True,
            resource_version_match="NotOlderThan",
            resource_version="0",
            timeout_seconds=2,
            _preload_content=False,
        )
        async with response:
            first = json.loads(await response.content.readline())
            end = json.loads(await response.content.readline())
            store.create(
                "secrets", "default", {"metadata": {"name": "after", "labels": {"w": "1"}}}
            )
            store.create("secrets", "default", {"metadata": {"name": "ignored"}})
            nxt = json.loads(await response.content.readline())
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "before")
        assert end["type"] == "BOOKMARK"
        assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        assert (nxt["type"], nxt["object"]["metadata"]["name"]) == ("ADDED", "after")


async def test_service_proxy_reaches_the_registered_handler(sandbox_api: SandboxApi) -> None:
    seen: list[tuple[str, str, str, bytes, str | None]] = []

    async def controller(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(
            (
                request.method,
                request.path,
                request.query_string,
                body,
                request.headers.get("Authorization"),
            )
        )
        return web.Response(
            text="-----BEGIN CERTIFICATE-----\n", content_type="application/x-pem-file"
        )

    sandbox_api.store.create(
        "services",
        "kube-system",
        {"metadata": {"name": "sealed-secrets-controller"}, "spec": {"ports": [{"port": 8080}]}},
    )
    async with sandbox_api.api_client() as api:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as unavailable:
            await core.connect_get_namespaced_service_proxy_with_path(
                "http:sealed-secrets-controller:", "kube-system", "v1/cert.pem"
            )
        assert status_of(unavailable.value)["reason"] == "ServiceUnavailable"

        sandbox_api.server.register_service_handler(
            "kube-system", "sealed-secrets-controller", controller
        )
        cert = await core.connect_get_namespaced_service_proxy_with_path(
            "http:sealed-secrets-controller:", "kube-system", "v1/cert.pem"
        )
        assert cert.startswith("-----BEGIN CERTIFICATE-----")
        response = await api.call_api(
            "/api/v1/namespaces/kube-system/services/http:sealed-secrets-controller:/proxy/v1/verify",
            "POST",
            query_params=[("x", "1")],
            header_params={"Content-Type": "application/json"},
            body={"kind": "SealedSecret"},
            auth_settings=["BearerToken"],
            _preload_content=False,
        )
        async with response:
            assert response.status == 200
        with pytest.raises(ApiException) as missing:
            await core.connect_get_namespaced_service_proxy_with_path(
                "http:no-such-service:", "kube-system", "v1/cert.pem"
            )
        assert missing.value.status == 404
    assert [(m, p) for m, p, _, _, _ in seen] == [("GET", "/v1/cert.pem"), ("POST", "/v1/verify")]
    assert json.loads(seen[1][3]) == {"kind": "SealedSecret"}
    assert seen[1][2] == "x=1"
    assert all(auth is None for *_, auth in seen)  # the caller's token is not forwarded


async def test_discovery_documents(sandbox_api: SandboxApi) -> None:
    async with sandbox_api.api_client() as api:
        resources = await client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
        by_name = {r.name: r for r in resources.resources}
        assert by_name["sealedsecrets"].kind == "SealedSecret"
        assert by_name["sealedsecrets"].namespaced is True
        assert "sealedsecrets/status" in by_name
        version = await client.VersionApi(api).get_code()
        assert version.major == "1"
        groups = await client.ApisApi(api).get_api_versions()
        assert GROUP in [g.name for g in groups.groups]


async def test_selector_watch_sees_objects_move_in_and_out(sandbox_api: SandboxApi) -> None:
    store = sandbox_api.store
    store.create("secrets", "default", {"metadata": {"name": "m", "labels": {"team": "a"}}})
    start = store.resource_version

    def relabel(team: str) -> None:
        obj = store.get("secrets", "default", "m")
        obj["metadata"]["labels"] = {"team": team}
        store.update("secrets", "default", "m", obj)

    relabel("b")
    relabel("a")
    relabel("a2")
    async with sandbox_api.api_client() as api:
        response = await client.CoreV1Api(api).list_namespaced_secret(
            "default",
            watch=True,
            label_selector="team=a",
            resource_version=str(start),
            timeout_seconds=1,
            _preload_content=False,
        )
        async with response:
            lines = [json.loads(line) for line in (await response.read()).splitlines()]
    assert [line["type"] for line in lines] == ["DELETED", "ADDED", "DELETED"]


async def test_sealed_secret_spec_is_pruned_to_the_crd_schema(sandbox_api: SandboxApi) -> None:
    body = sealed_secret("pruned")
    body["spec"]["encryptedData"]["any-key"] = "kept"
    body["spec"]["template"] = {"metadata": {"labels": {"x": "y"}}, "unknownInTemplate": 1}
    body["spec"]["bogus"] = True
    async with sandbox_api.api_client() as api:
        response = await client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, body, _preload_content=False
        )
        async with response:
            created = json.loads(await response.read())
            warnings = response.headers.getall("Warning", [])
    assert "bogus" not in created["spec"]
    assert created["spec"]["encryptedData"]["any-key"] == "kept"
    assert created["spec"]["template"]["unknownInTemplate"] == 1  # preserve-unknown-fields
    assert warnings == ['299 - "unknown field \\"spec.bogus\\""']
