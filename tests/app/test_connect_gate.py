"""The connect gate: turns up to its limit, first come first served, fewer after a late
wakeup of the loop and one more after each prompt one; no turn is lost to a cancel;
background turns go to those waiting while no cluster holds or waits for an ordinary
one, or past their patience."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable

import pytest

from sealfleet.app.connect_gate import LAG_TARGET, ConnectGate

LATE, PROMPT = LAG_TARGET * 10, 0.0


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_turns_up_to_the_limit_then_first_come_first_served() -> None:
    gate = ConnectGate(2)
    await gate.acquire()
    await gate.acquire()
    order: list[int] = []

    async def wait(index: int) -> None:
        await gate.acquire()
        order.append(index)

    waiting = [asyncio.create_task(wait(i)) for i in range(3)]
    await settle()
    assert order == []
    assert gate.taken == 2
    gate.release()
    await settle()
    assert order == [0]
    gate.release()
    gate.release()
    await settle()
    assert order == [0, 1, 2]
    assert gate.taken == 2      # 2 + 3 turns taken, 3 given back
    await asyncio.gather(*waiting)


async def test_a_late_loop_halves_the_turns_and_prompt_wakeups_give_them_back() -> None:
    gate = ConnectGate(8)
    for lag, expected in [(LATE, 4), (LATE, 2), (LATE, 1), (LATE, 1),
                          (PROMPT, 2), (PROMPT, 3), (LATE, 1)]:
        gate.adapt(lag)
        assert gate.allowed == expected
    for _ in range(20):
        gate.adapt(PROMPT)
    assert gate.allowed == 8  # never past the configured limit


async def test_turns_taken_are_kept_and_new_ones_wait_for_room() -> None:
    gate = ConnectGate(4)
    for _ in range(4):
        await gate.acquire()
    gate.adapt(LATE)                       # 2 allowed, 4 taken: nobody is evicted
    late = asyncio.create_task(gate.acquire())
    await settle()
    gate.release()
    gate.release()                         # 2 taken: still no room under 2
    await settle()
    assert not late.done()
    gate.adapt(PROMPT)                     # 3 allowed: the waiter gets a turn
    await settle()
    assert late.done()
    assert gate.taken == 3


async def test_a_cancelled_waiter_loses_no_turn() -> None:
    gate = ConnectGate(1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    assert gate.taken == 0
    await asyncio.wait_for(gate.acquire(), 1)  # the turn is there for the next one
    # Handed a turn and cancelled before it could run: the turn goes back.
    other = asyncio.create_task(gate.acquire())
    await settle()
    gate.release()                         # hands the turn to `other`...
    other.cancel()                         # ...which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await other
    assert gate.taken == 0


async def test_a_recovery_hint_ends_the_waits_of_those_backing_off() -> None:
    gate = ConnectGate(4, rng=lambda: 0.0)   # woken: no further jitter
    waiting = [asyncio.create_task(gate.back_off(3600, spread=1.0)) for _ in range(3)]
    await settle()
    assert not any(w.done() for w in waiting)
    gate.note_recovered()
    await asyncio.wait_for(asyncio.gather(*waiting), 10)  # a guard against a hang
    assert gate.hints == 1


async def test_hints_come_at_most_once_an_interval() -> None:
    gate = ConnectGate(4, rng=lambda: 0.0)
    gate.note_recovered()
    late = asyncio.create_task(gate.back_off(3600, spread=1.0))
    await settle()
    gate.note_recovered()                    # right after the first: no second hint
    await settle()
    assert not late.done()
    assert gate.hints == 1
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late


async def test_a_wait_without_a_hint_is_the_whole_delay() -> None:
    gate = ConnectGate(1)
    await asyncio.wait_for(gate.back_off(0.01, spread=1.0), 10)
    assert gate.hints == 0


async def test_idle_while_nobody_holds_or_waits_for_a_turn() -> None:
    gate = ConnectGate(1)
    assert gate.idle
    await gate.acquire()
    waiting = asyncio.create_task(gate.acquire())
    await settle()
    assert not gate.idle
    gate.release()                           # the waiter takes it
    await waiting
    assert not gate.idle
    gate.release()
    assert gate.idle


async def take_turn(gate: ConnectGate, order: list[str], name: str, *,
                    background: bool) -> None:
    await gate.acquire(background=background)
    order.append(name)


async def a_background_waiter_behind_the_turn(
        gate: ConnectGate, name: str,
) -> tuple[list[str], Callable[..., Awaitable[None]], list[asyncio.Task[None]]]:
    """*gate*'s only turn taken, and background waiter *name* queued behind it: the
    order turns are taken in, a waiter to start more with, the tasks waiting."""
    await gate.acquire()
    order: list[str] = []
    wait = functools.partial(take_turn, gate, order)
    tasks = [asyncio.create_task(wait(name, background=True))]
    await settle()
    return order, wait, tasks


async def test_a_background_turn_comes_at_once_when_nobody_holds_or_waits() -> None:
    gate = ConnectGate(2)
    await asyncio.wait_for(gate.acquire(background=True), 1)
    await asyncio.wait_for(gate.acquire(background=True), 1)   # one is no scan
    assert gate.taken == 2


async def test_a_background_turn_waits_while_a_cluster_scans_even_with_room() -> None:
    gate = ConnectGate(2)
    await gate.acquire()
    background = asyncio.create_task(gate.acquire(background=True))
    await settle()
    assert not background.done()
    assert gate.taken == 1
    await asyncio.wait_for(gate.acquire(), 1)       # an ordinary one takes the room
    gate.release()
    await settle()
    assert not background.done()
    gate.release()                                  # the last scan's turn back
    await asyncio.wait_for(background, 1)
    gate.release(background=True)
    assert gate.idle
    assert gate.taken == 0


async def test_background_turns_wait_for_a_quiet_moment_after_the_last_scan() -> None:
    """The end of a pass (its report, READY) comes before the key watches' handshakes;
    a scan starting meanwhile puts them off again."""
    gate = ConnectGate(4, background_quiet=0.05)
    await gate.acquire()
    background = asyncio.create_task(gate.acquire(background=True))
    gate.release()
    await asyncio.sleep(0.03)
    assert not background.done()
    await gate.acquire()                  # another scan within the quiet moment
    await asyncio.sleep(0.05)
    assert not background.done()
    gate.release()
    await asyncio.sleep(0.03)
    assert not background.done()          # the quiet moment counts from this scan's end
    await asyncio.wait_for(background, 1)
    await asyncio.wait_for(gate.acquire(background=True), 0.01)   # quiet by now: at once
    assert gate.taken == 2


async def test_background_turns_wait_until_nobody_waits_for_an_ordinary_one() -> None:
    gate = ConnectGate(1, background_quiet=0)
    order, wait, tasks = await a_background_waiter_behind_the_turn(gate, "keys-a")
    tasks += [asyncio.create_task(wait(name, background=False)) for name in ("b", "c")]
    await settle()
    for _ in range(3):
        gate.release()
        await settle()
    # Queued first, served last: the clusters waiting to scan went ahead.
    assert order == ["b", "c", "keys-a"]
    await asyncio.gather(*tasks)
    assert not gate.idle
    gate.release(background=True)
    assert gate.idle


async def test_a_background_waiter_past_its_patience_queues_with_the_others() -> None:
    gate = ConnectGate(1, background_patience=0.05)
    order, wait, tasks = await a_background_waiter_behind_the_turn(gate, "keys")
    tasks.append(asyncio.create_task(wait("b", background=False)))
    await asyncio.sleep(0.1)              # past its patience: "keys" queues behind b ...
    tasks.append(asyncio.create_task(wait("c", background=False)))
    await settle()
    for background in (False, False, True):   # the first holder's, b's, keys'
        gate.release(background=background)
        await settle()
    assert order == ["b", "keys", "c"]    # ... and ahead of those who came later
    await asyncio.gather(*tasks)


async def test_a_background_waiter_gets_a_free_turn_when_its_patience_ends() -> None:
    """A scan that holds its turn for long (a slow apiserver) delays the key watches
    by the patience at most, with no turn given back meanwhile."""
    gate = ConnectGate(2, background_patience=0.05)
    await gate.acquire()
    background = asyncio.create_task(gate.acquire(background=True))
    await asyncio.wait_for(background, 1)
    assert gate.taken == 2
    gate.release(background=True)
    gate.release()
    assert gate.idle


async def test_a_cancelled_background_waiter_loses_no_turn() -> None:
    gate = ConnectGate(1)
    await gate.acquire()
    ordinary = asyncio.create_task(gate.acquire())
    background = asyncio.create_task(gate.acquire(background=True))
    await settle()
    background.cancel()
    with pytest.raises(asyncio.CancelledError):
        await background
    assert not gate.idle
    gate.release()
    await asyncio.wait_for(ordinary, 1)
    gate.release()
    assert gate.idle
    assert gate.taken == 0
    # Its patience timer went with it: nothing is handed to it later.
    await asyncio.sleep(0)
    assert gate.taken == 0


@pytest.mark.parametrize("background", [False, True])
async def test_a_waiter_dropped_by_a_hand_out_before_its_cancel_ran_loses_nothing(
        background: bool) -> None:
    """A stop cancels every waiter at once; a turn given back before their cancellations
    run finds their cancelled futures first and drops them: each still just stops."""
    gate = ConnectGate(1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire(background=background))
    await settle()
    waiter.cancel()                        # its future is cancelled now, its handler later
    gate.release()                         # the hand-out drops that future
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.taken == 0
    assert gate.idle
