"""The API's own thread: which endpoints answer there, which wait for the main loop.

Causal, not timed: the main loop is held still (its thread blocked on a threading.Event
that only the client, running on a thread of its own, sets) and what is answered
meanwhile could only have been answered off the main loop."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from apitesting import ADMIN_TOKEN, READ_TOKEN, Api, RawResponse, get_request

from sealfleet.adapters.http_api import ApiDeps, ApiServer, build_app
from sealfleet.adapters.http_api.http_thread import THREAD_NAME
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.records import JobRecord, JsonObject

MIB = 1 << 20


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def refreshed(api: Api) -> AsyncIterator[None]:
    """The view's refresher running (as in the daemon), its first snapshot built."""
    task = asyncio.create_task(api.view.run_refresher(poll_interval=0.02))
    try:
        await until(lambda: api.view.served() is not None)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def hold_main_loop(release: threading.Event) -> None:
    """Block the calling thread, the main loop's, until *release* is set: nothing on
    that loop runs meanwhile (the bound only keeps a broken test from hanging)."""
    assert release.wait(timeout=30), "the client thread never released the main loop"


def ask(socket_path: Path, target: str) -> socket.socket:
    """A GET of *target* sent over the unix socket (blocking: for the client thread)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(socket_path))
    sock.sendall(get_request(target))
    return sock


def answer(sock: socket.socket) -> RawResponse:
    with sock:
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    return RawResponse.parse(data)


def nothing_answered_yet(sock: socket.socket) -> bool:
    """No byte of an answer has arrived (looked at without waiting, nothing consumed)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)   # with a timeout set, recv would wait for one first
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


@pytest.mark.parametrize("bridged", ["/readyz", "/api/v1/sealed-secrets?limit=2"])
async def test_snapshot_bodies_answer_while_the_main_loop_is_held_other_endpoints_wait(
        api: Api, bridged: str) -> None:
    async with refreshed(api):
        snap = api.view.served()
        assert snap is not None
        release = threading.Event()
        seen: dict[str, Any] = {}

        def client() -> None:
            try:
                # Sent first: the API's thread takes it up before the next one, and
                # would have answered it by then if it ran there.
                waiting = ask(api.socket_path, bridged)
                seen["staleness"] = answer(ask(api.socket_path, "/api/v1/staleness"))
                seen["cluster"] = answer(ask(api.socket_path, "/api/v1/clusters/alpha"))
                seen["healthz"] = answer(ask(api.socket_path, "/healthz"))
                seen["unanswered"] = nothing_answered_yet(waiting)
            finally:
                release.set()
            seen["bridged"] = answer(waiting)

        thread = threading.Thread(target=client, name="test-client")
        thread.start()
        hold_main_loop(release)
        await asyncio.to_thread(thread.join, 30)
        assert not thread.is_alive()
    assert seen["staleness"].status == 200
    assert seen["staleness"].body == snap.staleness_body
    assert seen["cluster"].body == snap.cluster_bodies["alpha"]
    assert seen["healthz"].json() == {"status": "ok"}
    assert seen["unanswered"] is True, "answered while the main loop was held"
    assert seen["bridged"].status == 200, seen["bridged"].body


async def test_without_a_refresher_snapshot_bodies_come_from_the_main_loop(api: Api) -> None:
    """No refresher (tests, one-shot tools): current() rebuilds there, on the main loop."""
    assert api.view.served() is None
    api.bump()   # the snapshot is outdated: only a rebuild can answer
    status, report, _ = await api.get("/api/v1/staleness")
    assert status == 200
    assert api.view.snapshot is not None
    assert api.view.snapshot.changes == api.counter[0]
    assert report == api.view.snapshot.report


@dataclass
class JournalingJobs:
    """The API's JobSubmitter port: journals the job in the store, as the daemon's runner
    does, and notes the thread it was called on; *hold* keeps it from finishing."""

    store: Store
    hold: asyncio.Event | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[tuple[str, JsonObject, str, str]] = field(default_factory=list)

    async def submit(self, kind: str, params: JsonObject, *, actor: str) -> JobRecord:
        self.calls.append((kind, params, actor, threading.current_thread().name))
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        job = await self.store.jobs.get_job(
            await self.store.jobs.create_job(kind, params, [], actor=actor))
        assert job is not None
        return job


@dataclass
class Served:
    server: ApiServer
    socket_path: Path
    jobs: JournalingJobs

    async def post(self, path: str, body: bytes, *, via: str = "unix",
                   token: str | None = None) -> tuple[int, Any]:
        if via == "unix":
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(
                path=str(self.socket_path))
            url = "http://sealfleet" + path
        else:
            connector = aiohttp.TCPConnector()
            url = f"http://127.0.0.1:{self.server.tcp_port}{path}"
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession(connector=connector) as http, \
                http.post(url, data=io.BytesIO(body), headers=headers) as response:
            return response.status, await response.json()


