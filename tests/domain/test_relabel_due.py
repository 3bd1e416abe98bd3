"""The rule that says a compromised key's deferred relabel has become possible."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from sealfleet.domain.relabel_due import (
    CompromisedKeyStanding,
    RelabelAttempt,
    due_relabels,
    nothing_in_clusters_needs_it,
    relabel_due,
)

NOW = dt.datetime(2026, 12, 2, 5, 0, tzinfo=dt.UTC)
RETRY = dt.timedelta(minutes=10)
SKIPPED_BY_RESEAL = RelabelAttempt(job_id="j1", automatic=False, waited_for_clusters=True,
                                   finished_at=NOW - dt.timedelta(seconds=5))
FREED = CompromisedKeyStanding(fingerprint="SHA256:a", held_unrelabelled=True,
                               cluster_objects=0, unattributed=0,
                               last_attempt=SKIPPED_BY_RESEAL)


def due(standing: CompromisedKeyStanding) -> bool:
    return relabel_due(standing, now=NOW, retry_after=RETRY)


def test_a_reseal_skip_for_cluster_objects_is_due_once_none_needs_the_key() -> None:
    assert due(FREED)


@pytest.mark.parametrize("change", [
    {"cluster_objects": 1},            # the branch is not merged or not applied yet
    {"unattributed": 3},               # items not attributed yet: they might be its
    {"held_unrelabelled": False},      # already relabelled everywhere: nothing to do
    {"last_attempt": None},            # no reseal asked for it: a user's decision
])
def test_not_due(change: dict[str, object]) -> None:
    assert not due(dataclasses.replace(FREED, **change))  # type: ignore[arg-type]


def test_the_inventory_half_of_the_rule_needs_no_journal() -> None:
    assert nothing_in_clusters_needs_it(dataclasses.replace(FREED, last_attempt=None))
    assert not nothing_in_clusters_needs_it(dataclasses.replace(FREED, cluster_objects=1))
    assert not nothing_in_clusters_needs_it(dataclasses.replace(FREED, unattributed=1))
    assert not nothing_in_clusters_needs_it(
        dataclasses.replace(FREED, held_unrelabelled=False))


def test_a_skip_for_another_reason_or_a_failure_is_left_to_a_human() -> None:
    guarded = dataclasses.replace(SKIPPED_BY_RESEAL, waited_for_clusters=False)
    assert not due(dataclasses.replace(FREED, last_attempt=guarded))


def test_an_automatic_attempt_that_found_objects_is_retried_only_after_a_relist() -> None:
    """The relabel job reads the clusters live: its skip means the inventory lagged, so
    the same job is not resubmitted every tick, only once *retry_after* has passed."""
    recent = RelabelAttempt(job_id="j2", automatic=True, waited_for_clusters=True,
                            finished_at=NOW - dt.timedelta(minutes=1))
    assert not due(dataclasses.replace(FREED, last_attempt=recent))
    older = dataclasses.replace(recent, finished_at=NOW - RETRY)
    assert due(dataclasses.replace(FREED, last_attempt=older))


def test_due_relabels_lists_the_due_fingerprints_sorted() -> None:
    waiting = dataclasses.replace(FREED, fingerprint="SHA256:b", cluster_objects=2)
    other = dataclasses.replace(FREED, fingerprint="SHA256:0")
    assert due_relabels([FREED, waiting, other], now=NOW, retry_after=RETRY) \
        == ["SHA256:0", "SHA256:a"]
