"""One daemon per database: a second exclusive open is refused, naming the holder.

The holder is another process (``flock`` locks belong to open file descriptions, so
only another process shows the real situation: a second daemon started beside the
first).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealfleet.adapters.store import Store
from sealfleet.errors import StoreError

HOLDER = """
import asyncio, sys
from sealfleet.adapters.store import Store

async def main() -> None:
    async with Store.open(sys.argv[1], exclusive=True):
        print("holding", flush=True)
        await asyncio.to_thread(sys.stdin.read)   # until the test closes our stdin

asyncio.run(main())
"""


@pytest.fixture
def holder(db_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the database open exclusively until told to stop."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(db_path)], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == "holding\n"
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


async def test_a_second_daemon_is_refused_naming_the_holder(
        db_path: Path, holder: subprocess.Popen[str]) -> None:
    lock = db_path.with_name(db_path.name + ".lock")
    with pytest.raises(StoreError) as refused:
        async with Store.open(db_path, exclusive=True):
            pytest.fail("two daemons opened one database")
    assert re.fullmatch(
        re.escape(f"{db_path}: already in use by another sealfleet daemon (pid {holder.pid} "
                  f"on {socket.gethostname()}, lock {lock}); stop it first, or give this "
                  "one its own [store] database"), str(refused.value))
    assert lock.stat().st_mode & 0o777 == 0o600
    # Commands that only read (e.g. `sealfleet db status`) take no lock.
    async with Store.open(db_path, migrate=False) as store:
        assert await store.inventory.list_clusters() == []


async def test_the_lock_goes_with_its_holder_however_it_ends(
        db_path: Path, holder: subprocess.Popen[str]) -> None:
    holder.kill()          # no cleanup runs: the kernel releases the flock
    holder.wait()
    async with Store.open(db_path, exclusive=True) as store:
        await store.inventory.upsert_cluster("after")
        lock_text = db_path.with_name(db_path.name + ".lock").read_text()
    assert lock_text.split() == [str(os.getpid()), socket.gethostname()]
    # Closing the store releases it for the next one.
    async with Store.open(db_path, exclusive=True) as store:
        assert [c.name for c in await store.inventory.list_clusters()] == ["after"]


async def test_a_refused_open_leaves_the_holder_undisturbed(
        db_path: Path, holder: subprocess.Popen[str]) -> None:
    for _ in range(2):
        with pytest.raises(StoreError, match="already in use"):
            async with Store.open(db_path, exclusive=True):
                pass
    assert holder.poll() is None
    assert holder.stdin is not None
    holder.stdin.close()                  # the holder stops on its own, cleanly
    assert holder.wait() == 0
    async with Store.open(db_path, exclusive=True):
        pass
