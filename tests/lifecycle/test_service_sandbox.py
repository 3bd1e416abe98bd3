"""The real service (FleetManager, store, API) against a sandbox fleet: SIGTERM in the
middle of the first scan stops cleanly within the budget, and the next start resumes
and reports exactly what the sandbox was seeded with."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sealfleet.adapters.systemd import Notifier
from sealfleet.app.config import load_settings
from sealfleet.app.service import Service
from sealfleet.sandbox import Sandbox, SeedSpec


async def staleness(socket_path: Path) -> dict[str, Any]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get("http://sealfleet/api/v1/staleness") as response:
        assert response.status == 200
        report: dict[str, Any] = await response.json()
        return report


@pytest.mark.slow
async def test_sigterm_mid_scan_then_resume(tmp_path: Path) -> None:
    seed = SeedSpec(namespaces=2, sealed_secrets=400, keys=2, key_bits=2048, seed=7)
    async with Sandbox(tmp_path, clusters=2, seed=seed) as sandbox:
        settings = load_settings(sandbox.config)

        first = Service(settings, notifier=Notifier({}))
        task = asyncio.create_task(first.run())
        async with asyncio.timeout(20):
            while first.fleet is None or first.fleet.progress < 2:  # noqa: ASYNC110 - a counter, no event
                await asyncio.sleep(0.01)
        assert not first.fleet.first_pass_done.is_set(), "scan finished before SIGTERM"
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 30)
        assert time.monotonic() - started < settings.service.shutdown_timeout.total_seconds()
        assert not settings.api.socket.exists()  # type: ignore[union-attr]

        second = Service(settings, notifier=Notifier({}))
        task = asyncio.create_task(second.run())
        try:
            await asyncio.wait_for(second.ready.wait(), 60)
            report = await staleness(settings.api.socket)  # type: ignore[arg-type]
        finally:
            second.request_stop()
            await asyncio.wait_for(task, 30)

    truth = json.loads((tmp_path / "seed.json").read_text())
    for cluster in report["clusters"]:
        sealing = truth["clusters"][cluster["name"]]["sealing_key"]
        mine = [s for s in truth["sealed_secrets"] if s["cluster"] == cluster["name"]]
        stale = [s for s in mine if any(i["key"] != sealing for i in s["items"])]
        assert cluster["reachable"] is True
        assert cluster["sealing_key"]["fingerprint"] == sealing
        assert cluster["sealed_secrets"]["total"] == len(mine)
        assert cluster["sealed_secrets"]["stale"] == len(stale)
        assert cluster["sealed_secrets"]["current"] == len(mine) - len(stale)
