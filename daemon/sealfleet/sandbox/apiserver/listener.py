"""The emulated apiserver's listening socket and every connection accepted through it.

Why not aiohttp's ``TCPSite``: an outage must refuse new connections *and* drop every
open one, and recovery must listen again on the same port.  ``TCPSite.stop()`` closes an
``asyncio.Server``; on Python 3.11 a connection the loop has already accepted but not yet
wrapped in a transport then fails ``Server._attach`` and its socket is left open, found
only by the garbage collector ("unclosed transport" ResourceWarning).  A connection still
in its TLS handshake is not known to aiohttp either, so it could not be dropped.

So the listener accepts by itself (a reader callback on a non-blocking socket: accepting
and tracking are one synchronous step) and hands each socket to
``loop.connect_accepted_socket``, which needs no Server.  Every accepted socket is tracked
from accept to close; ``close`` stops accepting, cancels handshakes, aborts established
connections and waits until each socket is closed and its aiohttp handler has finished.

A :class:`ConnectionGauge` (one per listener, or shared by a sandbox's listeners) counts
what a client fleet's pacing looks like from here: connections accepted, and TLS
handshakes under way, with their peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl

import structlog
from aiohttp import web

_log = structlog.get_logger(__name__)

_BACKLOG = 128
_CLOSE_TIMEOUT = 5.0


@dataclasses.dataclass
class ConnectionGauge:
    """Connections accepted, and TLS handshakes in flight (accepted, not yet done)."""

    accepted: int = 0
    handshaking: int = 0
    peak_handshaking: int = 0   # since the start or the last reset_peak()

    def reset_peak(self) -> None:
        self.peak_handshaking = self.handshaking

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def _started(self) -> None:
        self.accepted += 1
        self.handshaking += 1
        self.peak_handshaking = max(self.peak_handshaking, self.handshaking)


class Listener:
    """TLS connections for one aiohttp ``web.Server`` on a fixed ``host:port``."""

    def __init__(self, server: web.Server, ssl_context: ssl.SSLContext, host: str,
                 gauge: ConnectionGauge | None = None) -> None:
        self._server = server
        self._ssl = ssl_context
        self._host = host
        self.gauge = gauge if gauge is not None else ConnectionGauge()
        self._sock: socket.socket | None = None
        self._handshakes: dict[socket.socket, asyncio.Task[None]] = {}
        self._established: dict[socket.socket, tuple[asyncio.Transport, object]] = {}

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def open(self, port: int) -> int:
        """Listen on ``port`` (0: any free one) and return the port bound."""
        assert self._sock is None, "already listening"
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Recovery re-binds the port an outage released, maybe with peers in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, port))
            sock.listen(_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept_ready)
        self._sock = sock
        return int(sock.getsockname()[1])

    async def close(self, keep: asyncio.BaseTransport | None = None) -> None:
        """Refuse new connections and drop every open one except ``keep``'s; wait for it.

        ``keep`` is the connection carrying the request that asked for the outage: it gets
        its response and is closed by aiohttp afterwards (the response forces a close).
        """
        self._stop_accepting()
        handshakes = dict(self._handshakes)
        for task in handshakes.values():
            task.cancel()  # connect_accepted_socket closes the half-made transport
        await asyncio.gather(*handshakes.values(), return_exceptions=True)
        for conn in handshakes:
            # A task cancelled before its first step never ran its body (not even its
            # ``finally``): nothing else closes that socket or forgets it.  Closing one
            # that its transport already closed is a no-op.
            self._handshake_over(conn)
            if conn not in self._established:
                conn.close()
        for transport, _ in self._established.values():
            if transport is not keep:
                transport.abort()
        await self._wait_closed(keep)

    # ------------------------------------------------------------------ internals

    def _stop_accepting(self) -> None:
        if self._sock is None:
            return
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._sock.close()  # queued, not yet accepted connections are refused (RST)
        self._sock = None

    def _accept_ready(self) -> None:
        assert self._sock is not None
        for _ in range(_BACKLOG):
            try:
                conn, _peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: this client is refused, the rest go on
                _log.warning("sandbox_apiserver_accept_failed", error=str(exc))
                return
            conn.setblocking(False)
            self._handshakes[conn] = asyncio.get_running_loop().create_task(
                self._handshake(conn)
            )
            self.gauge._started()

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.connect_accepted_socket(
                self._server, conn, ssl=self._ssl
            )
        except (OSError, ssl.SSLError):  # the client gave up mid-handshake
            conn.close()
        else:
            self._established[conn] = (transport, protocol)
        finally:
            self._handshake_over(conn)
        self._forget_closed()

    def _handshake_over(self, conn: socket.socket) -> None:
        if self._handshakes.pop(conn, None) is not None:
            self.gauge.handshaking -= 1

    def _forget_closed(self) -> None:
        """Drop entries whose socket is closed and whose aiohttp handler has finished."""
        handlers = set(self._server.connections)
        for conn, (_, protocol) in list(self._established.items()):
            if conn.fileno() == -1 and protocol not in handlers:
                del self._established[conn]

    def _open_connections(self, keep: asyncio.BaseTransport | None) -> int:
        self._forget_closed()
        return sum(1 for transport, _ in self._established.values() if transport is not keep)

    async def _wait_closed(self, keep: asyncio.BaseTransport | None) -> None:
        # An aborted socket closes one loop iteration later; its aiohttp handler task
        # (cancelled on connection loss, e.g. a watch stream) finishes soon after.
        # Neither has a public notification under TLS, so this yields to the loop until
        # both have happened: a few iterations, bounded, never a sleep for a guessed time.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                while self._open_connections(keep):  # noqa: ASYNC110 (no event exists)
                    await asyncio.sleep(0)
                return
        _log.warning("sandbox_apiserver_connections_not_closed",
                     count=self._open_connections(keep))
