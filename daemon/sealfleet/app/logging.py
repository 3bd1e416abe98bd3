"""Structured logging, configured once at start: JSON lines for journald, console on a TTY.

Every log line passes through :func:`redact` last before rendering, so a value that
should never leave memory (a token, a private key, a Secret's ``data``) cannot reach
the journal even when a caller logs a whole object by mistake, and PEM blocks or bearer
tokens are masked wherever they appear in a string, tracebacks included.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from sealfleet.domain.redaction import REDACTED, mask_text

__all__ = ["REDACTED", "configure_logging", "mask_text", "redact", "redacted_settings"]

# Normalised (lower-case, without "_", "-", ".") key names whose values are always hidden.
_SECRET_KEYS = frozenset({
    "token", "password", "passwd", "privatekey", "tlskey", "data", "stringdata",
    "authorization", "kek", "apikey", "clientkey", "clientkeydata", "plaintext",
    "secretvalue", "privatekeypem", "cookie", "setcookie",
})
_SECRET_SUFFIXES = ("token", "password", "privatekey", "secretkey")

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}


def _normalise(key: str) -> str:
    return re.sub(r"[-_.\s]", "", key.lower())


def is_secret_key(key: str) -> bool:
    """Whether a value stored under *key* must never be logged."""
    norm = _normalise(key)
    return norm in _SECRET_KEYS or norm.endswith(_SECRET_SUFFIXES)


def redact_value(value: Any) -> Any:
    """Redact recursively: secret keys inside mappings, masked text inside strings."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bytes):
        return mask_text(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and is_secret_key(k) else redact_value(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v) for v in value]
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: hide secret-named keys and mask PEM/bearer text everywhere."""
    for key in list(event_dict):
        value = event_dict[key]
        if is_secret_key(key):
            event_dict[key] = REDACTED
        elif isinstance(value, str | bytes | Mapping | list | tuple | set | frozenset):
            event_dict[key] = redact_value(value)
    return event_dict


def _under_systemd(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("INVOCATION_ID") or environ.get("JOURNAL_STREAM"))


def choose_format(fmt: Literal["auto", "json", "console"], stream: TextIO,
                  environ: Mapping[str, str] | None = None) -> Literal["json", "console"]:
    if fmt != "auto":
        return fmt
    environ = os.environ if environ is None else environ
    isatty = getattr(stream, "isatty", lambda: False)()
    return "console" if isatty and not _under_systemd(environ) else "json"


def shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def configure_logging(*, level: str = "info",
                      fmt: Literal["auto", "json", "console"] = "auto",
                      stream: TextIO | None = None) -> Literal["json", "console"]:
    """Configure structlog for the process; returns the renderer chosen."""
    out = sys.stdout if stream is None else stream
    chosen = choose_format(fmt, out)
    processors = shared_processors()
    if chosen == "json":
        processors += [
            # Structured tracebacks, without frame locals: locals may hold secrets.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            redact,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors += [
            structlog.processors.format_exc_info,
            redact,
            structlog.dev.ConsoleRenderer(colors=getattr(out, "isatty", lambda: False)()),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    return chosen


def redacted_settings(settings: MutableMapping[str, Any] | Mapping[str, Any]) -> dict[str, Any]:
    """A settings dump safe to log (paths are fine; values of secret-named keys are not)."""
    result = redact_value(settings)
    return dict(result) if isinstance(result, dict) else {}
