"""The check's pure decision: can a cluster unseal a document, is it sealed with the
current key, and what the gate makes of several clusters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sealfleet.domain import check
from sealfleet.domain.staleness import SecretState

NEW, OLD, OTHER = "SHA256:new", "SHA256:old", "SHA256:other"
FULL = check.ClusterKeys("prod", sealing_key=NEW, held=frozenset({NEW, OLD}))
RESTRICTED = check.ClusterKeys("edge", sealing_key=NEW, held=None)  # key Secrets not read


def test_sealed_with_the_sealing_key_unseals_and_is_current() -> None:
    verdict = check.judge([("a", NEW), ("b", NEW)], FULL)
    assert (verdict.decryptable, verdict.current, verdict.state) == (True, True,
                                                                     SecretState.CURRENT)
    assert not verdict.fails
    assert verdict.reasons == ()


def test_an_older_held_key_unseals_but_is_stale() -> None:
    verdict = check.judge([("a", OLD)], FULL)
    assert (verdict.decryptable, verdict.current, verdict.state) == (True, False,
                                                                     SecretState.STALE)
    assert not verdict.fails
    assert any("not sealed with the cluster's sealing key" in r for r in verdict.reasons)


def test_a_key_the_cluster_does_not_hold_fails_naming_item_and_key() -> None:
    verdict = check.judge([("a", NEW), ("b", OTHER)], FULL)
    assert verdict.decryptable is False
    assert verdict.state is SecretState.FAILING
    assert verdict.fails
    assert any("'b'" in r and OTHER in r and "does not hold" in r for r in verdict.reasons)


def test_an_item_no_known_key_opens_fails_where_holdings_are_known() -> None:
    assert check.judge([("a", None)], FULL).decryptable is False
    # ...and cannot be told where they are not (least privilege): the gate still fails it.
    restricted = check.judge([("a", None)], RESTRICTED)
    assert restricted.decryptable is None
    assert restricted.state is SecretState.UNKNOWN
    assert restricted.fails


def test_least_privilege_vouches_only_for_the_sealing_key() -> None:
    assert check.judge([("a", NEW)], RESTRICTED).decryptable is True
    assert check.judge([("a", OLD)], RESTRICTED).decryptable is None


def test_compromised_wins_and_malformed_without_items_cannot_unseal() -> None:
    assert check.judge([("a", OLD)], FULL, compromised={OLD}).state is SecretState.COMPROMISED
    verdict = check.judge([], FULL, malformed_reason="spec is missing or not a mapping")
    assert verdict.decryptable is False
    assert verdict.state is SecretState.UNKNOWN
    assert verdict.reasons == ("spec is missing or not a mapping",)


def test_an_unknown_sealing_key_leaves_current_open() -> None:
    verdict = check.judge([("a", OLD)], check.ClusterKeys("new", None, frozenset({OLD})))
    assert verdict.current is None
    assert verdict.decryptable is True


def test_named_clusters_must_all_unseal_otherwise_one_is_enough() -> None:
    good = check.judge([("a", NEW)], FULL)
    bad = check.judge([("a", NEW)], check.ClusterKeys("dev", OTHER, frozenset({OTHER})))
    assert check.would_fail([good, bad], every_cluster=True)
    assert not check.would_fail([good, bad], every_cluster=False)
    assert check.would_fail([bad], every_cluster=False)
    assert check.would_fail([], every_cluster=False)
    stale = check.judge([("a", OLD)], FULL)
    assert not check.would_fail([stale], every_cluster=True)
    assert check.would_fail([stale], every_cluster=True, require_current=True)


def test_the_worst_state_over_clusters_is_the_documents() -> None:
    verdicts = [check.judge([("a", NEW)], FULL), check.judge([("a", OLD)], FULL)]
    assert check.worst_state(verdicts) is SecretState.STALE
    assert check.worst_state([]) is None


@given(st.lists(st.tuples(st.text(min_size=1, max_size=3),
                          st.sampled_from([NEW, OLD, OTHER, None])), max_size=6))
def test_unsealable_means_every_item_is_held(items: list[tuple[str, str | None]]) -> None:
    held = FULL.held or frozenset()
    expected = all(key is not None and key in held for _, key in items)
    verdict = check.judge(items, FULL)
    assert verdict.decryptable is expected   # holdings known: never "cannot tell"
