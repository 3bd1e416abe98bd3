"""A real `sealfleet run` process whose clusters are unreachable, for tests of its
clients (the CLI over the API socket) and of its own lifecycle (signals, notify).

The clusters point at a port nothing listens on: what such a test checks comes from
the inventory it seeded beforehand, or from the process itself, never from a cluster.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealfleet.adapters.store import generate_kek_file

DEAD_KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: dead
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: not-a-real-token}
contexts:
- name: dead
  context: {cluster: dead, user: u}
current-context: dead
"""


def config_text(clusters: tuple[str, ...] = ("alpha", "beta"), *, fleet: str = "") -> str:
    """A config with a store, the API socket, JSON logs and *clusters* (all unreachable);
    *fleet*: lines for a ``[fleet]`` table."""
    lines = ['[store]', 'database = "inventory.db"', 'kek_file = "kek"',
             '[api]', 'socket = "api.sock"']
    if fleet:
        lines += ['[fleet]', fleet]
    lines += ['[logging]', 'format = "json"']
    for name in clusters:
        lines += ['[[clusters]]', f'name = "{name}"', 'kubeconfig = "kubeconfig"']
    return "\n".join(lines) + "\n"


def prepare(directory: Path, config: str) -> Path:
    """KEK, kubeconfig and *config* in *directory*; the config file's path."""
    generate_kek_file(directory / "kek")
    (directory / "kubeconfig").write_text(DEAD_KUBECONFIG)
    path = directory / "sealfleet.toml"
    path.write_text(config)
    return path


@dataclass
class Daemon:
    config: Path
    process: subprocess.Popen[str]
    notify: socket.socket

    def received(self) -> list[str]:
        """The notify messages' lines that arrived by now (none: empty)."""
        try:
            return self.notify.recv(4096).decode().split("\n")
        except (TimeoutError, BlockingIOError):
            return []

    def wait_for(self, line: str, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.received():
            if self.process.poll() is not None:
                _, stderr = self.process.communicate(timeout=10)
                pytest.fail(f"daemon exited {self.process.returncode}: {stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {line} from the daemon within {timeout}s")


@contextlib.contextmanager
def started(config: Path, *, env: dict[str, str] | None = None,
            blocking_notify: bool = True,
            preexec_fn: Callable[[], object] | None = None) -> Iterator[Daemon]:
    """``sealfleet run -c CONFIG`` with a notify socket beside the config; killed (if
    still running) and reaped at the end.  *preexec_fn* runs in the child before the
    daemon starts (process limits, say)."""
    path = config.parent / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(path))
    if blocking_notify:
        notify.settimeout(0.5)
    else:
        notify.setblocking(False)
    process = subprocess.Popen(
        [sys.executable, "-m", "sealfleet", "run", "-c", str(config)],
        env={**(os.environ if env is None else env), "NOTIFY_SOCKET": str(path)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
    try:
        yield Daemon(config, process, notify)
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
        notify.close()
