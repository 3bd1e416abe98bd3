"""The value types of the config file: durations and listen addresses, bounded and quoted.

Kept apart from the settings tree so that each rule lives once: a duration is digits
with d/h/m/s, never negative, at most 100 years (beyond that a typo, and Python's
timedelta overflows); a user-supplied value inside an error message is quoted with its
newlines escaped, so every config error stays one line.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_DURATION_PART = re.compile(r"(\d+)([dhms])")
_DURATION_DIGITS = 12  # per part: far above the maximum in any unit, far below int()'s limit
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# 100 years: no period, window or timeout of a fleet daemon is longer; anything beyond is
# a typo (an extra digit), and far beyond it Python's timedelta overflows.
MAX_DURATION = dt.timedelta(days=36500)
_TOO_LONG = f"must be at most {MAX_DURATION.days}d (100 years)"


def quoted(value: object) -> str:
    """A user-supplied value inside an error message: quoted, newlines escaped (one line)."""
    return json.dumps(str(value), ensure_ascii=False)


def parse_duration(value: object) -> dt.timedelta:
    """Parse "30d", "720h", "15m", "90s" or a combination such as "1h30m".

    Bounded: never negative, at most :data:`MAX_DURATION` (100 years).
    """
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and value:
        text = value.strip()
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"invalid duration {quoted(value)}: use digits with d, h, m or s "
                             '(e.g. "30d", "720h", "15m", "90s")')
        if any(len(n.lstrip("0")) > _DURATION_DIGITS for n, _ in parts):
            raise ValueError(_TOO_LONG)
        # An int, compared with the maximum before a timedelta (which overflows) is built.
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ValueError('expected a duration string such as "30d", "720h", "15m" or "90s"')
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(_TOO_LONG)
    return dt.timedelta(seconds=seconds)


def _positive(value: dt.timedelta) -> dt.timedelta:
    if value <= dt.timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


Duration = Annotated[dt.timedelta, BeforeValidator(parse_duration)]
"""0s to 100 years; for windows where 0 is meaningful (e.g. "warn only once expired")."""

PositiveDuration = Annotated[dt.timedelta, BeforeValidator(parse_duration),
                             AfterValidator(_positive)]
"""1s to 100 years; for periods, timeouts and delays, where 0 would spin or never wait."""


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8780"`` / ``"[::1]:8780"`` / ``"localhost:8780"`` -> (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"invalid listen address {quoted(value)}: expected host:port")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid port in {quoted(value)}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"invalid IPv6 address in {quoted(value)}") from exc
    return host, port
