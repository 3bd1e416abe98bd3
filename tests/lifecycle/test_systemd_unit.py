"""The shipped systemd unit: notify protocol settings, credentials, and its exposure rating."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "sealfleet.service"


def settings() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_unit_speaks_the_notify_protocol_and_loads_credentials() -> None:
    unit = settings()
    assert unit["Type"] == ["notify"]
    assert unit["NotifyAccess"] == ["main"]
    assert int(unit["WatchdogSec"][0]) > 0
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert {"StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"} <= set(unit)
    assert {c.split(":")[0] for c in unit["LoadCredential"]} == {"kek", "read-token",
                                                                  "admin-token"}
    assert " run -c /etc/sealfleet/sealfleet.toml" in unit["ExecStart"][0]
    # The daemon's default shutdown budget (20s) must fit inside TimeoutStopSec.
    assert int(unit["TimeoutStopSec"][0]) > 20
    # SIGTERM to the daemon only: it ends its RSA workers by closing their pipes.
    assert unit["KillMode"] == ["mixed"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_exposure_rating_is_at_most_2() -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr[-2000:]
    assert float(match.group(1)) <= 2.0
