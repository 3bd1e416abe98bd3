"""KubeClient against an emulated apiserver over HTTPS: lists, watches, error translation."""

from __future__ import annotations

import contextlib
from asyncio import sslproto
from pathlib import Path
from typing import Any

import pytest

from sealfleet.adapters.kube import controller, tls
from sealfleet.adapters.kube.client import Gone, KubeClient, NotFound
from sealfleet.errors import PermanentError, TransientError

PATH = controller.SEALED_SECRETS_PATH


async def test_paginated_list_returns_every_object_with_one_resource_version(
        cluster: Any) -> None:
    for index in range(1203):
        cluster.add_sealed("apps" if index % 2 else "web", f"s-{index:04d}")
    async with cluster.client() as client:
        pages = [page async for page in client.list_pages(PATH, limit=500)]
    assert [len(p.items) for p in pages] == [500, 500, 203]
    assert [p.last for p in pages] == [False, False, True]
    assert len({p.resource_version for p in pages}) == 1
    names = {(i["metadata"]["namespace"], i["metadata"]["name"]) for p in pages for i in p.items}
    assert len(names) == 1203


async def test_an_expired_continue_token_is_gone(cluster: Any) -> None:
    for index in range(3):
        cluster.add_sealed("apps", f"s-{index}")
    async with cluster.client() as client:
        pages = client.list_pages(PATH, limit=1)
        first = await anext(pages)
        assert len(first.items) == 1
        for index in range(150):  # more writes than the server keeps history for
            cluster.add_sealed("web", f"churn-{index}")
        with pytest.raises(Gone):
            await anext(pages)
        await pages.aclose()


async def test_watch_streams_changes_and_bookmarks_from_a_resource_version(
        cluster: Any) -> None:
    cluster.add_sealed("apps", "before")
    async with cluster.client() as client:
        (page,) = [p async for p in client.list_pages(PATH)]
        created = cluster.add_sealed("apps", "after")
        created["spec"]["encryptedData"] = {"k": "BBBB"}
        cluster.store.update("sealedsecrets.bitnami.com",
                             "apps", "after", created)
        cluster.store.delete("sealedsecrets.bitnami.com", "apps", "before")
        seen: list[tuple[str, str]] = []
        async with contextlib.aclosing(client.watch(
                PATH, resource_version=page.resource_version, timeout_seconds=5)) as events:
            async for event in events:
                seen.append((event.type, event.object["metadata"].get("name", "")))
                if event.type == "BOOKMARK":
                    assert event.resource_version is not None
                    break
    assert seen[:3] == [("ADDED", "after"), ("MODIFIED", "after"), ("DELETED", "before")]
    assert seen[3][0] == "BOOKMARK"


async def test_an_object_near_etcds_size_limit_streams_whole_through_small_tls_reads(
        cluster: Any) -> None:
    # The TLS receive buffer is a few KiB (memory per idle watch); a watch event or a
    # list page far larger than it, up to etcd's 1.5 MiB request limit, still arrives
    # whole, as one line of the stream.
    big = {f"key-{index:03d}": f"{index:03d}" * 1600 for index in range(290)}  # ~1.4 MB
    async with cluster.client() as client:
        assert sslproto.SSLProtocol.max_size <= tls.RECEIVE_BUFFER < 16 * 1024
        (page,) = [p async for p in client.list_pages(PATH)]
        cluster.add_sealed("apps", "big", encryptedData=big)
        async with contextlib.aclosing(client.watch(
                PATH, resource_version=page.resource_version, timeout_seconds=5)) as events:
            event = await anext(events)
        (listed,) = [p async for p in client.list_pages(PATH)]
    assert (event.type, event.object["metadata"]["name"]) == ("ADDED", "big")
    assert event.object["spec"]["encryptedData"] == big
    assert listed.items[0]["spec"]["encryptedData"] == big


async def test_watch_from_a_resource_version_older_than_history_is_gone(
        cluster: Any) -> None:
    for index in range(150):
        cluster.add_sealed("apps", f"s-{index}")
    async with cluster.client() as client:
        with pytest.raises(Gone):
            async for _ in client.watch(PATH, resource_version="1", timeout_seconds=5):
                pass


async def test_injected_410_on_the_next_watch_is_gone(cluster: Any) -> None:
    async with cluster.client() as client:
        (page,) = [p async for p in client.list_pages(PATH)]
        await cluster.server.set_faults(gone_next_watch=True)
        with pytest.raises(Gone):
            async for _ in client.watch(PATH, resource_version=page.resource_version,
                                        timeout_seconds=5):
                pass


async def test_429_is_transient_and_carries_retry_after(cluster: Any) -> None:
    await cluster.server.set_faults(error_rate=1.0, error_code=429, retry_after_seconds=7)
    async with cluster.client() as client:
        with pytest.raises(TransientError) as caught:
            await client.get_json(PATH)
    assert caught.value.retry_after == 7.0
    assert "429" in str(caught.value)


async def test_503_is_transient_and_500_has_no_retry_after(cluster: Any) -> None:
    await cluster.server.set_faults(error_rate=1.0, error_code=500)
    async with cluster.client() as client:
        with pytest.raises(TransientError) as caught:
            await client.get_json(PATH)
    assert caught.value.retry_after is None


async def test_an_outage_is_transient_and_recovery_works(cluster: Any) -> None:
    async with cluster.client() as client:
        await cluster.server.set_faults(outage=True)
        with pytest.raises(TransientError):
            await client.get_json(PATH)
        await cluster.server.set_faults(outage=False)
        assert (await client.get_json(PATH))["items"] == []


async def test_a_cut_watch_stream_is_transient(cluster: Any) -> None:
    async with cluster.client() as client:
        (page,) = [p async for p in client.list_pages(PATH)]
        await cluster.server.set_faults(watch_cut_after=1)
        for index in range(3):
            cluster.add_sealed("apps", f"s-{index}")
        with pytest.raises(TransientError):
            async for _ in client.watch(PATH, resource_version=page.resource_version,
                                        timeout_seconds=5):
                pass


async def test_not_found_and_forbidden_are_permanent(cluster: Any) -> None:
    async with cluster.client() as client:
        with pytest.raises(NotFound):
            await client.get_json("/api/v1/namespaces/kube-system/secrets/nope")
    async with cluster.client(restricted=True) as client:
        with pytest.raises(PermanentError) as caught:
            await client.get_json("/api/v1/namespaces/kube-system/secrets")
    assert not isinstance(caught.value, NotFound)
    assert "403" in str(caught.value)


async def test_a_bad_kubeconfig_context_is_permanent(cluster: Any) -> None:
    with pytest.raises(PermanentError):
        async with KubeClient.connect(str(cluster.kubeconfig), "no-such-context"):
            pass


async def test_a_missing_kubeconfig_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError):
        async with KubeClient.connect(str(tmp_path / "absent"), None):
            pass
