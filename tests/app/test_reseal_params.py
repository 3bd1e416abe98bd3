"""The reseal job's request and journal formats: a selection parsed with one-line errors
naming the field, and planned entries that read back as they were planned."""

from __future__ import annotations

import pytest

from sealfleet.app.jobs.reseal_params import (
    entry_document,
    entry_from_document,
    selection_document,
    selection_of,
)
from sealfleet.domain.planning.resealing import (
    DEFAULT_STATES,
    ItemKey,
    PlannedReseal,
    Source,
)
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState
from sealfleet.errors import InputError


def test_an_empty_request_selects_stale_and_compromised_everywhere() -> None:
    selection = selection_of({})
    assert selection.states == DEFAULT_STATES
    assert selection.clusters is None
    assert selection.sources is None


def test_a_request_becomes_the_planner_selection_and_is_documented_back() -> None:
    selection = selection_of({"states": ["compromised"], "clusters": ["b", "a"],
                              "namespaces": ["team-*"], "scopes": ["cluster-wide"],
                              "include_git": False, "dry_run": True})
    assert selection.states == {SecretState.COMPROMISED}
    assert selection.clusters == {"a", "b"}
    assert selection.namespaces == ("team-*",)
    assert selection.scopes == {Scope.CLUSTER_WIDE}
    assert selection.sources == {Source.CLUSTER}
    document = selection_document(selection)
    assert document["clusters"] == ["a", "b"]
    assert document["sources"] == ["cluster"]
    assert document["scopes"] == ["cluster-wide"]
    assert document["repos"] is None


@pytest.mark.parametrize(("body", "message"), [
    ({"states": ["nope"]}, "states: 'nope' is not one of"),
    ({"states": "stale"}, "states must be an array"),
    ({"clusters": [""]}, "clusters must be an array of at most 1000 non-empty strings"),
    ({"scopes": ["wide"]}, "scopes: 'wide'"),
    ({"include_git": "no"}, "include_git must be true or false"),
    ({"colour": "red"}, "unknown field 'colour'"),
    ({"sources": ["git"], "include_git": False}, "nothing selected"),
])
def test_a_bad_request_is_one_line_naming_the_field(body: dict[str, object],
                                                    message: str) -> None:
    with pytest.raises(InputError, match=message):
        selection_of(body)  # type: ignore[arg-type]


def test_a_journaled_entry_reads_back_as_planned() -> None:
    entry = PlannedReseal(Source.GIT, SecretState.STALE, "team-1", "db", Scope.NAMESPACE_WIDE,
                          "SHA256:new", (ItemKey("password", "SHA256:old"), ItemKey("x", None)),
                          repo="apps", path="db/sealed.yaml", document=2,
                          clusters=("prod", "stage"))
    assert entry_from_document(entry_document(entry)) == entry
    with pytest.raises(InputError, match="malformed"):
        entry_from_document({"source": "git"})
