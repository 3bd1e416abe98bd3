"""The connection handler under any app ApiServer serves: aiohttp's own error answers
(a handler failure that escaped every middleware, a timeout) in the API's JSON shape."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web

from sealfleet.adapters.http_api import ApiServer

LEAKY = "Bearer leaked-0123456789"


async def fails(_request: web.Request) -> web.Response:
    raise RuntimeError(f"boom with {LEAKY}")


async def times_out(_request: web.Request) -> web.Response:
    raise TimeoutError(LEAKY)


async def returns_nothing(_request: web.Request) -> None:
    """The programming error under test: a handler that returns no response."""


def bare_app() -> web.Application:
    """No guard middleware: what reaches aiohttp's handle_error is what this app raises."""
    app = web.Application()
    app.router.add_get("/fails", fails)
    app.router.add_get("/times-out", times_out)
    app.router.add_get("/returns-nothing", returns_nothing)
    return app


async def get(socket_path: Path, path: str) -> tuple[aiohttp.ClientResponse, bytes]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get(f"http://sealfleet{path}") as response:
        return response, await response.read()


@pytest.mark.parametrize(("path", "status", "code", "message", "event", "error"), [
    ("/fails", 500, "internal_error", "internal error", "api_request_failed", "RuntimeError"),
    # aiohttp hands handle_error no exception for a timeout: nothing to name.
    ("/times-out", 504, "timeout", "request handling timed out", "api_request_failed", None),
])
async def test_errors_aiohttp_answers_itself_are_json_and_quote_nothing(
        tmp_path: Path, path: str, status: int, code: str, message: str, event: str,
        error: str) -> None:
    socket_path = tmp_path / "api.sock"
    async with ApiServer(bare_app(), socket_path=socket_path, listen=None):
        with structlog.testing.capture_logs() as events:
            response, body = await get(socket_path, path)
    assert response.status == status
    assert response.content_type == "application/json"
    assert json.loads(body) == {"error": {"code": code, "message": message}}
    assert LEAKY.encode() not in body
    logged = [e for e in events if e["event"] == event]
    assert [(e["status"], e["error"]) for e in logged] == [(status, error)]


async def test_aiohttp_failure_logs_are_structured_events_not_stdlib_records(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A handler returning no response: aiohttp logs that through log_exception."""
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    socket_path = tmp_path / "api.sock"
    async with ApiServer(bare_app(), socket_path=socket_path, listen=None):
        with structlog.testing.capture_logs() as events:
            response, _ = await get(socket_path, "/returns-nothing")
    assert response.status == 500
    assert [e["event"] for e in events] == ["api_http_layer_failed"]
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]
