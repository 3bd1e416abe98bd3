"""The path patterns of [[repos]]: ** for any depth, * within a segment, bad ones refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealfleet.adapters.git import globs


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("**/*.yaml", "a.yaml", True),
    ("**/*.yaml", "apps/prod/a.yaml", True),
    ("**/*.yaml", "apps/a.yml", False),
    ("apps/*.yaml", "apps/a.yaml", True),
    ("apps/*.yaml", "apps/x/a.yaml", False),
    ("apps/**", "apps/x/y/z.json", True),
    ("apps/**", "other/apps/z.json", False),
    ("a/**/b.yaml", "a/b.yaml", True),
    ("a/**/b.yaml", "a/x/y/b.yaml", True),
    ("clusters/prod-?/*.yaml", "clusters/prod-1/s.yaml", True),
    ("clusters/[ab]*/s.yaml", "clusters/beta/s.yaml", True),
    ("clusters/[!ab]*/s.yaml", "clusters/beta/s.yaml", False),
    ("./apps/*.yaml", "apps/a.yaml", True),
    ("a.b", "axb", False),   # a dot is a dot, not a regex wildcard
])
def test_patterns_match_as_documented(pattern: str, path: str, expected: bool) -> None:
    assert bool(globs.compile_glob(pattern).match(path)) is expected


@pytest.mark.parametrize(("pattern", "why"), [
    ("", "empty"), ("/etc/*.yaml", "relative"), ("a/../b", "segment"), ("a//b", "segment"),
    ("a**/b", "whole path segment"), ("a/[bc", "closing"), ("a/[z-a]", "range"),
])
def test_unusable_patterns_are_refused_saying_why(pattern: str, why: str) -> None:
    with pytest.raises(globs.GlobError, match=why):
        globs.compile_glob(pattern)


@given(st.lists(st.text(alphabet="abc.-_", min_size=1, max_size=5), min_size=1, max_size=4))
def test_star_star_matches_every_yaml_path(segments: list[str]) -> None:
    path = "/".join([*segments, "x.yaml"])
    assert globs.matcher(["**/*.yaml"])(path)
    assert not globs.matcher(["*.yaml"])(path)   # * never crosses a /
