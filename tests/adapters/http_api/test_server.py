"""Running the API: socket handling, and the snapshot refresher."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from apitesting import Api

from sealfleet.adapters.http_api import ApiServer
from sealfleet.adapters.http_api.client import ApiClient
from sealfleet.adapters.http_api.server import bind_unix_socket
from sealfleet.domain.staleness import StalenessPolicy
from sealfleet.errors import FleetError, PermanentError


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="hi")


def hello_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def get_via(path: Path) -> str:
    connector = aiohttp.UnixConnector(path=str(path))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get("http://x/") as response:
        return await response.text()


async def test_a_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()  # a crashed daemon's socket: the file stays, nobody listens
    async with ApiServer(hello_app(), socket_path=path, listen=None):
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        assert await get_via(path) == "hi"
    assert not path.exists()


async def test_a_live_socket_is_not_stolen(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    async with ApiServer(hello_app(), socket_path=path, listen=None):
        with pytest.raises(PermanentError, match="another daemon is already listening"):
            bind_unix_socket(path)
        assert await get_via(path) == "hi"


async def test_a_second_server_on_a_live_socket_fails_and_leaves_it_alone(
        tmp_path: Path) -> None:
    """A second `sealfleet run` on the same config must not delete the first's socket."""
    path = tmp_path / "api.sock"
    async with ApiServer(hello_app(), socket_path=path, listen=None):
        before = path.lstat()
        with pytest.raises(PermanentError, match="another daemon is already listening"):
            async with ApiServer(hello_app(), socket_path=path, listen=None):
                pass
        after = path.lstat()
        assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
        assert await get_via(path) == "hi"
    assert not path.exists()  # the first server removes what it bound


async def test_close_leaves_a_socket_that_replaced_ours(tmp_path: Path) -> None:
    """Someone else's socket now at our path (ours was removed and rebound) is not ours."""
    path = tmp_path / "api.sock"
    async with ApiServer(hello_app(), socket_path=path, listen=None):
        path.unlink()
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(path))
    try:
        assert stat.S_ISSOCK(path.lstat().st_mode)
    finally:
        other.close()


async def test_a_configured_socket_in_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nonexistent" / "dir" / "api.sock"
    with pytest.raises(PermanentError) as raised:
        async with ApiServer(hello_app(), socket_path=path, listen=None):
            pass
    assert str(raised.value) == (f"{path}: cannot bind API socket: directory {path.parent} "
                                 "does not exist (create it, or choose another [api] socket)")
    assert not (tmp_path / "nonexistent").exists()


async def test_the_default_socket_directory_is_created_when_it_is_ours(tmp_path: Path) -> None:
    path = tmp_path / "sealfleet-state" / "api.sock"
    async with ApiServer(hello_app(), socket_path=path, listen=None, create_parent=True):
        assert await get_via(path) == "hi"


async def test_a_regular_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    path.write_text("not a socket")
    with pytest.raises(PermanentError, match="not a socket"):
        bind_unix_socket(path)
    assert path.read_text() == "not a socket"


async def test_socket_paths_longer_than_sun_path_still_bind(tmp_path: Path) -> None:
    directory = tmp_path / ("d" * 60) / ("e" * 60)
    path = directory / "api.sock"
    assert len(str(path)) > 108
    async with ApiServer(hello_app(), socket_path=path, listen=None, create_parent=True):
        assert stat.S_ISSOCK(path.stat().st_mode)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with pytest.raises(OSError, match="too long"):
            probe.connect(str(path))  # why the /proc/self/fd spelling is needed
        probe.close()
        with pytest.raises(FleetError, match="HTTP 404"):  # reached hello_app: no such path
            await ApiClient(socket_path=path).get_json("/nothing")


async def test_refresher_rebuilds_when_the_inventory_changes(api: Api) -> None:
    first = await api.view.rebuild()
    task = asyncio.create_task(api.view.run_refresher(poll_interval=0.02))
    try:
        api.bump()
        await until(lambda: getattr(api.view.snapshot, "changes", None) == api.counter[0])
        assert api.view.snapshot is not first
        # A reloaded policy forces a rebuild even though the inventory did not change.
        await api.store.keys.set_fleet_master([])
        api.view.set_policy(StalenessPolicy(dt.timedelta(days=365), dt.timedelta(days=1)))
        await until(lambda: not (api.view.snapshot or first).report["policy"]["master_keys"])
        report = api.view.snapshot.report  # type: ignore[union-attr]
        assert report["policy"]["key_renew_period_seconds"] == 365 * 86400
        beta = next(c for c in report["clusters"] if c["name"] == "beta")
        assert beta["sealing_key"]["stale"] is False  # 90 days < 365 days
        assert beta["drift"] is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
