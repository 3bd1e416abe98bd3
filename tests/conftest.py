"""Fixtures every test directory may use: the kubeseal test vectors, sealing keys and
the daemon's RSA thread pool.

Keys are generated once per session (RSA generation is the slowest thing a test can
do); 2048-bit keys wherever 4096 bits are not the point.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sealfleet.domain import keyfiles, keys

REPO_ROOT = Path(__file__).resolve().parents[1]
# Genuine kubeseal output, copied into the repository with its NOTICE (origin, licence):
# a fresh clone with nothing beside it runs the compatibility tests.
VECTORS_DIR = Path(__file__).resolve().parent / "data" / "kubeseal-vectors"


@pytest.fixture(scope="session")
def strict_vectors_dir() -> Path:
    return VECTORS_DIR


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


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """The daemon's RSA thread pool, as the service sizes it on a 2-core machine."""
    with ThreadPoolExecutor(2) as pool:
        yield pool
