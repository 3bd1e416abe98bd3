"""Running the API: an aiohttp AppRunner with a unix-socket site and/or a TCP site.

Startup and shutdown are explicit phases so the service can stop intake first
(``stop_intake``: no new connections) and close later (``close``: in-flight requests
get ``shutdown_timeout`` to finish).  The unix socket is created mode 0660; a stale
socket left by a crashed daemon is replaced, a live one is an error.  Cleanup removes only
the socket this server bound (same device and inode): a second daemon that found the
first one listening must not delete the first one's socket on its way out.  The socket's
directory is created only when the caller says it is ours (``create_parent``, the
default runtime/state directory); a configured path in a missing directory is an error.

aiohttp runs entirely on the API's own thread (:mod:`.http_thread`): the runner's setup,
the sites, stop_intake and cleanup all execute on that thread's loop, so connections are
accepted, parsed and answered there even while the main loop is busy with the fleet.
The public methods are awaited from the main loop as before; ``start`` records that loop
in the application (``MAIN_LOOP``), where the guard bridges every handler that is not
known to be thread-safe (:mod:`.app`).  ``close`` waits for requests in flight (bridged
ones too: the main loop is free while it awaits the thread), then stops and joins the
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from pathlib import Path
from types import TracebackType

import structlog
from aiohttp import web

from sealfleet.adapters.http_api.http_thread import MAIN_LOOP, HttpThread
from sealfleet.adapters.http_api.protocol import ApiRunner
from sealfleet.errors import PermanentError

log = structlog.get_logger(__name__)

_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux


def short_socket_path(path: Path) -> tuple[str, int | None]:
    """A bindable/connectable spelling of *path*; long paths go through /proc/self/fd."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return str(path), None
    dirfd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{dirfd}/{path.name}", dirfd


def _socket_is_live(path: Path) -> bool:
    spelled, dirfd = short_socket_path(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            probe.connect(spelled)
        return True
    except OSError:
        return False
    finally:
        if dirfd is not None:
            os.close(dirfd)


def bind_unix_socket(path: Path, mode: int = 0o660, *,
                     create_parent: bool = False) -> socket.socket:
    """A listening-ready unix stream socket at *path* with *mode*.

    *create_parent*: make the missing directory (only for a directory that is ours)."""
    if create_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise PermanentError(f"{path}: cannot bind API socket: directory {path.parent} "
                             "does not exist (create it, or choose another [api] socket)")
    try:
        st = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise PermanentError(f"{path}: exists and is not a socket")
        if _socket_is_live(path):
            raise PermanentError(f"{path}: another daemon is already listening")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    spelled, dirfd = short_socket_path(path)
    try:
        sock.bind(spelled)
        os.chmod(path, mode)
    except OSError as exc:
        sock.close()
        raise PermanentError(f"{path}: cannot bind API socket: {exc.strerror}") from exc
    finally:
        if dirfd is not None:
            os.close(dirfd)
    return sock


class ApiServer:
    """Owns the API's thread, the runner and its sites.  Use as an async context manager."""

    def __init__(self, app: web.Application, *, socket_path: Path | None,
                 listen: tuple[str, int] | None, shutdown_timeout: float = 5.0,
                 create_parent: bool = False) -> None:
        self._app = app
        self._socket_path = socket_path
        self._create_parent = create_parent
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we bound
        self._listen = listen
        self._thread = HttpThread()
        # No access log: it would record request lines (and aiohttp's parser errors go
        # through protocol.ApiRequestHandler, which logs no request data at all).
        self._runner = ApiRunner(app, access_log=None, shutdown_timeout=shutdown_timeout,
                                 handle_signals=False)
        self._sites: list[web.BaseSite] = []
        self.addresses: list[str] = []
        self.tcp_port: int | None = None

    async def start(self) -> None:
        self._app[MAIN_LOOP] = asyncio.get_running_loop()
        await self._thread.start()
        await self._thread.run(self._start_sites())
        log.info("api_listening", addresses=self.addresses)

    async def _start_sites(self) -> None:
        """On the API's thread: the runner's setup and the sites' start."""
        await self._runner.setup()
        if self._socket_path is not None:
            sock = bind_unix_socket(self._socket_path, create_parent=self._create_parent)
            # The file's identity, not the socket's (fstat of the fd is a sockfs inode).
            st = self._socket_path.lstat()
            self._bound = (st.st_dev, st.st_ino)
            site: web.BaseSite = web.SockSite(self._runner, sock)
            await site.start()
            self._sites.append(site)
            self.addresses.append(f"unix:{self._socket_path}")
        if self._listen is not None:
            host, port = self._listen
            tcp = web.TCPSite(self._runner, host, port, reuse_address=True)
            try:
                await tcp.start()
            except OSError as exc:
                raise PermanentError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            self._sites.append(tcp)
            # The bound port (when port 0 was asked for): the runner's TCP addresses.
            ports = [a[1] for a in self._runner.addresses if isinstance(a, tuple)]
            self.tcp_port = ports[0] if ports else port
            shown = f"[{host}]" if ":" in host else host
            self.addresses.append(f"http://{shown}:{self.tcp_port or port}/")

    async def stop_intake(self) -> None:
        """Stop accepting new connections; requests in flight continue."""
        if self._thread.running:
            await self._thread.run(self._stop_sites())

    async def _stop_sites(self) -> None:
        if not self._sites:
            return
        for site in self._sites:
            with contextlib.suppress(Exception):
                await site.stop()
        self._sites.clear()
        log.info("api_intake_stopped", addresses=self.addresses)

    async def _cleanup(self) -> None:
        """On the API's thread: no new connections, then requests in flight get
        ``shutdown_timeout`` to finish."""
        await self._stop_sites()
        await self._runner.cleanup()

    async def close(self) -> None:
        if self._thread.running:
            try:
                await self._thread.run(self._cleanup())
            finally:
                await self._thread.stop()
        if self._socket_path is not None and self._bound is not None:
            with contextlib.suppress(FileNotFoundError):
                st = self._socket_path.lstat()
                if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._bound:
                    self._socket_path.unlink()
            self._bound = None

    async def __aenter__(self) -> ApiServer:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
