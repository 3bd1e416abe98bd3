"""The fleet's connect gate: how many clusters may be connecting and scanning at once.

A cluster holds a turn from its first connection attempt until its watches stream
(:mod:`sealfleet.app.cluster.worker`).  ``[fleet] connect_concurrency`` is the most turns
there are; fewer are handed out while the event loop is slow to answer.  A first pass
is CPU work on the loop (TLS, JSON, the store's round trips) as much as waiting for
apiservers: against nearby apiservers a dozen scans at once keep the loop so busy that
an API request or the watchdog waits behind them for tens of milliseconds, while
against distant ones the loop idles and every turn is worth having.  So the gate
watches the loop's lag (how late a short sleep wakes up) and halves the turns it hands
out when the loop is late, and adds one back for each prompt wakeup (additive increase,
multiplicative decrease, as TCP paces a link).  Turns already taken are never revoked.

A cluster's second connection, its key Secrets' watch, takes a *background* turn: one
handed out only once no cluster has been connecting or scanning (no ordinary turn held,
none waited for) for ``BACKGROUND_QUIET``, or after ``BACKGROUND_PATIENCE``, when it
queues with the others.  That watch adds nothing to the report the list before it made
(it resumes from the list's resourceVersion, so no change is missed meanwhile), while
its connection costs as much CPU as a scan's (a TLS handshake on each side, a watch the
apiserver sets up: about 2 CPU-ms in all), so a first pass or a recovery puts every
cluster in the report first (the quiet moment lets the report of a pass that just ended
be built and announced before them), then opens the key watches: 6% sooner at 1,000
clusters, about 8% at 10 (``bench/fleet.py``).

The gate also carries the fleet's recovery hint.  After a fleet-wide outage every
cluster waits out its own jittered, exponential backoff, and the longer the outage,
the longer the last of those waits: a 20-second outage left a 100-cluster fleet whole
only two minutes later.  So when a cluster connects again after failing, the clusters
waiting out a transient failure are woken (at most once every ``HINT_INTERVAL``) and
try again within a random part of a short *spread*; the turns bound how many connect
at once, so waking them all is no stampede, and one that still fails backs off further.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
from collections.abc import Callable

# How late (seconds) a wakeup may be before the loop counts as busy: a few of these
# make up an API request's latency, which should stay under 10 ms.
LAG_TARGET = 0.003
_PROBE = 0.02            # seconds between lag measurements
HINT_INTERVAL = 5.0      # seconds: recovery hints at most this often
# Seconds a background turn waits behind the clusters waiting to connect, at most: a
# first pass of thousands of clusters opens its first key watches within this, not at
# its end.
BACKGROUND_PATIENCE = 30.0
# Seconds from the last scan's end to the first background turn: the end of a pass
# (its report built, READY) goes first.
BACKGROUND_QUIET = 0.1


@dataclasses.dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[None]
    background: bool
    queued_at: float
    patience: asyncio.TimerHandle | None = None   # a background waiter's: see _hand_out


class ConnectGate:
    """Up to *limit* turns, fewer while the loop lags (see the module docstring).

    ``acquire``/``release`` as for a semaphore (a background turn is given back as
    one); :meth:`run` (a task of the fleet) adapts the number of turns.  Without it
    running, the gate is a plain semaphore of *limit*.
    """

    def __init__(self, limit: int, *, lag_target: float = LAG_TARGET,
                 background_patience: float = BACKGROUND_PATIENCE,
                 background_quiet: float = BACKGROUND_QUIET,
                 rng: Callable[[], float] = random.random) -> None:
        if limit < 1:
            raise ValueError("a gate needs at least one turn")
        self.limit = limit
        self.allowed = limit          # turns handed out at most, right now
        self.taken = 0
        # Ordinary turns handed out since the start: sessions attempted (a background
        # turn is none).
        self.sessions = 0
        self._background_taken = 0    # of the turns taken
        self._lag_target = lag_target
        self._background_patience = background_patience
        self._background_quiet = background_quiet
        self._scans_ended_at = float("-inf")     # loop time the last scan gave back
        self._quiet_timer: asyncio.TimerHandle | None = None
        # In turn order: ordinary waiters, and background ones past their patience.
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._background: collections.deque[_Waiter] = collections.deque()  # by age
        self._rng = rng
        self._recovered = asyncio.Event()   # replaced by a fresh one at every hint
        self._hinted_at = float("-inf")
        self.hints = 0                      # recovery hints given so far

    @property
    def idle(self) -> bool:
        """No cluster connecting or waiting to (no first pass or reconnect under way)."""
        return self.taken == 0 and not self._waiters and not self._background

    @property
    def _scanning(self) -> bool:
        """A cluster holds or awaits an ordinary turn: background ones wait."""
        return self.taken > self._background_taken or bool(self._waiters)

    async def acquire(self, *, background: bool = False) -> None:
        """A turn; a *background* one only once no cluster connects or scans."""
        loop = asyncio.get_running_loop()
        if self.taken < self.allowed and not self._waiters and not (
                background and (self._background or not self._quiet(loop.time()))):
            self._take(background)
            return
        waiter = _Waiter(loop.create_future(), background, loop.time())
        if background:
            waiter.patience = loop.call_at(waiter.queued_at + self._background_patience,
                                           self._hand_out)
            self._background.append(waiter)
            self._hand_out()   # arms the quiet moment's timer if that is what it waits for
        else:
            self._waiters.append(waiter)
        try:
            await waiter.future
        except asyncio.CancelledError:
            if waiter.patience is not None:
                waiter.patience.cancel()
            if waiter.future.done() and not waiter.future.cancelled():
                # Handed a turn just as we were cancelled: give it on.
                self.release(background=background)
            # Else it may still be queued, or already dropped by a hand-out that ran
            # between the cancel and this handler (a stop cancels hundreds at once).
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter in self._background:
                self._background.remove(waiter)
            raise

    def release(self, *, background: bool = False) -> None:
        self.taken -= 1
        if background:
            self._background_taken -= 1
        elif not self._scanning:
            self._scans_ended_at = asyncio.get_running_loop().time()
        self._hand_out()

    def _quiet(self, now: float) -> bool:
        """No scan now, nor for the quiet moment before *now*."""
        return not self._scanning and now >= self._scans_ended_at + self._background_quiet

    def _take(self, background: bool) -> None:
        self.taken += 1
        if background:
            self._background_taken += 1
        else:
            self.sessions += 1

    def _hand_out(self) -> None:
        now = asyncio.get_running_loop().time()
        # Background waiters past their patience queue with the others (a timer of
        # theirs calls this at that moment, should nothing else).
        patience_ends = now - self._background_patience
        while self._background and self._background[0].queued_at <= patience_ends:
            self._waiters.append(self._background.popleft())
        while self.taken < self.allowed and self._waiters:
            self._grant(self._waiters.popleft())
        if not self._background or self._scanning:
            return
        if not self._quiet(now):
            if self._quiet_timer is None:
                self._quiet_timer = asyncio.get_running_loop().call_at(
                    self._scans_ended_at + self._background_quiet, self._quiet_over)
            return
        while self.taken < self.allowed and self._background:
            self._grant(self._background.popleft())

    def _quiet_over(self) -> None:
        self._quiet_timer = None
        self._hand_out()

    def _grant(self, waiter: _Waiter) -> None:
        if waiter.patience is not None:
            waiter.patience.cancel()
        if not waiter.future.done():
            self._take(waiter.background)
            waiter.future.set_result(None)

    def note_recovered(self) -> None:
        """A cluster connected after failing: wake those waiting out a transient failure
        (unless a hint went out less than ``HINT_INTERVAL`` ago)."""
        now = asyncio.get_running_loop().time()
        if now - self._hinted_at < HINT_INTERVAL:
            return
        self._hinted_at = now
        self.hints += 1
        woken, self._recovered = self._recovered, asyncio.Event()
        woken.set()

    async def back_off(self, delay: float, *, spread: float) -> None:
        """Sleep *delay* seconds, or, woken by a recovery hint, a random part of
        *spread* from then (never longer than *delay* in all)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._recovered.wait()
        remaining = deadline - loop.time()
        if remaining > 0:
            await asyncio.sleep(self._rng() * min(spread, remaining))

    async def run(self) -> None:
        """Until cancelled: measure the loop's lag and adapt the turns to it."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(_PROBE)
            self.adapt(loop.time() - before - _PROBE)

    def adapt(self, lag: float) -> None:
        """One lag measurement: halve the turns when late, else one more."""
        if lag > self._lag_target:
            self.allowed = max(1, self.allowed // 2)
        elif self.allowed < self.limit:
            self.allowed += 1
            self._hand_out()
