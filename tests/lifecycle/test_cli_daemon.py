"""`sealfleet run` as a real process (systemd notify socket, SIGTERM), and its clients
`status` and `staleness --fail-on` reading the daemon's API through the config file."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import offline_daemon
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import ItemFact, KeyHolding, KeyRecord, SealedSecretRecord
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState

NOW = dt.datetime.now(dt.UTC)
DAY = dt.timedelta(days=1)
def sealfleet(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sealfleet", *args], capture_output=True,
                          text=True, timeout=60, check=check)


async def populate(directory: Path, keys: list[SealingKey]) -> None:
    kek = KeyEncryptionKey.from_file(directory / "kek")
    old, new = keys[0].fingerprint, keys[1].fingerprint
    async with Store.open(directory / "inventory.db", kek=kek) as store:
        await store.keys.upsert_keys([KeyRecord(old, NOW - 90 * DAY, NOW + 900 * DAY, "cluster"),
                                      KeyRecord(new, NOW - DAY, NOW + 900 * DAY, "cluster")])
        for cluster, sealing in (("alpha", new), ("beta", old)):
            await store.inventory.upsert_cluster(cluster)
            await store.inventory.record_cluster_status(cluster, reachable=True, last_scan_at=NOW,
                                                        sealing_key=sealing,
                                                        sealing_key_source="cert.pem")
            await store.inventory.replace_cluster_keys(cluster, [KeyHolding(
                sealing, "k", "active", "1", NOW, NOW)])
        await store.inventory.upsert_sealed_secrets([SealedSecretRecord(
            cluster="beta", namespace="apps", name="db", uid="u1", resource_version="1",
            generation=1, scope=Scope.STRICT, ciphertext_fingerprint="c1",
            items=(ItemFact("password", "h1", old),), state=SecretState.STALE, synced=True,
            synced_message=None, observed_at=NOW)])


@pytest.fixture
def daemon(tmp_path: Path, rsa2048_keys: list[SealingKey]) -> Iterator[offline_daemon.Daemon]:
    config = offline_daemon.prepare(
        tmp_path, offline_daemon.config_text(fleet='backoff_initial = "1s"'))
    asyncio.run(populate(tmp_path, rsa2048_keys))
    with offline_daemon.started(config) as running:
        running.wait_for("READY=1")
        yield running


@pytest.mark.slow
def test_daemon_serves_clients_and_stops_on_sigterm(
        daemon: offline_daemon.Daemon) -> None:
    config, process = daemon.config, daemon.process
    status = sealfleet("status", "-c", str(config))
    assert status.returncode == 0, status.stderr
    assert "alpha" in status.stdout
    assert "beta" in status.stdout

    stale = sealfleet("staleness", "-c", str(config), "--fail-on", "stale")
    assert stale.returncode == 1
    assert "found stale" in stale.stderr
    fine = sealfleet("staleness", "-c", str(config), "--fail-on", "compromised,unknown")
    assert fine.returncode == 0, fine.stderr
    as_json = sealfleet("staleness", "-c", str(config), "-o", "json")
    report = json.loads(as_json.stdout)
    beta = next(c for c in report["clusters"] if c["name"] == "beta")
    assert beta["sealing_key"]["stale"] is True
    assert beta["sealed_secrets"]["stale"] == 1
    assert {c["reachable"] for c in report["clusters"]} == {False}  # the kubeconfig is dead
    bad = sealfleet("staleness", "-c", str(config), "--fail-on", "rotten")
    assert bad.returncode == 2

    process.send_signal(signal.SIGTERM)
    daemon.wait_for("STOPPING=1")
    assert process.wait(timeout=30) == 0
    assert not (config.parent / "api.sock").exists()
    out, _ = process.communicate()
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert "service_ready" in events
    assert events[-1] == "service_stopped"


def test_run_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "sealfleet.toml"
    config.write_text('[[clusters]]\nname = "a"\n')
    result = sealfleet("run", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "clusters[0].kubeconfig: field required" in result.stderr


def test_client_without_a_daemon_says_where_it_looked(tmp_path: Path) -> None:
    config = tmp_path / "sealfleet.toml"
    config.write_text('[api]\nsocket = "api.sock"\n')
    result = sealfleet("status", "-c", str(config))
    assert result.returncode == 1
    assert "cannot reach the sealfleet daemon at unix:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_once_reports_the_seeded_truth(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sealfleet", "demo", "--once", "--clusters",
                             "2", "--state-dir", str(tmp_path), "-o", "json"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Status page: http://127.0.0.1:" in result.stderr
    report = json.loads(result.stdout)
    seed = json.loads((tmp_path / "seed.json").read_text())
    by_name = {c["name"]: c for c in report["clusters"]}
    assert set(by_name) == set(seed["clusters"])
    for name, truth in seed["clusters"].items():
        cluster = by_name[name]
        assert cluster["reachable"] is True
        assert cluster["sealing_key"]["fingerprint"] == truth["sealing_key"]
        mine = [s for s in seed["sealed_secrets"] if s["cluster"] == name]
        stale = [s for s in mine if any(i["key"] != truth["sealing_key"] for i in s["items"])]
        assert cluster["sealed_secrets"]["total"] == len(mine)
        assert cluster["sealed_secrets"]["stale"] == len(stale)
        assert cluster["sealed_secrets"]["current"] == len(mine) - len(stale)
    # A share of them is applied by Flux from the sandbox's GitOps repository, which the
    # demo's config names and whose first scan the report shows.
    settings = tomllib.loads((tmp_path / "sealfleet.toml").read_text())
    (repo,) = settings["repos"]
    assert (repo["name"], repo["path"], repo["remote"], repo["push"]) == (
        "gitops", "gitops/clone", "origin", True)
    in_git = [s for s in seed["sealed_secrets"] if "git_path" in s]
    assert in_git
    (scanned,) = report["repos"]
    assert scanned["head_branch"] == "main"
    assert scanned["sealed_secrets"]["total"] == len(in_git)
