"""kill -9 of the daemon in the middle of a renewal: the next start finishes the job, with
exactly one new key, the same one served by every cluster.

The real ``sealfleet run`` and the real CLI, against ``sealfleet sandbox`` in another
process; the kill is timed by what the job document says (a step running), plus random
points.  Nothing in the daemon knows it is being tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealfleet.adapters.http_api.client import ApiClient
from sealfleet.adapters.kube import controller, fleet_keys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.app import config
from sealfleet.domain import key_secrets
from sealfleet.domain.keys import load_certificate
from sealfleet.sandbox.runner import SandboxProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def sealfleet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sealfleet", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("crash") / "sandbox"
    with SandboxProcess(directory, ["--clusters", "2", "--sealed-secrets", "2", "--keys", "1",
                                    "--key-bits", "2048", "--controller-startup-delay", "0.3"]):
        config_file = directory / "sealfleet.toml"
        text = config_file.read_text().replace(
            "[fleet]\nmaster_keys = []", "[fleet]\nmaster = true\nkey_bits = 2048")
        config_file.write_text(text + '\n[service]\nshutdown_timeout = "5s"\n')
        yield config_file


class Daemon:
    def __init__(self, config_file: Path) -> None:
        self.config = config_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.config.parent / "daemon.log").open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "sealfleet", "run", "-c",
                                             str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while sealfleet("jobs", "list", "-c", str(self.config)).returncode != 0:
            assert self.process.poll() is None, "the daemon exited"
            assert time.monotonic() < deadline, "the daemon did not answer"
            time.sleep(0.2)

    def kill9(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)


def job(settings: config.Settings, job_id: str) -> dict[str, Any]:
    """The job document over the daemon's socket (quicker than a CLI process: the kill
    must land while a step is running)."""
    assert settings.api.socket is not None
    client = ApiClient(socket_path=settings.api.socket)
    document: dict[str, Any] = asyncio.run(client.get_json(f"/api/v1/jobs/{job_id}"))
    return document


async def cluster_view(settings: config.Settings) -> dict[str, tuple[str, set[str]]]:
    """Per cluster: the served fingerprint, and the keys its key Secrets hold (each of
    which must parse: no half-written Secret)."""
    seen = {}
    for cluster in settings.clusters:
        async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                      request_timeout=5) as client:
            proxy = await controller.proxy_name(client, cluster.controller_namespace,
                                                cluster.controller_name)
            served = await controller.fetch_certificate(client, cluster.controller_namespace,
                                                        proxy)
            secrets = await fleet_keys.read_key_secrets(client, cluster.controller_namespace)
        held = {key_secrets.read_key_secret(s).fingerprint for s in secrets}
        seen[cluster.name] = (served.fingerprint, held)
    return seen


def test_a_renewal_killed_at_any_point_finishes_with_one_new_key_everywhere(
        sandbox: Path) -> None:
    settings = config.load_settings(sandbox)
    daemon = Daemon(sandbox)
    daemon.start()
    try:
        first = sealfleet("keys", "sync", "--wait", "-o", "json", "-c", str(sandbox))
        assert first.returncode == 0, first.stderr + first.stdout
        masters = [json.loads(first.stdout)["params"]["new_key"]]
        rng = random.Random(7)
        # Killed once a given step runs (the master step, each cluster step), then at
        # random moments after the renewal was asked for.
        kill_points: list[str | float] = ["master", "cluster:sandbox-1", rng.uniform(0.0, 2.0)]
        for point in kill_points:
            asked = sealfleet("keys", "renew", "-o", "json", "-c", str(sandbox))
            assert asked.returncode == 0, asked.stderr
            job_id = json.loads(asked.stdout)["id"]
            if isinstance(point, float):
                time.sleep(point)
            else:
                deadline = time.monotonic() + 60
                while not any(s["ref"].startswith(point) and s["state"] in ("running", "done")
                              for s in job(settings, job_id)["steps"]):
                    assert time.monotonic() < deadline, f"step {point} never ran"
                    time.sleep(0.05)
            daemon.kill9()
            daemon.start()
            waited = sealfleet("jobs", "wait", job_id, "-o", "json", "-c", str(sandbox))
            assert waited.returncode == 0, waited.stdout + waited.stderr
            finished = json.loads(waited.stdout)
            new_key = finished["params"]["new_key"]
            assert new_key not in masters
            masters.append(new_key)
            view = asyncio.run(cluster_view(settings))
            for name, (served, held) in view.items():
                assert served == new_key, (point, name)
                assert set(masters) <= held, (point, name)
        listed = json.loads(sealfleet("jobs", "list", "-o", "json", "-c", str(sandbox)).stdout)
        renewals = [j for j in listed["jobs"] if j["kind"] == "renewal"]
        assert len(renewals) == len(kill_points)
        assert {j["state"] for j in renewals} == {"succeeded"}
        # Exactly one new key per renewal: the keystore holds no other generated key.
        with contextlib.closing(sqlite3.connect(
                f"{settings.store.database.as_uri()}?mode=ro", uri=True)) as db:
            generated = {row[0] for row in db.execute(
                "SELECT fingerprint FROM sealing_keys WHERE source = 'generated'")}
        assert generated == set(masters)
        # The CLI shows them: every master key listed, and the certificate that seals.
        listed_keys = json.loads(sealfleet("keys", "list", "-o", "json", "-c",
                                           str(sandbox)).stdout)["keys"]
        assert {k["fingerprint"] for k in listed_keys if k["fleet_master"]} == set(masters)
        cert = sealfleet("keys", "cert", "-c", str(sandbox))
        assert cert.returncode == 0, cert.stderr
        assert load_certificate(cert.stdout.encode()).fingerprint == masters[-1]
    finally:
        daemon.stop()
