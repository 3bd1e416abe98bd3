"""End to end: the reseal's wait for ``Synced`` follows a watch after its first read,
and falls back to polling when the watch cannot be had (a sandbox over HTTPS, the
production kube client, controllers that really unseal and report status)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from e2e.test_reseal import sandbox, settings_of
from polling import eventually
from sandbox_views import SEALED
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.app.jobs.reseal_reads import list_now, object_path
from sealfleet.app.jobs.reseal_synced import SyncWait
from sealfleet.sandbox import Sandbox

__all__ = ["sandbox"]   # the fixture, shared with test_reseal


async def _touch_all(client: KubeClient, objects: dict[str, dict[str, object]]) -> None:
    """A spec change to each object (a template annotation): a new generation for the
    controller to unseal and report Synced for."""
    for ref in objects:
        namespace, _, name = ref.partition("/")
        await client.patch_json(object_path(namespace, name), {"spec": {"template": {
            "metadata": {"annotations": {"test/touched": "yes"}}}}})


@pytest.mark.parametrize("watch_breaks", [False, True])
async def test_synced_is_seen_through_the_watch_or_by_polling_when_it_breaks(
        sandbox: Sandbox, tmp_path: Path, watch_breaks: bool) -> None:
    settings = settings_of(sandbox, master=True)
    cluster = settings.clusters[0]
    async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                  request_timeout=5) as client:
        objects = await list_now(client)
        assert objects
        expected = {ref: int(obj["metadata"]["generation"]) + 1  # type: ignore[index]
                    for ref, obj in objects.items()}
        synced: list[str] = []
        failed: dict[str, str] = {}
        if watch_breaks:
            await sandbox.cluster(cluster.name).api.set_faults(gone_next_watch=True)
        wait = SyncWait(client, expected, on_synced=synced.append,
                        on_failed=failed.__setitem__, timeout=60, gets=0)
        waiting = asyncio.create_task(wait.run())

        async def listed_once() -> bool:
            return wait.reads >= 1

        await eventually(listed_once)
        await _touch_all(client, objects)   # after the first read: only later reads or
        await asyncio.wait_for(waiting, 60)  # the watch can see the new generations
    assert failed == {}
    assert sorted(synced) == sorted(expected)
    store = sandbox.cluster(cluster.name).store
    for ref, generation in expected.items():
        namespace, _, name = ref.partition("/")
        status = store.get(SEALED, namespace, name)["status"]
        assert status["observedGeneration"] == generation
    if watch_breaks:
        assert wait.watched == 0
        assert wait.reads >= 2
    else:
        # Every object settled from its events; the one list was before the writes.
        assert wait.watched >= len(expected)
        assert wait.reads == 1
