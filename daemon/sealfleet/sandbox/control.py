"""The sandbox's own control socket: the whole fleet's faults and counters, from outside.

Each emulated apiserver takes faults at ``/_sandbox/faults``, but a fleet-wide outage
closes every one of those listeners, and a benchmark that runs ``sealfleet sandbox`` in
another process still needs to end the outage and read what the sandbox saw.  So the
sandbox listens on a unix socket, mode 0600 (whoever may read the state directory's
tokens may use it), whose path ``DIR/control`` holds: ``DIR/control.sock``, or one in a
private temporary directory when that path is too long for a socket.  It serves:

- ``GET /connections``: connections accepted by every apiserver, TLS handshakes in flight
  and their peak (``POST /connections/reset-peak`` starts a new peak);
- ``GET /requests``: requests received by every apiserver, by verb and resource
  (``"list sealedsecrets": 20``);
- ``POST /faults``: a JSON object of fault settings (as ``/_sandbox/faults`` takes them)
  applied to every cluster at once, or to ``?cluster=NAME`` only;
- ``GET /stats``: clusters, start and seed seconds, the process's RSS and peak RSS (MB).

:class:`ControlClient` is the synchronous client the benchmarks use.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from sealfleet.sandbox.apiserver.listener import ConnectionGauge
from sealfleet.sandbox.objects import ApiError


class Fleet(Protocol):
    """What the control socket needs of a sandbox (``runner.Sandbox``)."""

    connections: ConnectionGauge

    def requests(self) -> Counter[tuple[str, str]]: ...
    async def set_faults(self, changes: Mapping[str, Any], *,
                         clusters: list[str] | None = None) -> None: ...
    def stats(self) -> dict[str, Any]: ...


def process_memory_mb() -> tuple[float, float]:
    """This process's resident memory and its peak, in MB (0 where /proc is absent)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
    except OSError:
        return 0.0, 0.0

    def mb(name: str) -> float:
        return int(fields.get(name, "0 kB").split()[0]) / 1024

    return mb("VmRSS"), mb("VmHWM")


CONTROL_FILE = "control"        # in the state directory: the socket's path
_MAX_SOCKET_PATH = 100          # bytes; Linux allows 107 (sun_path is 108 with the NUL)


class ControlServer:
    """``async with ControlServer(sandbox, state_dir)``: serve the control socket meanwhile."""

    def __init__(self, fleet: Fleet, state_dir: Path) -> None:
        self._fleet = fleet
        self._state_dir = state_dir
        self._private_dir: str | None = None
        self.path = state_dir / "control.sock"
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> ControlServer:
        if len(os.fsencode(self.path)) > _MAX_SOCKET_PATH:
            self._private_dir = tempfile.mkdtemp(prefix="sealfleet-sandbox-")  # mode 0700
            self.path = Path(self._private_dir) / "control.sock"
        app = web.Application()
        app.router.add_get("/connections", self._connections)
        app.router.add_post("/connections/reset-peak", self._reset_peak)
        app.router.add_get("/requests", self._requests)
        app.router.add_post("/faults", self._faults)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        self.path.unlink(missing_ok=True)
        site = web.UnixSite(self._runner, str(self.path))
        await site.start()
        os.chmod(self.path, 0o600)
        (self._state_dir / CONTROL_FILE).write_text(f"{self.path}\n")
        return self

    async def __aexit__(self, *exc: object) -> None:
        (self._state_dir / CONTROL_FILE).unlink(missing_ok=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.path.unlink(missing_ok=True)
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    async def _connections(self, _: web.Request) -> web.Response:
        return web.json_response(self._fleet.connections.to_json())

    async def _reset_peak(self, _: web.Request) -> web.Response:
        self._fleet.connections.reset_peak()
        return web.json_response(self._fleet.connections.to_json())

    async def _requests(self, _: web.Request) -> web.Response:
        counts = self._fleet.requests()
        return web.json_response({f"{verb} {resource}": count
                                  for (verb, resource), count in sorted(counts.items())})

    async def _faults(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        cluster = request.query.get("cluster")
        try:
            await self._fleet.set_faults(changes, clusters=[cluster] if cluster else None)
        except ApiError as exc:
            return web.json_response({"error": exc.message}, status=400)
        except KeyError:
            return web.json_response({"error": "no such cluster"}, status=404)
        return web.json_response({"clusters": 1 if cluster else "all"})

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self._fleet.stats())


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self._path))
        self.sock = sock


class ControlClient:
    """Blocking calls to a sandbox's control socket (for benchmarks and tests)."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        self.path = path
        self._timeout = timeout

    @classmethod
    def for_state_dir(cls, state_dir: Path, *, timeout: float = 60.0) -> ControlClient:
        """The control socket of the sandbox serving *state_dir* (``DIR/control``)."""
        return cls(Path((state_dir / CONTROL_FILE).read_text().strip()), timeout=timeout)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        connection = _UnixConnection(self.path, self._timeout)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=payload,
                               headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            data = json.loads(response.read() or b"null")
        finally:
            connection.close()
        if response.status >= 400:
            raise RuntimeError(f"sandbox control {method} {path}: HTTP {response.status}: "
                               f"{data}")
        return data

    def connections(self) -> dict[str, int]:
        result: dict[str, int] = self.call("GET", "/connections")
        return result

    def reset_peak(self) -> dict[str, int]:
        result: dict[str, int] = self.call("POST", "/connections/reset-peak")
        return result

    def requests(self) -> dict[str, int]:
        result: dict[str, int] = self.call("GET", "/requests")
        return result

    def set_faults(self, cluster: str | None = None, **changes: Any) -> None:
        self.call("POST", "/faults" + (f"?cluster={cluster}" if cluster else ""), changes)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("GET", "/stats")
        return result

