"""Running ``python -m sealfleet`` for real, and key files on disk for it to use."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sealfleet.domain import documents, keys


@dataclass(frozen=True)
class Run:
    """One finished CLI invocation."""

    code: int
    stdout: str
    stderr: str


Cli = Callable[..., Run]


@pytest.fixture(scope="session")
def cli() -> Cli:
    """Run the real entry point in a subprocess; never lets a traceback pass unnoticed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SEALFLEET_DEBUG", "SEALED_SECRETS_CERT")}

    def run(*args: str | Path, stdin: bytes | str = b"", cwd: Path | None = None,
            extra_env: dict[str, str] | None = None) -> Run:
        completed = subprocess.run(
            [sys.executable, "-m", "sealfleet", *map(str, args)],
            input=stdin.encode() if isinstance(stdin, str) else stdin,
            capture_output=True, timeout=60, cwd=cwd, env={**env, **(extra_env or {})},
            check=False)
        result = Run(completed.returncode, completed.stdout.decode(errors="replace"),
                     completed.stderr.decode(errors="replace"))
        assert "Traceback" not in result.stderr, result.stderr
        assert "internal error" not in result.stderr, result.stderr
        return result

    return run


@dataclass(frozen=True)
class KeyFiles:
    """A sealing key as files: certificate, PKCS#1 key, key Secret; plus its object."""

    key: keys.SealingKey
    cert: Path
    private_key: Path
    secret: Path


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory,
              rsa2048_keys: list[keys.SealingKey]) -> list[KeyFiles]:
    directory = tmp_path_factory.mktemp("keys")
    result = []
    for index, key in enumerate(rsa2048_keys):
        cert = directory / f"cert{index}.pem"
        cert.write_bytes(key.certificate.pem)
        private_key = directory / f"key{index}.pem"
        private_key.write_bytes(key.private_key_pem())
        secret = directory / f"key{index}-secret.yaml"
        secret.write_text(documents.dump_yaml(
            keys.key_secret_manifest(key, name=f"sealed-secrets-key{index}")))
        result.append(KeyFiles(key, cert, private_key, secret))
    return result


@pytest.fixture(scope="session")
def expired_cert(tmp_path_factory: pytest.TempPathFactory,
                 rsa2048_keys: list[keys.SealingKey]) -> Path:
    cert = keys.self_signed_certificate(rsa2048_keys[0].private_key,
                                        now=dt.datetime(2015, 1, 1, tzinfo=dt.UTC),
                                        ttl=dt.timedelta(days=365))
    path = tmp_path_factory.mktemp("expired") / "expired.pem"
    path.write_bytes(cert.pem)
    return path
