"""Fixtures every test directory may use: the shared reference data and sealing keys.

Keys are generated once per session (RSA generation is the slowest thing a test can
do); 2048-bit keys wherever 4096 bits are not the point.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sealfleet.domain import keyfiles, keys

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "SEALFLEET_SHARED_DIR"


def locate_shared_dir() -> Path:
    """``shared/`` lives beside the checkout (``../shared``), or where the env var says.

    Missing reference data is a failure, not a skip: the compatibility tests are the
    point of the suite.
    """
    override = os.environ.get(SHARED_ENV)
    # An explicit override is the only place looked at: a typo must not pass silently.
    candidates = ([Path(override)] if override
                  else [REPO_ROOT / ".." / "shared", REPO_ROOT / "shared"])
    for candidate in candidates:
        if (candidate / "vectors").is_dir():
            return candidate.resolve()
    pytest.fail(f"shared reference data not found (looked in {', '.join(map(str, candidates))}); "
                f"set {SHARED_ENV}", pytrace=False)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return locate_shared_dir()


@pytest.fixture(scope="session")
def strict_vectors_dir(shared_dir: Path) -> Path:
    return shared_dir / "vectors" / "kubeseal-strict"


@pytest.fixture(scope="session")
def example_key(strict_vectors_dir: Path) -> keys.SealingKey:
    """The genuine controller-generated 4096-bit key the kubeseal vectors were sealed with."""
    path = strict_vectors_dir / "example-key.yaml"
    (key,) = keyfiles.keys_from_bytes(path.read_bytes(), source=str(path))
    return key


@pytest.fixture(scope="session")
def rsa2048_keys() -> list[keys.SealingKey]:
    """Three distinct 2048-bit sealing keys, made as the controller makes them."""
    return [keys.generate_sealing_key(bits=2048) for _ in range(3)]


@pytest.fixture(scope="session")
def rsa4096_key() -> keys.SealingKey:
    """One freshly generated key with the controller's defaults (4096 bits)."""
    return keys.generate_sealing_key()
