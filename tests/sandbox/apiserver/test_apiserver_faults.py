"""Fault injection: each fault as a client sees it, set over HTTP and from Python."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import ssl
import time
import warnings
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

if TYPE_CHECKING:
    from tests.sandbox.conftest import SandboxApi


@pytest.fixture
async def http(sandbox_api: SandboxApi) -> AsyncIterator[aiohttp.ClientSession]:
    context = ssl.create_default_context(cadata=sandbox_api.server.ca_pem.decode())
    connector = aiohttp.TCPConnector(ssl=context)
    headers = {"Authorization": f"Bearer {sandbox_api.tokens.admin}"}
    async with aiohttp.ClientSession(
        base_url=sandbox_api.url, connector=connector, headers=headers
    ) as session:
        yield session


async def set_faults(http: aiohttp.ClientSession, **changes: Any) -> dict[str, Any]:
    async with http.post("/_sandbox/faults", json=changes) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_fault_endpoint_reads_validates_and_requires_admin(
    sandbox_api: SandboxApi, http: aiohttp.ClientSession
) -> None:
    async with http.get("/_sandbox/faults") as response:
        assert (await response.json())["error_rate"] == 0.0
    async with http.post("/_sandbox/faults", json={"error_rate": 2}) as response:
        assert response.status == 400
        assert "error_rate" in (await response.json())["message"]
    async with http.post("/_sandbox/faults", json={"nonsense": 1}) as response:
        assert response.status == 400
    restricted = {"Authorization": f"Bearer {sandbox_api.tokens.restricted}"}
    async with http.post("/_sandbox/faults", json={}, headers=restricted) as response:
        assert response.status == 403
    async with http.get("/_sandbox/faults", headers={"Authorization": "Bearer nope"}) as response:
        assert response.status == 401
    assert (await set_faults(http, latency_ms=5))["latency_ms"] == 5
    assert sandbox_api.server.faults.latency_ms == 5


async def test_latency_is_added(sandbox_api: SandboxApi, http: aiohttp.ClientSession) -> None:
    await set_faults(http, latency_ms=150)
    started = time.monotonic()
    async with http.get("/api/v1/namespaces") as response:
        assert response.status == 200
    assert time.monotonic() - started >= 0.15  # a lower bound: sleeping cannot be shorter


@pytest.mark.parametrize(
    ("code", "reason"),
    [(500, "InternalError"), (503, "ServiceUnavailable"), (429, "TooManyRequests")],
)
async def test_error_rate_answers_status_objects(
    sandbox_api: SandboxApi, code: int, reason: str
) -> None:
    await sandbox_api.server.set_faults(error_rate=1.0, error_code=code, retry_after_seconds=7)
    async with sandbox_api.api_client() as api:
        with pytest.raises(ApiException) as failed:
            await client.CoreV1Api(api).list_namespace()
    body = json.loads(failed.value.body)
    assert (failed.value.status, body["reason"], body["code"]) == (code, reason, code)
    if code == 429:
        assert failed.value.headers["Retry-After"] == "7"
        assert body["details"]["retryAfterSeconds"] == 7
    else:
        assert "Retry-After" not in failed.value.headers
    await sandbox_api.server.clear_faults()
    async with sandbox_api.api_client() as api:
        assert (await client.CoreV1Api(api).list_namespace()).items


async def test_dropped_connections(sandbox_api: SandboxApi, http: aiohttp.ClientSession) -> None:
    await set_faults(http, drop_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        async with http.get("/api/v1/namespaces") as response:
            await response.read()
    await set_faults(http, drop_rate=0.0)  # the fault endpoint itself is never dropped
    async with http.get("/api/v1/namespaces") as response:
        assert response.status == 200


async def test_watch_cut_after_n_events(
    sandbox_api: SandboxApi, http: aiohttp.ClientSession
) -> None:
    start = sandbox_api.store.resource_version
    for n in range(3):
        sandbox_api.store.create("secrets", "default", {"metadata": {"name": f"s{n}"}})
    await set_faults(http, watch_cut_after=2)
    lines: list[dict[str, Any]] = []

    async def read_watch() -> None:
        async with http.get(
            "/api/v1/namespaces/default/secrets",
            params={"watch": "1", "resourceVersion": str(start), "timeoutSeconds": "5"},
        ) as response:
            async for line in response.content:
                lines.append(json.loads(line))

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_watch()
    assert [line["object"]["metadata"]["name"] for line in lines] == ["s0", "s1"]


async def test_gone_on_next_watch_only(
    sandbox_api: SandboxApi, http: aiohttp.ClientSession
) -> None:
    await set_faults(http, gone_next_watch=True)
    params = {"watch": "true", "resourceVersion": str(sandbox_api.store.resource_version)}
    async with http.get("/api/v1/secrets", params={**params, "timeoutSeconds": "1"}) as response:
        events = [json.loads(line) for line in (await response.read()).splitlines()]
    assert [(e["type"], e["object"]["code"]) for e in events] == [("ERROR", 410)]
    assert sandbox_api.server.faults.gone_next_watch is False
    async with http.get("/api/v1/secrets", params={**params, "timeoutSeconds": "1"}) as response:
        assert (await response.read()) == b""  # no changes, no error: a plain timeout


async def test_outage_refuses_connections_and_recovers_on_the_same_port(
    sandbox_api: SandboxApi, http: aiohttp.ClientSession
) -> None:
    port = sandbox_api.server.port
    watch = await http.get("/api/v1/secrets", params={"watch": "1", "timeoutSeconds": "30"})
    await set_faults(http, outage=True)
    with pytest.raises(aiohttp.ClientPayloadError):  # the open watch is dropped too
        async with asyncio.timeout(5):
            await watch.read()
    watch.release()
    with pytest.raises(aiohttp.ClientConnectorError):
        async with http.get("/version"):
            pass
    await sandbox_api.server.set_faults(outage=False)
    assert sandbox_api.server.port == port
    async with http.get("/version") as response:
        assert response.status == 200
    async with sandbox_api.api_client() as api:
        assert (await client.CoreV1Api(api).read_namespace("default")).metadata.name == "default"


async def test_outage_drops_connections_still_in_their_tls_handshake(
    sandbox_api: SandboxApi,
) -> None:
    # Clients that connected but have not finished (here: not begun) the TLS handshake
    # are server-side connections too: the outage must close them, not leave them open.
    server = sandbox_api.server
    port = server.port
    silent = [await asyncio.open_connection(server.host, port) for _ in range(3)]
    async with sandbox_api.api_client() as api:  # the silent ones are accepted by now
        await client.VersionApi(api).get_code()
    await server.set_faults(outage=True)
    for reader, writer in silent:
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # closed by the server (EOF), not hanging
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(server.host, port)
    await server.set_faults(outage=False)
    async with sandbox_api.api_client() as api:
        assert (await client.VersionApi(api).get_code()).git_version


async def test_outage_leaves_no_server_side_socket_open(sandbox_api: SandboxApi) -> None:
    # Connections caught at every stage when the outage begins (still queued, accepted
    # with their handshake not yet begun, mid-handshake) must all be closed by the
    # server; one left open is found by the garbage collector as a ResourceWarning.
    # The clients connect synchronously (loopback: the kernel completes it at once), so
    # how many loop iterations the server had before the outage is exact.
    server = sandbox_api.server
    loop = asyncio.get_running_loop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for iterations in range(5):
            clients = [socket.create_connection((server.host, server.port)) for _ in range(4)]
            for _ in range(iterations):
                await asyncio.sleep(0)
            await server.set_faults(outage=True)
            for sock in clients:
                sock.setblocking(False)
                async with asyncio.timeout(5):
                    with contextlib.suppress(ConnectionResetError):  # refused while queued
                        assert await loop.sock_recv(sock, 1) == b""
                sock.close()
            await server.set_faults(outage=False)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type"),
    [
        ("POST", "/api/v1/namespaces/default/secrets", b"{not json", "application/json"),
        ("POST", "/api/v1/namespaces/default/secrets", b"[1, 2]", "application/json"),
        (
            "POST",
            "/api/v1/namespaces/default/secrets",
            b'{"metadata": {"name": 5}}',
            "application/json",
        ),
        ("POST", "/api/v1/namespaces/default/secrets", b'{"metadata": "x"}', "application/json"),
        (
            "POST",
            "/api/v1/namespaces/default/secrets",
            b'{"metadata": {"name": "a", "labels": [1]}}',
            "application/json",
        ),
        (
            "POST",
            "/api/v1/namespaces/default/secrets",
            b"k8s\x00\x0a\x05junk",
            "application/vnd.kubernetes.protobuf",
        ),
        ("PUT", "/api/v1/namespaces/default/secrets/a", b"{}", "application/json"),
        (
            "PATCH",
            "/api/v1/namespaces/default/secrets/a",
            b'{"x": 1}',
            "application/json-patch+json",
        ),
        ("PATCH", "/api/v1/namespaces/default/secrets/a", b"[1]", "application/merge-patch+json"),
        ("PATCH", "/api/v1/namespaces/default/secrets/a", b"{}", "text/plain"),
        ("GET", "/api/v1/namespaces/default/secrets?limit=x", b"", "application/json"),
        ("GET", "/api/v1/namespaces/default/secrets?continue=garbage", b"", "application/json"),
        (
            "GET",
            "/api/v1/namespaces/default/secrets?watch=1&resourceVersion=x",
            b"",
            "application/json",
        ),
        ("GET", "/api/v1/namespaces/default/nothings", b"", "application/json"),
        ("GET", "/apis/bitnami.com/v9/sealedsecrets", b"", "application/json"),
        ("DELETE", "/api/v1/namespaces/default/secrets/a", b"{oops", "application/json"),
    ],
)
async def test_bad_requests_get_status_objects_never_crashes(
    sandbox_api: SandboxApi,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: bytes,
    content_type: str,
) -> None:
    sandbox_api.store.create("secrets", "default", {"metadata": {"name": "a"}})
    async with http.request(
        method, path, data=body, headers={"Content-Type": content_type}
    ) as response:
        status = await response.json()
    assert 400 <= response.status < 500
    assert status["kind"] == "Status"
    assert status["code"] == response.status


async def test_legacy_watch_paths(sandbox_api: SandboxApi, http: aiohttp.ClientSession) -> None:
    store = sandbox_api.store
    start = str(store.resource_version)
    store.create("secrets", "default", {"metadata": {"name": "one"}})
    store.create("secrets", "default", {"metadata": {"name": "two"}})
    store.create("secrets", "other", {"metadata": {"name": "one"}})
    params = {"resourceVersion": start, "timeoutSeconds": "10"}

    async def names(path: str, count: int) -> list[str]:
        """The names in the first ``count`` events."""
        async with http.get(path, params=params) as response:
            assert response.status == 200
            lines = [await response.content.readline() for _ in range(count)]
        return [json.loads(line)["object"]["metadata"]["name"] for line in lines]

    assert await names("/api/v1/watch/namespaces/default/secrets", 2) == ["one", "two"]
    assert await names("/api/v1/watch/secrets", 3) == ["one", "two", "one"]
    # Single-object watches: the first event must be the named object, not "one"/"two" first.
    assert await names("/api/v1/watch/namespaces/default/secrets/two", 1) == ["two"]
    assert await names("/api/v1/namespaces/other/secrets/one?watch=true", 1) == ["one"]


async def test_status_subresource_only_allows_get_update_patch(
    sandbox_api: SandboxApi, http: aiohttp.ClientSession
) -> None:
    sandbox_api.store.create(
        "sealedsecrets.bitnami.com", "default", {"metadata": {"name": "s"}, "spec": {}}
    )
    path = "/apis/bitnami.com/v1alpha1/namespaces/default/sealedsecrets/s/status"
    async with http.delete(path) as response:
        assert response.status == 405
    async with http.get(path) as response:
        assert (await response.json())["metadata"]["name"] == "s"
    assert sandbox_api.store.get("sealedsecrets.bitnami.com", "default", "s")
