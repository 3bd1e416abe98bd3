"""The service lifecycle in-process: READY after the first pass, watchdog from progress,
SIGHUP reload (valid and invalid), SIGTERM staged shutdown.  The fleet is a fake with the
FleetManager's seams; everything else (store, API, sd_notify socket) is real."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sealfleet.adapters.rsa_pool import RsaProcessPool
from sealfleet.adapters.store import Store, generate_kek_file
from sealfleet.adapters.systemd import Notifier
from sealfleet.app.config import Settings, load_settings
from sealfleet.app.keystore import Keystore
from sealfleet.app.service import Service
from sealfleet.domain.attribution import RsaWork
from sealfleet.errors import StoreError

CONFIG = """
[store]
database = "inventory.db"
kek_file = "kek"
[api]
socket = "api.sock"
[service]
shutdown_timeout = "5s"
{clusters}
"""
CLUSTER = '[[clusters]]\nname = "{name}"\nkubeconfig = "kubeconfig"\n'


class FakeFleet:
    """What the service uses of the fleet manager (its ``Fleet`` protocol), driven by the test."""

    def __init__(self, settings: Settings, store: Store, executor: ThreadPoolExecutor,
                 processes: RsaProcessPool) -> None:
        self.settings = settings
        self.keystore = Keystore(store)
        self.checker = None
        self.first_pass_done = asyncio.Event()
        self.progress = 0
        self.changes = 0
        self.applied: list[Settings] = []
        self.beating = True
        self.cancelled = False

    async def run(self) -> None:
        try:
            while True:
                if self.beating:
                    self.progress += 1
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    @property
    def attribution_backlog(self) -> int:
        return 0

    @property
    def rsa_work(self) -> RsaWork:
        return RsaWork()

    async def apply_settings(self, settings: Settings) -> None:
        self.applied.append(settings)


def write_config(directory: Path, clusters: list[str]) -> Path:
    path = directory / "sealfleet.toml"
    path.write_text(CONFIG.format(clusters="".join(CLUSTER.format(name=n) for n in clusters)))
    return path


@dataclass
class Running:
    service: Service
    task: asyncio.Task[None]
    notify: socket.socket
    config: Path
    fleets: list[FakeFleet]

    @property
    def fleet(self) -> FakeFleet:
        return self.fleets[0]

    async def message(self, predicate: Callable[[list[str]], bool],
                      wait: float = 5.0) -> list[str]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(wait):
            while True:
                lines = (await loop.sock_recv(self.notify, 4096)).decode().split("\n")
                if predicate(lines):
                    return lines

    def drain(self) -> None:
        while True:
            try:
                self.notify.recv(4096)
            except BlockingIOError:
                return

    async def get(self, path: str) -> tuple[int, Any]:
        connector = aiohttp.UnixConnector(path=str(self.config.parent / "api.sock"))
        async with aiohttp.ClientSession(connector=connector) as http, \
                http.get("http://sealfleet" + path) as response:
            return response.status, await response.json()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    generate_kek_file(tmp_path / "kek")
    config = write_config(tmp_path, ["alpha"])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setblocking(False)
    fleets: list[FakeFleet] = []

    def factory(settings: Settings, store: Store, executor: ThreadPoolExecutor,
                processes: RsaProcessPool) -> FakeFleet:
        fleets.append(FakeFleet(settings, store, executor, processes))
        return fleets[-1]

    environ = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    service = Service(load_settings(config), fleet_factory=factory,
                      notifier=Notifier(environ), watchdog_stall_limit=0.3)
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(5):
        while not (tmp_path / "api.sock").exists() or not fleets:
            if task.done():
                await task
            await asyncio.sleep(0.01)
    yield Running(service, task, notify, config, fleets)
    if not task.done():
        service.request_stop()
        await asyncio.wait_for(task, 10)
    notify.close()


async def test_ready_only_after_the_first_pass(running: Running) -> None:
    status, body = await running.get("/readyz")
    assert status == 503
    assert body["error"]["code"] == "not_ready"
    assert "first_pass" in body["error"]["message"]
    assert not running.service.ready.is_set()
    running.fleet.first_pass_done.set()
    ready = await running.message(lambda lines: "READY=1" in lines)
    assert any(line.startswith("STATUS=") for line in ready)
    status, body = await running.get("/readyz")
    assert (status, body["ready"]) == (200, True)
    status, report = await running.get("/api/v1/staleness")
    assert status == 200
    assert report["fleet"]["clusters"] == 0  # the fake fleet writes nothing


async def test_watchdog_follows_fleet_progress(running: Running) -> None:
    await running.message(lambda lines: "WATCHDOG=1" in lines)
    running.fleet.beating = False
    await asyncio.sleep(0.6)  # longer than the stall limit: pings must stop
    running.drain()
    with pytest.raises(TimeoutError):
        await running.message(lambda lines: "WATCHDOG=1" in lines, wait=0.5)
    running.fleet.beating = True
    await running.message(lambda lines: "WATCHDOG=1" in lines)


async def test_sighup_reloads_a_valid_config(running: Running) -> None:
    write_config(running.config.parent, ["alpha", "beta"])
    os.kill(os.getpid(), signal.SIGHUP)
    reloading = await running.message(lambda lines: "RELOADING=1" in lines)
    assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
    await running.message(lambda lines: "READY=1" in lines)
    assert [c.name for c in running.fleet.applied[-1].clusters] == ["alpha", "beta"]
    assert [c.name for c in running.service.settings.clusters] == ["alpha", "beta"]


async def test_sighup_with_an_invalid_config_keeps_the_running_one(running: Running) -> None:
    running.config.write_text(running.config.read_text() + "\n[policy]\nbogus = 1\n")
    os.kill(os.getpid(), signal.SIGHUP)
    await running.message(lambda lines: "RELOADING=1" in lines)
    await running.message(lambda lines: "READY=1" in lines)
    assert running.fleet.applied == []
    assert [c.name for c in running.service.settings.clusters] == ["alpha"]
    assert not running.task.done()


async def test_sigterm_stops_in_stages_and_closes_everything(running: Running) -> None:
    running.fleet.first_pass_done.set()
    await running.message(lambda lines: "READY=1" in lines)
    os.kill(os.getpid(), signal.SIGTERM)
    await running.message(lambda lines: "STOPPING=1" in lines)
    await asyncio.wait_for(running.task, 10)
    assert running.task.exception() is None
    assert running.fleet.cancelled
    assert not (running.config.parent / "api.sock").exists()
    # The database was closed cleanly and reopens with every migration applied.
    async with Store.open(running.config.parent / "inventory.db", migrate=False) as store:
        status = await store.migration_status()
    assert status
    assert all(applied for _, applied in status)


async def test_a_crashing_fleet_stops_the_service_with_its_error(tmp_path: Path) -> None:
    generate_kek_file(tmp_path / "kek")
    config = write_config(tmp_path, [])

    class Crashing(FakeFleet):
        async def run(self) -> None:
            await asyncio.sleep(0.05)
            raise RuntimeError("boom")

    service = Service(load_settings(config), install_signal_handlers=False,
                      fleet_factory=lambda s, st, ex, pr: Crashing(s, st, ex, pr),
                      notifier=Notifier({}))
    with pytest.raises(ExceptionGroup) as info:
        await asyncio.wait_for(service.run(), 10)
    assert info.group_contains(RuntimeError, match="boom")
    assert not (tmp_path / "api.sock").exists()


async def test_a_second_daemon_on_the_same_database_refuses_to_start(running: Running) -> None:
    """Another socket, same database: refused before it touches anything."""
    second = running.config.parent / "second.toml"
    second.write_text(running.config.read_text().replace('"api.sock"', '"second.sock"'))
    service = Service(load_settings(second), install_signal_handlers=False,
                      fleet_factory=FakeFleet, notifier=Notifier({}))
    with pytest.raises(StoreError, match=rf"already in use by another sealfleet daemon "
                                         rf"\(pid {os.getpid()} "):
        await asyncio.wait_for(service.run(), 10)
    assert not (running.config.parent / "second.sock").exists()
    assert len(running.fleets) == 1
    status, _ = await running.get("/healthz")
    assert status == 200
