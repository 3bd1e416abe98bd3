"""Listing working trees with the real git CLI (and plainly), and parsing their files."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sealfleet.adapters.git import globs, manifests, walking
from sealfleet.domain import documents
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.errors import InputError, TransientError

YAML = globs.matcher(["**/*.yaml", "**/*.json"])


def git(tree: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}
    subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True, env=env)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "apps" / "deep").mkdir(parents=True)
    (root / "apps" / "a.yaml").write_text("kind: ConfigMap\n")
    (root / "apps" / "deep" / "b.json").write_text("{}")
    (root / "ignored.yaml").write_text("x: 1\n")
    (root / "notes.txt").write_text("hello\n")
    (root / ".gitignore").write_text("ignored.yaml\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "one")
    (root / "new.yaml").write_text("kind: Secret\n")          # untracked, not ignored
    os.symlink(root / "apps" / "a.yaml", root / "link.yaml")  # never followed
    return root


async def test_a_git_tree_lists_tracked_and_untracked_files_but_not_ignored_ones(
        tree: Path) -> None:
    listed = await walking.list_tree(tree, YAML)
    assert listed.is_git is True
    assert listed.head_branch == "main"
    assert listed.head_commit is not None
    assert [f.path for f in listed.files] == ["apps/a.yaml", "apps/deep/b.json", "new.yaml"]


async def test_a_change_on_disk_changes_the_signature_even_when_not_staged(tree: Path) -> None:
    before = {f.path: f.signature for f in (await walking.list_tree(tree, YAML)).files}
    (tree / "apps" / "a.yaml").write_text("kind: ConfigMap\ndata: {}\n")
    after = {f.path: f.signature for f in (await walking.list_tree(tree, YAML)).files}
    assert after["apps/a.yaml"] != before["apps/a.yaml"]
    assert after["apps/deep/b.json"] == before["apps/deep/b.json"]
    git(tree, "add", "apps/a.yaml")   # staged: the blob hash moves too
    staged = {f.path: f.signature for f in (await walking.list_tree(tree, YAML)).files}
    assert staged["apps/a.yaml"].split(":")[0] != after["apps/a.yaml"].split(":")[0]


async def test_a_detached_head_has_no_branch(tree: Path) -> None:
    git(tree, "checkout", "-q", "--detach")
    listed = await walking.list_tree(tree, YAML)
    assert listed.head_branch is None
    assert listed.head_commit is not None


async def test_a_plain_directory_is_walked_without_following_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    (root / "x" / ".git").mkdir(parents=True)   # a .git directory alone is skipped
    (root / "x" / ".git" / "c.yaml").write_text("a: 1\n")
    (root / "x" / "d.yaml").write_text("a: 1\n")
    os.symlink(root / "x" / "d.yaml", root / "link.yaml")
    listed = await walking.list_tree(root, YAML)
    assert listed.is_git is False
    assert [f.path for f in listed.files] == ["x/d.yaml"]


async def test_a_missing_tree_is_a_transient_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TransientError, match="not a directory"):
        await walking.list_tree(tmp_path / "gone", YAML)


def test_reading_refuses_a_symlink_and_oversized_files(tree: Path) -> None:
    with pytest.raises(InputError):
        walking.read_file(tree, "link.yaml")
    (tree / "big.yaml").write_bytes(b"#" * (walking.MAX_FILE_BYTES + 1))
    with pytest.raises(InputError, match="larger than"):
        walking.read_file(tree, "big.yaml")


def test_a_file_yields_its_sealed_secret_documents_with_their_indexes(
        rsa2048_keys: list[SealingKey]) -> None:
    key = rsa2048_keys[0]
    secret = {"metadata": {"name": "db", "namespace": "apps"}, "stringData": {"p": "v"}}
    wide = seal_secret({"metadata": {"name": "w"}, "stringData": {"p": "v"}},
                       key.public_key, scope=Scope.CLUSTER_WIDE)
    wide["metadata"].pop("namespace", None)
    text = documents.dump_all([{"kind": "ConfigMap", "apiVersion": "v1"},
                               seal_secret(secret, key.public_key), wide], "yaml")
    parsed = manifests.parse_file("f.yaml", text.encode())
    assert parsed.error is None
    assert parsed.documents == 3
    assert [(d.index, d.parsed.ref) for d in parsed.sealed] == [(1, ("apps", "db")),
                                                                (2, ("", "w"))]
    assert parsed.sealed[1].parsed.malformed_reason is None  # cluster-wide needs no namespace
    assert parsed.sealed[1].parsed.label == b""


def test_a_broken_file_yields_its_reason_and_never_its_content() -> None:
    parsed = manifests.parse_file("apps/x.yaml", b"password: hunter2\n  bad: [\n")
    assert parsed.sealed == []
    assert parsed.error is not None
    assert "apps/x.yaml" in parsed.error
    assert "hunter2" not in parsed.error
