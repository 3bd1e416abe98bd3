"""The daemon raises its soft limit of open files to the hard one: a fleet of 1,000
clusters holds some 3,000 sockets, and systemd's default soft limit is 1024."""

from __future__ import annotations

import resource
from pathlib import Path

import offline_daemon

LOW = 256


def low_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(LOW, hard), hard))


def open_files_limits(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


def test_the_daemon_raises_its_soft_open_files_limit_to_the_hard_one(tmp_path: Path) -> None:
    config = offline_daemon.prepare(tmp_path, offline_daemon.config_text(("alpha",)))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with offline_daemon.started(config, preexec_fn=low_soft_limit) as daemon:
        daemon.wait_for("READY=1")
        soft_now, hard_now = open_files_limits(daemon.process.pid)
    assert hard_now == (str(hard) if hard != resource.RLIM_INFINITY else "unlimited")
    assert soft_now == hard_now              # from 256 at the start
