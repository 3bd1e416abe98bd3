"""A real inventory database in a temp dir and a real KEK file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sealfleet.adapters.store import KeyEncryptionKey, Store, generate_kek_file


@pytest.fixture
def kek(tmp_path: Path) -> KeyEncryptionKey:
    return KeyEncryptionKey.from_file(generate_kek_file(tmp_path / "kek"))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "inventory.db"


@pytest.fixture
async def store(db_path: Path, kek: KeyEncryptionKey) -> AsyncIterator[Store]:
    async with Store.open(db_path, kek=kek) as opened:
        yield opened
