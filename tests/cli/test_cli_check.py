"""`sealfleet check` as a CI gate: the real CLI asking a real `sealfleet run` daemon.

The daemon's store holds two clusters' keys (alpha seals with the first, beta with the
second); the clusters themselves are unreachable, which a check does not need: it
judges from the keys and holdings the inventory recorded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import offline_daemon
from sealfleet.adapters.store import KeyEncryptionKey, Store
from sealfleet.adapters.store.records import KeyHolding, KeyMaterial, KeyRecord
from sealfleet.domain import documents
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.sealed_secrets import seal_secret

NOW = dt.datetime.now(dt.UTC)
def sealfleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run([sys.executable, "-m", "sealfleet", *map(str, args)],
                               capture_output=True, text=True, timeout=60, check=False)
    assert "Traceback" not in completed.stderr, completed.stderr
    return completed


async def populate(directory: Path, keys: list[SealingKey]) -> None:
    kek = KeyEncryptionKey.from_file(directory / "kek")
    async with Store.open(directory / "inventory.db", kek=kek) as store:
        await store.keys.upsert_keys([KeyRecord(k.fingerprint, k.not_before, k.not_after,
                                                "cluster") for k in keys[:2]])
        await store.keys.store_key_material([KeyMaterial(k, "cluster") for k in keys[:2]])
        for cluster, key in (("alpha", keys[0]), ("beta", keys[1])):
            await store.inventory.upsert_cluster(cluster)
            await store.inventory.record_cluster_status(
                cluster, reachable=True, last_scan_at=NOW, sealing_key=key.fingerprint,
                sealing_key_source="cert.pem")
            await store.inventory.replace_cluster_keys(cluster, [KeyHolding(
                key.fingerprint, "k", "active", "1", NOW, NOW)])


@pytest.fixture
def daemon(tmp_path: Path, rsa2048_keys: list[SealingKey]) -> Iterator[Path]:
    config = offline_daemon.prepare(tmp_path, offline_daemon.config_text())
    asyncio.run(populate(tmp_path, rsa2048_keys))
    with offline_daemon.started(config) as running:
        running.wait_for("READY=1")
        yield config


def manifest(tmp_path: Path, name: str, key: SealingKey) -> Path:
    """A file with a plaintext ConfigMap and a SealedSecret sealed with *key*."""
    secret = {"metadata": {"name": name, "namespace": "apps"},
              "stringData": {"password": "hunter2-value"}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(documents.dump_all([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}},
        seal_secret(secret, key.public_key)], "yaml"))
    return path


def test_check_passes_a_good_file_and_fails_one_sealed_for_another_cluster(
        daemon: Path, tmp_path: Path, rsa2048_keys: list[SealingKey]) -> None:
    good = manifest(tmp_path, "good", rsa2048_keys[0])
    wrong = manifest(tmp_path, "wrong", rsa2048_keys[1])
    passed = sealfleet("check", "-c", daemon, "-f", good, "--cluster", "alpha")
    assert passed.returncode == 0, passed.stderr
    assert "1 SealedSecrets checked, 0 would fail; 1 other documents ignored" in passed.stdout
    failed = sealfleet("check", "-c", daemon, "-f", good, wrong, "--cluster", "alpha",
                       "-o", "json")
    assert failed.returncode == 1, failed.stderr
    answer = json.loads(failed.stdout)
    verdicts = {d["name"]: d["clusters"][0] for d in answer["documents"]}
    assert verdicts["good"]["decryptable"] is True
    assert verdicts["good"]["current"] is True
    assert verdicts["wrong"]["decryptable"] is False
    assert any(rsa2048_keys[1].fingerprint in r and "does not hold" in r
               for r in verdicts["wrong"]["reasons"])
    assert "hunter2" not in failed.stdout + failed.stderr


def test_without_a_cluster_one_that_can_unseal_is_enough(
        daemon: Path, tmp_path: Path, rsa2048_keys: list[SealingKey]) -> None:
    wrong_for_alpha = manifest(tmp_path, "beta-only", rsa2048_keys[1])
    result = sealfleet("check", "-c", daemon, "-f", wrong_for_alpha, "-o", "json")
    assert result.returncode == 0, result.stderr
    (document,) = json.loads(result.stdout)["documents"]
    assert {v["cluster"]: v["decryptable"] for v in document["clusters"]} == {
        "alpha": False, "beta": True}
    nobody = manifest(tmp_path, "nobody", rsa2048_keys[2])
    assert sealfleet("check", "-c", daemon, "-f", nobody).returncode == 1


def test_unknown_clusters_and_unparseable_files_are_usage_errors(
        daemon: Path, tmp_path: Path, rsa2048_keys: list[SealingKey]) -> None:
    good = manifest(tmp_path, "good", rsa2048_keys[0])
    unknown = sealfleet("check", "-c", daemon, "-f", good, "--cluster", "gamma")
    assert unknown.returncode == 2
    assert "'gamma' is not a cluster" in unknown.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("password: hunter2\n  bad: [\n")
    result = sealfleet("check", "-c", daemon, "-f", broken)
    assert result.returncode == 2
    assert "broken.yaml" in result.stderr
    assert "hunter2" not in result.stderr
