"""Likeliest key first: the time prior, the same-object prior and the modulus filter.

Orderings are properties over generated key ages and times; attribution cost is
counted in RSA attempts on real sealed items, with real 2048-bit keys whose
certificates are dated as a renewing controller would date them.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealfleet.domain import attribution, hybrid, keys, likely_keys
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import SealedIdentity, seal_value

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class FakeKey:
    fingerprint: str
    not_before: dt.datetime


def fake_keys(days: list[int]) -> list[FakeKey]:
    return [FakeKey(f"k{index}", EPOCH + dt.timedelta(days=day))
            for index, day in enumerate(days)]


key_days = st.lists(st.integers(0, 400), min_size=1, max_size=8)
a_day = st.integers(-30, 430).map(lambda day: EPOCH + dt.timedelta(days=day, hours=6))


@given(days=key_days, when=a_day)
def test_the_key_newest_at_sealing_time_comes_first_then_older_then_newer(
        days: list[int], when: dt.datetime) -> None:
    candidates = fake_keys(days)
    ordered = likely_keys.by_sealing_time(candidates, [when])
    assert sorted(ordered, key=lambda k: k.fingerprint) == sorted(
        candidates, key=lambda k: k.fingerprint)  # a permutation
    older = [k for k in ordered if k.not_before <= when]
    newer = [k for k in ordered if k.not_before > when]
    assert ordered == older + newer
    assert [k.not_before for k in older] == sorted((k.not_before for k in older), reverse=True)
    assert [k.not_before for k in newer] == sorted(k.not_before for k in newer)
    if older:
        assert ordered[0] == likely_keys.newest_at(candidates, when)


@given(days=key_days, times=st.lists(a_day, max_size=3))
def test_each_sealing_time_puts_its_newest_key_ahead_of_the_rest(
        days: list[int], times: list[dt.datetime]) -> None:
    candidates = fake_keys(days)
    ordered = likely_keys.by_sealing_time(candidates, times)
    assert len(ordered) == len(candidates)
    assert set(ordered) == set(candidates)
    if not times:
        assert ordered == candidates  # no timestamps: the caller's order stands
    current = [likely_keys.newest_at(candidates, when) for when in times]
    expected = list(dict.fromkeys(k for k in current if k is not None))
    assert ordered[:len(expected)] == expected


@given(days=key_days, others=key_days, when=a_day)
def test_the_time_prior_ranks_only_the_clusters_own_keys(
        days: list[int], others: list[int], when: dt.datetime) -> None:
    local = fake_keys(days)
    foreign = [FakeKey(f"other-{k.fingerprint}", k.not_before) for k in fake_keys(others)]
    base = foreign + local  # e.g. foreign keys ranked higher by past usage
    ordered = likely_keys.likeliest_first(base, [when],
                                          local={k.fingerprint for k in local})
    assert ordered[:len(local)] == likely_keys.by_sealing_time(local, [when])
    assert ordered[len(local):] == foreign
    # With no local keys known, the time prior is all there is.
    assert likely_keys.likeliest_first(base, [when], local=()) == \
        likely_keys.by_sealing_time(base, [when])


@given(days=key_days, others=key_days, when=a_day)
def test_local_keys_in_front_give_the_same_order_as_anywhere(
        days: list[int], others: list[int], when: dt.datetime) -> None:
    """The attributor's order (local keys first) takes the shortcut; same answer."""
    local = fake_keys(days)
    foreign = [FakeKey(f"other-{k.fingerprint}", k.not_before) for k in fake_keys(others)]
    fingerprints = {k.fingerprint for k in local}
    in_front = likely_keys.likeliest_first(local + foreign, [when], local=fingerprints)
    behind = likely_keys.likeliest_first(foreign + local, [when], local=fingerprints)
    assert in_front == behind == likely_keys.by_sealing_time(local, [when]) + foreign


def test_promote_moves_a_key_to_the_front_and_ignores_unknown_names() -> None:
    candidates = fake_keys([1, 2, 3])
    likely_keys.promote(candidates, "k2")
    assert [k.fingerprint for k in candidates] == ["k2", "k0", "k1"]
    likely_keys.promote(candidates, "nope")
    assert [k.fingerprint for k in candidates] == ["k2", "k0", "k1"]


def _managed(operation: str, time: str, fields: dict[str, Any],
             subresource: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"manager": "kubectl", "operation": operation, "time": time,
                             "fieldsType": "FieldsV1", "fieldsV1": fields}
    if subresource:
        entry["subresource"] = subresource
    return entry


def test_sealing_times_are_the_last_spec_write_then_the_creation() -> None:
    metadata = {
        "creationTimestamp": "2026-03-01T10:00:00Z",
        "managedFields": [
            _managed("Update", "2026-03-01T10:00:00Z", {"f:spec": {}}),
            _managed("Update", "2026-05-02T08:30:00Z", {"f:spec": {"f:encryptedData": {}}}),
            _managed("Update", "2026-06-01T00:00:00Z", {"f:status": {}}, "status"),
            _managed("Update", "2026-07-01T00:00:00Z", {"f:metadata": {"f:labels": {}}}),
        ],
    }
    assert likely_keys.sealing_times(metadata) == (
        dt.datetime(2026, 5, 2, 8, 30, tzinfo=dt.UTC), dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC))
    assert likely_keys.sealing_times({"creationTimestamp": "2026-03-01T10:00:00Z"}) == (
        dt.datetime(2026, 3, 1, 10, tzinfo=dt.UTC),)
    assert likely_keys.sealing_times({}) == ()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=3),
    max_leaves=12)


