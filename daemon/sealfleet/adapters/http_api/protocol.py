"""aiohttp's HTTP layer under the API: its own answers in the API's error shape, its logs ours.

Some requests never reach the application: a header line over ``max_field_size``, a
malformed request line, a bad ``Content-Length``.  aiohttp's parser raises, and its
``RequestHandler.handle_error`` answers ``text/plain`` with the exception's message and
logs the full traceback through the stdlib ``aiohttp.server`` logger.  That message
quotes the bytes the client sent (``Got more than 16384 bytes when reading: b'Bearer
<token>...'``), so the token ended on stderr and back in the response.  No middleware or
signal sees these requests (aiohttp has no public hook for them: aio-libs/aiohttp#3287),
so the connection handler itself is replaced: :class:`ApiRunner` makes a
:class:`JsonErrorServer`, whose connections are :class:`ApiRequestHandler`.

What a client sent is never logged or echoed: the answer and the log event carry the
status, the exception's class and a fixed reason chosen by that class.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import http_exceptions, web, web_protocol

from sealfleet.adapters.http_api.guard import STATUS_CODES, error_response

log = structlog.get_logger(__name__)

# Most specific first: the first class the exception is an instance of gives the reason.
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (http_exceptions.LineTooLong, "request line or header field too long"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.InvalidURLError, "malformed request target"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.PayloadEncodingError, "malformed request body framing"),
)


def safe_reason(status: int, exc: BaseException | None) -> str:
    """A fixed one-line reason for *exc*: never the exception's text, which quotes input."""
    if status == 504:  # aiohttp's answer to a handler's TimeoutError (it passes no exc)
        return "request handling timed out"
    if status >= 500:
        return "internal error"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    return "malformed HTTP request"


class ApiRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler with the API's error answers and structured logs."""

    __slots__ = ()

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # *message* is the parser's text (it quotes the input): deliberately unused.
        del message
        reason = safe_reason(status, exc)
        error = type(exc).__name__ if exc is not None else None
        if status >= 500:
            log.error("api_request_failed", status=status, error=error, remote=request.remote,
                      exc_info=exc)
        else:
            log.info("api_request_rejected", status=status, error=error, reason=reason,
                     remote=request.remote)
        if request.writer.output_size > 0:
            # As aiohttp does: part of a response is out, so no error answer can follow.
            raise ConnectionError("response already started; cannot send an error answer")
        code = STATUS_CODES.get(status, "internal_error" if status >= 500 else "bad_request")
        response = error_response(status, code, reason)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's other failure logs (a handler returning no response, a broken
        connection loop): one structured event instead of the stdlib ``aiohttp.server``
        logger; aiohttp's message (it may format a repr) is left out."""
        del args
        exc = kw.get("exc_info")
        exc = exc if isinstance(exc, BaseException) else None
        log.error("api_http_layer_failed", error=type(exc).__name__ if exc else None,
                  exc_info=exc)


class JsonErrorServer(web.Server):
    """aiohttp's low-level server, handing each connection to :class:`ApiRequestHandler`."""

    def __init__(self, stock: web.Server) -> None:
        # Everything the stock server was built with (the app's handler, request factory
        # and handler_args), so only the connection handler's class differs.
        super().__init__(stock.request_handler, request_factory=stock.request_factory,
                         handler_cancellation=stock.handler_cancellation,
                         loop=asyncio.get_running_loop(), **stock._kwargs)

    def __call__(self) -> web_protocol.RequestHandler:
        return ApiRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner (app startup, cleanup, shutdown as usual) serving :class:`JsonErrorServer`."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        return JsonErrorServer(await super()._make_server())
