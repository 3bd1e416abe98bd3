"""A small client of the daemon's API, for the CLI (``status``, ``staleness``, ``jobs``,
the key commands, ``check``).

It prefers the unix socket (no token needed) and falls back to the TCP listener with
the read token (the admin token for mutations).  A refusal (409) is a
:class:`RefusedError`, so the CLI exits 2 for it.  Connection problems become
one-line :class:`TransientError` messages that say where it looked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import yarl

from sealfleet.adapters.http_api.server import short_socket_path
from sealfleet.errors import FleetError, RefusedError, TransientError


class ApiClient:
    def __init__(self, *, socket_path: Path | None = None, base_url: str | None = None,
                 token: str | None = None, timeout: float = 10.0) -> None:
        if socket_path is None and base_url is None:
            raise FleetError("the config enables neither api.socket nor api.listen")
        self._socket_path = socket_path
        self._base_url = base_url
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    @property
    def where(self) -> str:
        return f"unix:{self._socket_path}" if self._use_socket() else str(self._base_url)

    def _use_socket(self) -> bool:
        return self._socket_path is not None and (self._base_url is None
                                                  or self._socket_path.exists())

    async def get_json(self, path: str) -> Any:
        return await self.request_json("GET", path)

    async def get_text(self, path: str) -> str:
        """A non-JSON document (a PEM certificate); errors still come as JSON."""
        return str(await self.request_json("GET", path, text=True))

    async def post_json(self, path: str, document: Any) -> Any:
        """POST *document* as JSON (``check``: the read token is enough for it on TCP)."""
        return await self.request_json("POST", path, document)

    async def post_bytes(self, path: str, data: bytes, *,
                         headers: dict[str, str] | None = None) -> bytes:
        """POST raw bytes and return the raw answer, on the unix socket only (the key
        import and export endpoints: their bodies are private keys)."""
        if self._socket_path is None or not self._socket_path.exists():
            raise TransientError(f"no daemon socket at {self._socket_path}: key imports and "
                                 "exports go through the daemon's socket only")
        status, answer = await self._exchange("POST", path, socket=True, data=data,
                                              headers=headers or {})
        if status >= 400:
            try:
                document = json.loads(answer)
            except ValueError:
                document = {}
            self._raise_for(path, status, document)
        return answer

    async def _exchange(self, method: str, path: str, *, socket: bool,
                        headers: dict[str, str], **body: Any) -> tuple[int, bytes]:
        """One request: on the unix socket (always when *socket*), else over TCP with
        the token; the status and the raw answer."""
        dirfd = None
        if socket or (self._use_socket() and self._socket_path is not None):
            assert self._socket_path is not None
            # Paths longer than sun_path are reached through /proc/self/fd/<dir fd>/name.
            try:
                spelled, dirfd = short_socket_path(self._socket_path)
            except OSError as exc:
                raise TransientError(f"cannot reach the sealfleet daemon at {self.where} "
                                     f"({exc.strerror}); is it running?") from exc
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=spelled)
            url = "http://sealfleet" + path
        else:
            connector = aiohttp.TCPConnector()
            url = str(self._base_url).rstrip("/") + path
            if self._token:
                headers = {**headers, "Authorization": f"Bearer {self._token}"}
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=self._timeout) as http, \
                    http.request(method, yarl.URL(url, encoded=True), headers=headers,
                                 **body) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientError(f"cannot reach the sealfleet daemon at {self.where} "
                                 f"({type(exc).__name__}); is it running?") from exc
        finally:
            if dirfd is not None:
                os.close(dirfd)

    def _raise_for(self, path: str, status: int, document: Any) -> None:
        """A refusal (409) or another error answer as the exception the CLI maps."""
        error = document.get("error", {}) if isinstance(document, dict) else {}
        if status == 409:
            raise RefusedError(f"refused: {error.get('message', '')}")
        if status >= 400:
            raise FleetError(f"{self.where}{path}: HTTP {status} "
                             f"{error.get('code', '')}: {error.get('message', '')}")

    async def request_json(self, method: str, path: str, body: Any = None, *,
                           text: bool = False) -> Any:
        status, answer = await self._exchange(method, path, socket=False, headers={},
                                              json=body)
        if text and status < 400:
            return answer.decode("ascii", errors="replace")
        try:
            document = json.loads(answer)
        except ValueError:
            raise FleetError(f"{self.where}{path}: answered HTTP {status} "
                             "without JSON") from None
        self._raise_for(path, status, document)
        return document
