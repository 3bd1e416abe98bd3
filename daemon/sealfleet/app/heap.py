"""The daemon's heap: garbage collection paced for a large, long-lived one, and freed
memory handed back to the system.

A fleet of 1,000 clusters keeps a million objects alive (per cluster: its tasks, its
connections' protocol objects, its inventory), and CPython's full collection walks all
of them: measured 250 to 450 ms each, several times during a first pass (the heap grows
by a quarter, a full collection follows) and now and then afterwards, with the event
loop stopped meanwhile (API requests, watch events, the watchdog's heartbeat).  So:

- before the API listens, one full collection frees the start's garbage (nobody waits
  for an answer yet); when the fleet starts, what the process holds by then (its modules,
  classes and settings: a few hundred thousand objects that never become garbage) is
  frozen, so that no later collection walks it again;
- while the fleet makes its first pass, the collector is off altogether.  A pass makes
  almost no cyclic garbage (with the collector off at 1,000 clusters, 770 objects were
  left to collect at its end), while the young generations' collections, about 120 of
  them at 10 to 25 ms each (walking 9,000 young objects, each of their references a
  cache miss in a heap of 400 MB), were as many stalls of the loop and the API;
- at the end of the first pass the collector is on again, and what the fleet holds,
  its long-lived objects, is frozen (``gc.freeze``) without a full collection first,
  and the freed memory handed back: later full collections walk only what was
  allocated since, a few milliseconds' worth.  Measured at 1,000 clusters, that
  collection found nothing to free among 374,000 objects and stopped the loop, and
  every API request, for 395 ms; what cyclic garbage there is waits for the next
  refreeze;
- the freeze is lifted for one full collection, and the survivors frozen again, once as
  many sessions have started since as the fleet has clusters (a fleet-wide reconnect
  leaves the old sessions' cycles among the frozen objects; once no cluster is
  connecting, not in the middle of the wave) and at least every ``_REFREEZE`` anyway,
  so that cycles among long-lived objects that died since are freed too.  Sessions are
  those that scanned their cluster: counted as sessions, the key watches' connections
  after a pass made this collection (0.25 to 0.45 s at 1,000 clusters) due 30 s after
  every first pass, and a fleet-wide outage's failed attempts every 30 s of it.

glibc keeps freed memory in its heaps (a scan frees hundreds of megabytes of ciphertext
strings interleaved with the long-lived inventory); ``malloc_trim`` hands the holes
back, and holds the allocator's locks while it does (tens of milliseconds for a few
hundred megabytes), so it runs only every ``_TRIM_INTERVAL`` while the inventory moves.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

_TRIM_INTERVAL = 30.0        # seconds between handing freed C-heap memory back
_REFREEZE = 3600.0           # seconds between full collections of the frozen heap too


def collect_before_serving() -> None:
    """One full collection of what starting left, while nothing waits for an answer
    (before the API listens; for 1,000 clusters' settings some 100 ms)."""
    gc.collect()


def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim`` (None elsewhere, e.g. musl or macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], object] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


class Heap:
    """The collector's pacing for one fleet run; :meth:`run` is the fleet's upkeep task."""

    def __init__(self, progress: Callable[[], int], *,
                 trim: Callable[[], object] | None = None,
                 sessions: Callable[[], int] = lambda: 0,
                 clusters: Callable[[], int] = lambda: 0,
                 connecting: Callable[[], bool] = lambda: False) -> None:
        self._progress = progress
        self._trim = trim
        self._sessions = sessions      # cluster sessions started so far
        self._clusters = clusters      # clusters in the fleet now
        self._connecting = connecting  # clusters connecting now (a reconnect wave)
        self._settled = False
        # Whether hold_collections turned the collector off (a second fleet in the
        # same process, as in tests, finds it off and leaves turning it on to the first).
        self._was_enabled = False
        self._sessions_at_freeze = 0
        self._since_refreeze = 0.0

    def hold_collections(self) -> None:
        """The process's heap so far frozen (its garbage was collected before the API
        listened: :func:`collect_before_serving`); until :meth:`settle`, no collections
        at all (a first pass is under way)."""
        gc.freeze()
        self._was_enabled = gc.isenabled()
        gc.disable()

    async def settle(self) -> None:
        """The long-lived heap is in place: freeze it (no full collection: see the module
        docstring), give the freed memory back."""
        if self._settled:
            return
        self._settled = True
        self._enable()
        gc.freeze()
        self._sessions_at_freeze = self._sessions()
        if self._trim is not None:
            await asyncio.to_thread(self._trim)
        # No count of the frozen objects here: gc.get_freeze_count() walks the whole
        # list (half a million objects across the heap: 50-70 ms of cache misses).
        log.info("heap_settled")

    def _refreeze(self) -> None:
        started = time.monotonic()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self._sessions_at_freeze = self._sessions()
        self._since_refreeze = 0.0
        # The loop (and the API) stood still meanwhile: worth a line of its own.
        log.info("heap_refrozen", freed=freed,
                 seconds=round(time.monotonic() - started, 3))

    def _enable(self) -> None:
        if self._was_enabled:
            gc.enable()
        self._was_enabled = False

    def release(self) -> None:
        """The fleet stopped: the collector as it was, the frozen objects collectable."""
        self._enable()
        gc.unfreeze()

    async def run(self) -> None:
        """Until cancelled: trim the C heap while the inventory moves; refreeze now and then."""
        previous = self._progress()
        while True:
            await asyncio.sleep(_TRIM_INTERVAL)
            self.maybe_refreeze(_TRIM_INTERVAL)
            moved, previous = self._progress() - previous, self._progress()
            # More than the one-second heartbeat alone: work happened.
            if self._trim is not None and moved > _TRIM_INTERVAL + 1:
                await asyncio.to_thread(self._trim)

    def maybe_refreeze(self, elapsed: float) -> bool:
        """*elapsed* seconds have passed: refreeze when due (see the module docstring)."""
        self._since_refreeze += elapsed
        churned = self._sessions() - self._sessions_at_freeze
        if not self._settled or (self._since_refreeze < _REFREEZE
                                 and churned < max(1, self._clusters())):
            return False
        if self._connecting():
            return False  # not in the middle of a reconnect wave: once it is over
        self._refreeze()
        return True