@given(creation=json_values, managed=json_values)
def test_sealing_times_of_any_metadata_never_raise(creation: object, managed: object) -> None:
    times = likely_keys.sealing_times({"creationTimestamp": creation, "managedFields": managed})
    assert all(t.tzinfo is not None for t in times)


# --- attribution cost on real keys -------------------------------------------------------

@pytest.fixture(scope="module")
def dated_keys(rsa2048_keys: list[keys.SealingKey]) -> list[keys.SealingKey]:
    """The three session keys as a controller renewing every 30 days leaves them:
    NotBefore 95, 65 and 35 days ago (oldest first)."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return [dataclasses.replace(key, certificate=dataclasses.replace(
        key.certificate, not_before=now - dt.timedelta(days=age)))
        for key, age in zip(rsa2048_keys, (95, 65, 35), strict=True)]


def _items(key: keys.SealingKey, name: str, count: int) -> list[tuple[str, bytes]]:
    identity = SealedIdentity(namespace="apps", name=name, scope=Scope.STRICT)
    return [(seal_value(key.public_key, f"v{i}".encode(), identity), identity.label)
            for i in range(count)]


@pytest.mark.parametrize("sealer", [0, 1, 2])
def test_a_right_sealing_time_costs_one_decrypt_per_item(
        dated_keys: list[keys.SealingKey], sealer: int) -> None:
    newest_first = [attribution.candidate(k) for k in reversed(dated_keys)]  # sealing key first
    sealed_at = dated_keys[sealer].not_before + dt.timedelta(days=3)
    results = attribution.attribute_sealed_secret(
        _items(dated_keys[sealer], f"s{sealer}", 3), newest_first, sealed_at=[sealed_at],
        local={k.fingerprint for k in dated_keys})
    assert [r.fingerprint for r in results] == [dated_keys[sealer].fingerprint] * 3
    assert [r.rsa_attempts for r in results] == [1, 1, 1]


def test_a_wrong_sealing_time_costs_only_the_order_and_the_first_item(
        dated_keys: list[keys.SealingKey]) -> None:
    oldest = dated_keys[0]
    candidates = [attribution.candidate(k) for k in dated_keys]
    results = attribution.attribute_sealed_secret(
        _items(oldest, "copied", 4), candidates,
        sealed_at=[dt.datetime.now(dt.UTC)],  # says "sealed today": newest key first
        local={k.fingerprint for k in dated_keys})
    assert [r.fingerprint for r in results] == [oldest.fingerprint] * 4
    assert 1 <= results[0].rsa_attempts <= 3
    assert [r.rsa_attempts for r in results[1:]] == [1, 1, 1]  # the same-object prior


def _with_rsa_value(value: int, size: int) -> str:
    """A well-formed item whose RSA part reads as *value* (and opens with no key)."""
    raw = struct.pack(">H", size) + value.to_bytes(size, "big") + bytes(32)
    return base64.b64encode(raw).decode()


def test_a_key_whose_modulus_is_not_above_the_ciphertext_costs_no_decrypt(
        rsa2048_keys: list[keys.SealingKey]) -> None:
    small, large = sorted(rsa2048_keys[:2], key=lambda k: attribution.candidate(k).modulus)
    small_n = attribution.candidate(small).modulus
    label = b"apps/m"
    at_modulus = _with_rsa_value(small_n, 256)
    assert attribution.attribute_item(at_modulus, label, [small]).rsa_attempts == 0
    assert attribution.attribute_item(at_modulus, label, [small, large]).rsa_attempts == 1
    below = _with_rsa_value(small_n - 1, 256)
    assert attribution.attribute_item(below, label, [small]).rsa_attempts == 1
    # A real item is still found whichever key comes first.
    identity = SealedIdentity(namespace="apps", name="m", scope=Scope.STRICT)
    sealed = seal_value(large.public_key, b"v", identity)
    found = attribution.attribute_item(sealed, identity.label, [small, large])
    assert found.fingerprint == large.fingerprint
    assert found.rsa_attempts in (1, 2)


def _passes_filter(option: attribution.Candidate, ciphertext_b64: str) -> bool:
    rsa_part, _ = hybrid.split(base64.b64decode(ciphertext_b64))
    return option.could_have_sealed(rsa_part, int.from_bytes(rsa_part, "big"))


def test_a_key_that_comes_twice_in_the_order_is_tried_once(
        dated_keys: list[keys.SealingKey]) -> None:
    """The attributor puts the cluster's keys first and then the fleet's whole ranking,
    which names them again: an item no key opens costs one decrypt per key, not two."""
    lead = [attribution.candidate(k) for k in dated_keys[:2]]
    ranking = [attribution.candidate(k) for k in dated_keys]
    # The modulus filter skips a key whose modulus is below the RSA part's value, which
    # for a random ciphertext happens at random: seal until every key passes the filter,
    # so that each one really costs a decrypt and only the de-duplication is measured.
    sealed_by_none = next(
        item for item in (_items(dated_keys[2], "foreign", 1)[0] for _ in range(64))
        if all(_passes_filter(c, item[0]) for c in ranking))
    order = lead + ranking
    result = attribution.attribute_sealed_secret(
        [sealed_by_none], [c for c in order if c.fingerprint != dated_keys[2].fingerprint],
        local={k.fingerprint for k in dated_keys[:2]})[0]
    assert result.fingerprint is None
    assert result.rsa_attempts == 2
    found = attribution.attribute_sealed_secret(
        [sealed_by_none], order, local={k.fingerprint for k in dated_keys[:2]})[0]
    assert found.fingerprint == dated_keys[2].fingerprint
    assert found.rsa_attempts == 3
