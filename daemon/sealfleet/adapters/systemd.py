"""sd_notify without libsystemd: readiness, status, watchdog and reload/stop notices.

systemd's ``Type=notify`` protocol is one datagram of ``KEY=value`` lines sent to the
unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means an abstract socket).
When the variable is unset (not under systemd, or in tests) every call is a no-op, so
the service code can notify unconditionally.  A failed send is reported as ``False``
and never raised: losing a status line must not take the daemon down.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


def _address(raw: str | None) -> str | None:
    if not raw:
        return None
    if raw.startswith("@"):
        return "\0" + raw[1:]          # abstract namespace
    if raw.startswith("/"):
        return raw
    return None                        # vsock: and other transports are not supported


class Notifier:
    """Sends sd_notify messages to the service manager, if there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = self._parse_watchdog(env)

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str]) -> int | None:
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        if pid and pid.isdigit() and int(pid) != os.getpid():
            return None                # the watchdog is meant for another process
        return int(usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of ``WatchdogSec`` (sd_watchdog_enabled
        advice), or None when the watchdog is off."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def notify(self, *lines: str) -> bool:
        """Send one datagram with *lines*; True when delivered (False when disabled)."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            log.warning("sd_notify_failed", error=exc.strerror or type(exc).__name__)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by Type=notify-reload)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}",
                           *([f"STATUS={status}"] if status else []))


def _one_line(text: str) -> str:
    return " ".join(text.split())
