"""RSA pools run behind the event loop: their threads at a lower priority than the
thread that made them, the process itself untouched."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from sealfleet.app import bulk_threads


def _nice_of_this_thread() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_bulk_threads_run_below_the_loop_and_leave_the_loop_as_it_was() -> None:
    loop_nice = _nice_of_this_thread()
    pool = bulk_threads.bulk_pool(2, "rsa")
    try:
        seen = {pool.submit(_nice_of_this_thread).result() for _ in range(8)}
        names = {pool.submit(lambda: threading.current_thread().name).result()
                 for _ in range(8)}
    finally:
        pool.shutdown(wait=True)
    # At the limit (19) a thread cannot go lower: it stays at 19, still not above us.
    assert seen == {min(loop_nice + bulk_threads.BULK_NICE, 19)}
    assert _nice_of_this_thread() == loop_nice
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == loop_nice   # the process
    assert all(name.startswith("rsa_") for name in names)
