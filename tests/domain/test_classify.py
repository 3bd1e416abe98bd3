"""classify: the one place a SealedSecret's state is decided, most severe verdict first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealfleet.domain.staleness import KeyContext, SecretState, classify

SEALING, OLD, BAD = "SHA256:sealing", "SHA256:old", "SHA256:bad"
CONTEXT = KeyContext(sealing_key=SEALING, compromised=frozenset({BAD}))


@pytest.mark.parametrize(("items", "synced", "malformed", "verified", "expected"), [
    ([SEALING, SEALING], True, False, None, SecretState.CURRENT),
    ([SEALING, OLD], True, False, None, SecretState.STALE),
    ([SEALING, None], True, False, None, SecretState.UNKNOWN),
    ([SEALING, None], None, False, False, SecretState.FAILING),   # the controller cannot open it
    ([SEALING, None], None, False, True, SecretState.UNKNOWN),    # it can: unknown to us only
    ([SEALING], False, False, None, SecretState.FAILING),
    ([OLD, BAD], False, True, None, SecretState.COMPROMISED),     # compromised beats all
    ([SEALING], False, True, None, SecretState.UNKNOWN),          # malformed beats failing
    ([], None, True, None, SecretState.UNKNOWN),
])
def test_state_is_the_most_severe_verdict_that_applies(
        items: list[str | None], synced: bool | None, malformed: bool, verified: bool | None,
        expected: SecretState) -> None:
    assert classify(items, CONTEXT, synced=synced, malformed=malformed,
                    verified=verified) is expected


def test_unknown_sealing_key_counts_attributed_items_as_current() -> None:
    assert classify([OLD], KeyContext(sealing_key=None), synced=True) is SecretState.CURRENT


@given(st.lists(st.sampled_from([SEALING, OLD, BAD, None]), max_size=6),
       st.sampled_from([True, False, None]), st.booleans(), st.sampled_from([True, False, None]))
def test_an_item_sealed_with_a_compromised_key_always_wins(
        items: list[str | None], synced: bool | None, malformed: bool,
        verified: bool | None) -> None:
    state = classify(items, CONTEXT, synced=synced, malformed=malformed, verified=verified)
    assert (state is SecretState.COMPROMISED) == (BAD in items)
