"""The fleet's heap pacing: no automatic collection during a first pass, the long-lived
heap frozen after it, and the collector as it was once the fleet stops."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from sealfleet.app import heap


class Cycle:
    me: object = None


def collectable(thing: object) -> bool:
    """Whether the collector would walk *thing* (frozen objects are in no generation)."""
    return any(tracked is thing for tracked in gc.get_objects())


@pytest.fixture(autouse=True)
def collector() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


async def test_collections_wait_for_the_first_pass_then_the_heap_is_frozen() -> None:
    trims: list[None] = []
    pacing = heap.Heap(lambda: 0, trim=lambda: trims.append(None))
    pacing.hold_collections()
    assert gc.get_freeze_count() > 0         # the startup heap, walked never again
    assert not gc.isenabled()                # no collection stalls the pass
    fleet = Cycle()                          # a first pass's long-lived object
    assert collectable(fleet)
    garbage = Cycle()
    garbage.me = garbage
    gone = weakref.ref(garbage)
    gc.collect(1)                            # survived the young generations...
    del garbage                              # ...then died: a cycle only a full one frees
    await pacing.settle()
    # Frozen with the rest, not collected: a full collection here stopped the loop for
    # 400 ms at 1,000 clusters and found nothing; the next refreeze frees it.
    assert gone() is not None
    assert gc.isenabled()
    assert not collectable(fleet)            # it joined the frozen heap
    assert trims == [None]                   # and the freed memory went back
    frozen = gc.get_freeze_count()
    await pacing.settle()                    # once only
    assert gc.get_freeze_count() == frozen
    assert trims == [None]
    pacing.release()
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()


def test_a_fleet_stopped_before_its_first_pass_gives_the_collector_back() -> None:
    pacing = heap.Heap(lambda: 0)
    pacing.hold_collections()
    assert not gc.isenabled()
    second = heap.Heap(lambda: 0)            # another fleet in the same process
    second.hold_collections()
    second.release()
    assert not gc.isenabled()                # the first one's pass is still under way
    pacing.release()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


async def test_the_heap_is_frozen_again_once_the_fleet_has_reconnected() -> None:
    """A fleet-wide reconnect leaves the old sessions among the frozen objects: once as
    many sessions have started as there are clusters, one full collection frees them."""
    sessions, connecting = [10], [False]
    pacing = heap.Heap(lambda: 0, sessions=lambda: sessions[0], clusters=lambda: 10,
                       connecting=lambda: connecting[0])
    assert not pacing.maybe_refreeze(30.0)       # not settled yet: nothing to refreeze
    pacing.hold_collections()
    await pacing.settle()
    sessions[0] += 9
    assert not pacing.maybe_refreeze(30.0)       # nine of ten clusters reconnected
    garbage = Cycle()
    garbage.me = garbage                         # a cycle...
    gone = weakref.ref(garbage)
    gc.freeze()                                  # ...among the frozen objects
    del garbage
    gc.collect()
    assert gone() is not None                    # frozen: the collector never sees it
    sessions[0] += 1
    connecting[0] = True
    assert not pacing.maybe_refreeze(30.0)       # the wave is still under way
    connecting[0] = False
    assert pacing.maybe_refreeze(30.0)
    assert gone() is None
    assert not pacing.maybe_refreeze(30.0)       # counted from the refreeze
    pacing.release()
