"""Thread pools for bulk CPU work (RSA), run behind the event loop.

During a first pass or a reseal the RSA threads keep every core busy, and the event
loop's thread (every cluster's I/O, the watchdog's heartbeat, the API) competes with
them for the same cores.  Linux shares a core between runnable threads by weight: at
the same nice value the loop waited behind an RSA thread's time slice (a few
milliseconds, each time it woke), and at 1,000 clusters those waits made the API's
p99.  One nice step costs a thread about a fifth of its weight; at ``BULK_NICE`` steps
below the loop the RSA threads still use every cycle the loop leaves idle (the work
and its throughput are the same), and the loop runs first when it has something to do.

Linux's nice value belongs to the thread, and lowering one's own priority needs no
privilege (systemd's ``Nice=`` for the unit, if any, is the starting point).  Where the
call is refused or means the whole process (not Linux), the threads run as they are.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

BULK_NICE = 5


def run_behind_the_loop() -> None:
    """Thread-pool initializer: this thread ``BULK_NICE`` steps below the process."""
    if not sys.platform.startswith("linux"):
        return   # elsewhere PRIO_PROCESS of a thread id may name the whole process
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, thread,
                       os.getpriority(os.PRIO_PROCESS, thread) + BULK_NICE)


def bulk_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """*threads* threads named *name*_N, each behind the event loop."""
    return ThreadPoolExecutor(threads, thread_name_prefix=name,
                              initializer=run_behind_the_loop)
