"""The ``sandbox`` fixture: a fresh one-cluster sandbox for each test (see controller_harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from controller_harness import SandboxHarness, start_sandbox


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[SandboxHarness]:
    async with start_sandbox(tmp_path) as running:
        yield SandboxHarness(running)
