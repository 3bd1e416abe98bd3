"""RepoWriter.blob_ids_at and writing.blob_id against a real repository: the ids git
itself gives, None for what is not a regular file, glob characters taken literally."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sealfleet.adapters.git import cli, writing

ENV = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
       "GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@example.org",
       "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@example.org"}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True,
                          capture_output=True).stdout.decode().strip()


async def test_blob_ids_are_gits_and_paths_are_literal(tmp_path: Path) -> None:
    files = {"README.md": b"# apps\n", "apps/a.yaml": b"a: 1\n",
             "apps/[ab]/b.yaml": b"b: 2\r\n", "apps/a/b.yaml": b"decoy\n"}
    for path, content in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(content)
    (tmp_path / "apps" / "link.yaml").symlink_to("a.yaml")
    git("init", "-q", "-b", "main", ".", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    git("commit", "-qm", "seed", cwd=tmp_path)
    head = git("rev-parse", "HEAD", cwd=tmp_path)
    async with cli.Git() as opened:
        writer = writing.RepoWriter(opened, tmp_path, base_branch="main",
                                    worktrees_dir=tmp_path / "worktrees")
        found = await writer.blob_ids_at(head, ["README.md", "apps/[ab]/b.yaml",
                                                "apps/link.yaml", "apps/none.yaml", "apps"])
    assert found == {
        "README.md": git("rev-parse", "HEAD:README.md", cwd=tmp_path),
        "apps/[ab]/b.yaml": git("rev-parse", "HEAD:apps/[ab]/b.yaml", cwd=tmp_path),
        "apps/link.yaml": None, "apps/none.yaml": None, "apps": None}
    assert {path: writing.blob_id(content, head) for path, content in files.items()} == {
        path: git("rev-parse", f"HEAD:{path}", cwd=tmp_path) for path in files}
