"""Signals during `sealfleet run`'s start-up: a SIGHUP reloads, a SIGTERM stops cleanly.

The hostile review (issue 11) killed the daemon with a SIGHUP in its first ~0.5 s (exit
129): Python's default action for SIGHUP is to die, and the service installed its
handlers only once its event loop ran, after the imports and config work.  The moment
to send the signal is found without timing: the daemon maps pydantic's compiled core
(``_pydantic_core``) when it imports the config module, which is well inside the window
that used to be fatal, and after which its handlers must already be in place.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import offline_daemon


@dataclass
class Starting:
    process: subprocess.Popen[str]
    notify: socket.socket

    def alive(self) -> bool:
        return self.process.poll() is None

    def maps(self, library: str) -> bool:
        """Whether the process has *library* mapped (it has imported that module)."""
        try:
            return library in Path(f"/proc/{self.process.pid}/maps").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return False

    def wait_until_importing_config(self) -> None:
        deadline = time.monotonic() + 30
        while not self.maps("_pydantic_core"):
            if not self.alive():
                pytest.fail(f"daemon exited {self.process.returncode} before its config: "
                            f"{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail("the daemon never imported its config module")
            time.sleep(0.001)

    def ready(self) -> bool:
        try:
            return "READY=1" in self.notify.recv(4096).decode().split("\n")
        except BlockingIOError:
            return False

    def output(self) -> str:
        out, err = self.process.communicate(timeout=30)
        return out + err

    def events(self, stdout: str) -> list[str]:
        return [json.loads(line)["event"] for line in stdout.splitlines()
                if line.startswith("{")]


@pytest.fixture
def starting(tmp_path: Path) -> Iterator[Starting]:
    config = offline_daemon.prepare(tmp_path, offline_daemon.config_text(("alpha",)))
    env = {k: v for k, v in os.environ.items() if k != "SEALFLEET_DEBUG"}
    with offline_daemon.started(config, env=env, blocking_notify=False) as daemon:
        yield Starting(daemon.process, daemon.notify)


@pytest.mark.slow
def test_sighup_during_start_up_is_a_reload_not_a_death(starting: Starting) -> None:
    starting.wait_until_importing_config()
    starting.process.send_signal(signal.SIGHUP)
    # Keep signalling through every hand-over (early handlers, the service's loop
    # handlers) until the daemon is ready: not one of them may be fatal.
    deadline = time.monotonic() + 60
    while not starting.ready():
        assert starting.alive(), f"killed by SIGHUP: status {starting.process.returncode}"
        assert time.monotonic() < deadline, "no READY=1 from the daemon"
        starting.process.send_signal(signal.SIGHUP)
        time.sleep(0.02)
    assert starting.alive()
    starting.process.send_signal(signal.SIGTERM)
    assert starting.process.wait(timeout=30) == 0
    stdout, stderr = starting.process.communicate(timeout=10)
    events = starting.events(stdout)
    assert "config_reloaded" in events, stderr  # delivered as a reload, not dropped
    assert events[-1] == "service_stopped"


@pytest.mark.slow
def test_sigterm_during_start_up_stops_cleanly(starting: Starting) -> None:
    starting.wait_until_importing_config()
    starting.process.send_signal(signal.SIGTERM)
    assert starting.process.wait(timeout=30) == 0
    stdout, stderr = starting.process.communicate(timeout=10)
    assert stderr == ""
    events = starting.events(stdout)
    assert "shutdown_started" in events
    assert events[-1] == "service_stopped"
