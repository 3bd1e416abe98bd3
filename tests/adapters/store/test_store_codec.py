"""Row encoding: the compact items column round-trips whatever the item names are."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealfleet.adapters.store import codec
from sealfleet.adapters.store.records import ItemFact
from sealfleet.errors import StoreError

KEYS = ["SHA256:aaaa", "SHA256:bbbb+/cc", "SHA256:dddd"]
REFS = {fingerprint: str(ref) for ref, fingerprint in enumerate(KEYS, 1)}
BACK = {ref: fingerprint for fingerprint, ref in REFS.items()}
FINGERPRINTS = st.sampled_from([None, *KEYS])
ITEMS = st.lists(st.builds(ItemFact, item=st.text(max_size=20),
                           item_hash=st.text(alphabet="0123456789abcdef", min_size=64,
                                             max_size=64),
                           fingerprint=FINGERPRINTS), max_size=6)


@given(ITEMS)
def test_items_round_trip(items: list[ItemFact]) -> None:
    text, keys, key_items = codec.encode_items(items, REFS)
    assert codec.decode_items(text, keys, BACK) == tuple(items)
    known = [i.fingerprint for i in items if i.fingerprint is not None]
    assert key_items == len(known)
    assert (keys.split(" ") if keys else []) == [REFS[k] for k in dict.fromkeys(known)]


def test_single_key_items_use_the_compact_form() -> None:
    items = [ItemFact("username", "a" * 64, "SHA256:k"), ItemFact("password", "b" * 64,
                                                                  "SHA256:k")]
    assert codec.encode_items(items, {"SHA256:k": "7"}) == (
        f"username\t{'a' * 64}\t0\npassword\t{'b' * 64}\t0", "7", 2)
    with pytest.raises(KeyError):
        codec.encode_items(items, {})


@given(st.text(max_size=30), st.text(max_size=30), st.text(max_size=30))
def test_cursor_round_trip(cluster: str, namespace: str, name: str) -> None:
    assert codec.decode_cursor(codec.encode_cursor(cluster, namespace, name)) == (
        cluster, namespace, name)


def test_timestamps_are_fixed_width_utc_and_refuse_naive_times() -> None:
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert codec.timestamp(aware) == "2026-01-02T01:04:05.000000+00:00"
    assert codec.parse_timestamp(codec.timestamp(aware)) == aware
    with pytest.raises(StoreError, match="naive"):
        codec.timestamp(dt.datetime(2026, 1, 2))
