"""The one retry and backoff helper: every call site that retries goes through here.

Exponential backoff with *full jitter* (a uniformly random delay between zero and the
capped exponential step): a fleet of workers that failed together does not retry in
lock-step, which is what hammers a recovering API server.  A server's ``Retry-After``
(carried by :class:`~sealfleet.errors.TransientError`) is a floor: we never come back
sooner than we were told to.  Only :class:`TransientError` is retried; anything else
is the caller's to handle.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sealfleet.errors import TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class BackoffPolicy:
    """How long to wait between attempts: *initial* seconds first, times *multiplier*
    after each failure, up to *cap*.  The daemon's values come from ``[fleet]``
    (``backoff_initial``, ``backoff_max``), where their defaults are explained.
    """

    initial: float
    cap: float
    multiplier: float = 2.0

    def step(self, attempt: int) -> float:
        """The ceiling of the jittered delay after *attempt* failures (attempt >= 1)."""
        exponent = min(max(attempt - 1, 0), 64)  # avoid float overflow on long outages
        return float(min(self.cap, self.initial * self.multiplier ** exponent))


class Backoff:
    """The state of one retrying thing: how many failures in a row so far."""

    def __init__(self, policy: BackoffPolicy, *,
                 rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self.failures = 0
        self._rng = rng

    def next_delay(self, retry_after: float | None = None) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        self.failures += 1
        delay = self._rng() * self.policy.step(self.failures)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    def delay_for(self, error: TransientError) -> float:
        return self.next_delay(error.retry_after)

    def reset(self) -> None:
        """A success: the next failure starts again from the smallest step."""
        self.failures = 0


async def retry_call(fn: Callable[[], Awaitable[T]], *, policy: BackoffPolicy,
                     attempts: int | None = None,
                     on_retry: Callable[[TransientError, float], None] | None = None,
                     sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
    """Await ``fn()`` until it succeeds, retrying :class:`TransientError` with backoff.

    *attempts* bounds the total number of calls (None: retry until cancelled); the
    last error is re-raised once they are used up.  *on_retry* sees each error and the
    delay chosen for it (for edge-triggered logging by the caller).
    """
    backoff = Backoff(policy)
    while True:
        try:
            return await fn()
        except TransientError as error:
            if attempts is not None and backoff.failures + 1 >= attempts:
                raise
            delay = backoff.delay_for(error)
            if on_retry is not None:
                on_retry(error, delay)
            await sleep(delay)
