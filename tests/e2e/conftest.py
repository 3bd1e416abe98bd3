"""Fixtures the end-to-end tests share."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """The daemon's RSA thread pool, as the service sizes it on a 2-core machine."""
    with ThreadPoolExecutor(2) as pool:
        yield pool