def jobs_server(api: Api, socket_path: Path, jobs: JournalingJobs,
                **kwargs: Any) -> ApiServer:
    """The fixture's store and view served with a job submitter, on another socket."""
    deps = ApiDeps(view=api.view, store=api.store, jobs=jobs,
                   read_token=READ_TOKEN.encode(), admin_token=ADMIN_TOKEN.encode())
    return ApiServer(build_app(deps), socket_path=socket_path, **kwargs)


@pytest.fixture
async def served(api: Api, tmp_path: Path) -> AsyncIterator[Served]:
    jobs = JournalingJobs(api.store)
    async with jobs_server(api, tmp_path / "jobs.sock", jobs,
                           listen=("127.0.0.1", 0)) as server:
        yield Served(server, tmp_path / "jobs.sock", jobs)


async def test_a_posted_body_reaches_the_handler_on_the_main_loop(served: Served) -> None:
    main_thread = threading.current_thread().name
    asked = b'{"cluster": "alpha", "share": true}'
    status, job = await served.post("/api/v1/keys/adopt", asked)
    assert status == 202, job
    assert (job["kind"], job["params"]) == ("adopt", {"cluster": "alpha", "share": True})
    status, job = await served.post("/api/v1/keys/adopt", asked, via="tcp", token=ADMIN_TOKEN)
    assert status == 202, job
    assert job["actor"] == "admin-token"
    assert [(kind, params, thread) for kind, params, _, thread in served.jobs.calls] == [
        ("adopt", {"cluster": "alpha", "share": True}, main_thread)] * 2
    assert main_thread != THREAD_NAME


async def test_bridged_errors_keep_the_one_json_shape(served: Served) -> None:
    for via, token, body, path, expected in [
            ("tcp", None, b"{}", "/api/v1/keys/sync", (401, "unauthorized")),
            ("tcp", READ_TOKEN, b"{}", "/api/v1/keys/sync", (403, "forbidden")),
            ("unix", None, b'{"cluster": 5}', "/api/v1/keys/adopt", (400, "bad_request")),
            ("tcp", ADMIN_TOKEN, b"{not json", "/api/v1/keys/sync", (400, "bad_request")),
            ("unix", None, b"{}", "/api/v1/nothing", (404, "not_found")),
            ("unix", None, b"{}", "/api/v1/keys/abc/retire", (400, "bad_request"))]:
        status, answered = await served.post(path, body, via=via, token=token)
        assert (status, answered["error"]["code"]) == expected, (path, answered)
        assert set(answered) == {"error"}
        assert set(answered["error"]) == {"code", "message"}
    assert served.jobs.calls == []   # every one refused before the job was submitted


@pytest.mark.parametrize("path", ["/api/v1/check", "/api/v1/keys/import", "/api/v1/keys/sync"])
async def test_a_body_over_one_mib_is_a_json_413(served: Served, path: str) -> None:
    status, answered = await served.post(path, b" " * (MIB + 1))
    assert status == 413
    assert answered == {"error": {"code": "too_large",
                                  "message": "the request body is larger than 1 MiB"}}
    status, _ = await served.post(path, b"{}")   # the server is unharmed
    assert status not in (413, 500)


async def test_close_lets_a_bridged_request_finish_and_leaves_no_thread(
        api: Api, tmp_path: Path) -> None:
    hold = asyncio.Event()
    jobs = JournalingJobs(api.store, hold=hold)
    socket_path = tmp_path / "held.sock"
    before = set(threading.enumerate())
    server = jobs_server(api, socket_path, jobs, listen=None, shutdown_timeout=60)
    await server.start()
    try:
        (http_thread,) = [t for t in threading.enumerate()
                          if t.name == THREAD_NAME and t not in before]
        served = Served(server, socket_path, jobs)
        posted = asyncio.create_task(served.post("/api/v1/keys/sync", b"{}"))
        await jobs.entered.wait()   # the handler is running, on the main loop
        with structlog.testing.capture_logs() as events:
            closing = asyncio.create_task(server.close())
            # Logged on the API's thread once its listener is closed: close is under way.
            await until(lambda: any(e["event"] == "api_intake_stopped" for e in events))
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_unix_connection(str(socket_path))
        assert not closing.done()   # ... and waits for the request in flight,
        assert http_thread.is_alive()
        hold.set()                  # which the main loop (not blocked) now finishes
        status, job = await posted
        assert status == 202, job
        assert job["kind"] == "key_sync"
        await closing
    finally:
        hold.set()
        await server.close()
    assert not http_thread.is_alive()
    assert not socket_path.exists()
