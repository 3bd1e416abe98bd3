"""The retry helper: full jitter under an exponential cap, Retry-After as a floor."""

from __future__ import annotations

import pytest

from sealfleet.adapters import retry
from sealfleet.errors import PermanentError, TransientError

POLICY = retry.BackoffPolicy(initial=1.0, cap=300.0)
POLICY_FAST = retry.BackoffPolicy(initial=0.1, cap=300.0)


def test_step_doubles_up_to_the_cap() -> None:
    policy = retry.BackoffPolicy(initial=1.0, cap=10.0, multiplier=2.0)
    assert [policy.step(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert policy.step(10_000) == 10.0  # no overflow on very long outages


def test_full_jitter_spans_zero_to_the_step() -> None:
    policy = retry.BackoffPolicy(initial=1.0, cap=100.0)
    low = retry.Backoff(policy, rng=lambda: 0.0)
    high = retry.Backoff(policy, rng=lambda: 0.999)
    assert [low.next_delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [round(high.next_delay(), 2) for _ in range(3)] == [1.0, 2.0, 4.0]


def test_retry_after_is_a_floor_and_reset_starts_over() -> None:
    backoff = retry.Backoff(POLICY, rng=lambda: 0.5)
    assert backoff.delay_for(TransientError("busy", retry_after=7.0)) == 7.0
    assert backoff.next_delay() == 1.0  # second failure: 0.5 * 2
    backoff.reset()
    assert backoff.next_delay() == 0.5


async def test_retry_call_retries_transient_errors_and_honours_retry_after() -> None:
    slept: list[float] = []
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("429", retry_after=5.0)
        return "ok"

    async def sleep(delay: float) -> None:
        slept.append(delay)

    result = await retry.retry_call(flaky, policy=POLICY_FAST, sleep=sleep)
    assert result == "ok"
    assert calls == 3
    assert slept == [5.0, 5.0]


async def test_retry_call_gives_up_after_attempts_and_never_retries_permanent() -> None:
    calls = 0

    async def always_busy() -> None:
        nonlocal calls
        calls += 1
        raise TransientError("busy")

    async def no_sleep(_: float) -> None:
        return None

    with pytest.raises(TransientError):
        await retry.retry_call(always_busy, policy=POLICY, attempts=3,
                               sleep=no_sleep)
    assert calls == 3

    async def broken() -> None:
        raise PermanentError("forbidden")

    with pytest.raises(PermanentError):
        await retry.retry_call(broken, policy=POLICY, sleep=no_sleep)
