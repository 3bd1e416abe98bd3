"""`keys import` and `keys export` while `sealfleet run` runs: through the daemon, as a
``key_import`` job (journaled, audited) and an audited export, never by opening the
daemon's database behind its back.  The real daemon process and the real CLI."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import offline_daemon
from sealfleet.adapters.store import generate_kek_file

pytestmark = pytest.mark.slow


def sealfleet(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sealfleet", *map(str, args)],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Path]:
    config = offline_daemon.prepare(tmp_path, offline_daemon.config_text(("alpha",)))
    with offline_daemon.started(config) as daemon:
        daemon.wait_for("READY=1")
        yield config


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_import_and_export_go_through_the_running_daemon(running: Path,
                                                           tmp_path: Path) -> None:
    config = running
    made = sealfleet("keys", "generate", "--cert-out", tmp_path / "cert.pem",
                     "--key-out", tmp_path / "key.pem", "--bits", "2048")
    assert made.returncode == 0, made.stderr
    fingerprint = sealfleet("keys", "fingerprint", tmp_path / "cert.pem").stdout.strip()

    imported = sealfleet("keys", "import", "--cert", tmp_path / "cert.pem",
                         "--key", tmp_path / "key.pem", "-c", config)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {fingerprint}" in imported.stdout
    assert "succeeded" in imported.stdout
    again = sealfleet("keys", "import", "--cert", tmp_path / "cert.pem",
                      "--key", tmp_path / "key.pem", "-c", config)
    assert again.returncode == 0, again.stderr
    assert f"already held {fingerprint}" in again.stdout

    jobs = json.loads(sealfleet("jobs", "list", "-c", config, "-o", "json").stdout)["jobs"]
    assert [(j["kind"], j["state"]) for j in jobs] == [("key_import", "succeeded")] * 2
    assert "upload" not in jobs[0]["params"]        # nothing staged is journaled

    passphrase = private(tmp_path / "passphrase", "correct horse battery staple\n")
    out = tmp_path / "fleet-keys.age"
    exported = sealfleet("keys", "export", "--out", out, "--passphrase-file", passphrase,
                         "-c", config)
    assert exported.returncode == 0, exported.stderr
    assert "exported by the daemon" in exported.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes().startswith(b"age-encryption.org/v1\n")

    audit = json.loads(sealfleet("audit", "-c", config, "-o", "json").stdout)["entries"]
    events = [e["event"] for e in audit]
    assert events.count("key_import_requested") == 2
    export = next(e for e in audit if e["event"] == "keys_exported")
    assert export["details"]["fingerprints"] == [fingerprint]
    assert export["actor"].startswith("local")
    key_text = (tmp_path / "key.pem").read_text().splitlines()[1]
    assert key_text not in json.dumps(audit)          # no key material in the audit log

    # The daemon's backup opens elsewhere: a fresh store, offline (no daemon on it).
    generate_kek_file(tmp_path / "kek2")
    restored = sealfleet("keys", "import", out, "--passphrase-file", passphrase,
                         "--database", tmp_path / "fresh.db", "--kek-file", tmp_path / "kek2")
    assert restored.returncode == 0, restored.stderr
    assert f"imported {fingerprint}" in restored.stdout
