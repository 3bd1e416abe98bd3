"""The Git step's final check (GitResealer.verify) against what the bare remote really
holds: a branch showing the blobs the step checked passes without opening anything
again; a file changed on the branch since is opened with the target key; a ciphertext
altered on the branch fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from reseal_git_fixtures import Repo, git, job_context, make_repo, new_job, settings_for

from sealfleet.app.jobs.reseal_git import GitResealer
from sealfleet.domain import splice
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import FleetError

JOB = "5c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f"


@pytest.fixture
def repo(tmp_path: Path, rsa2048_keys: list[SealingKey]) -> Repo:
    old, _, new = rsa2048_keys
    return make_repo(tmp_path, old, new)


def _push_on_top(repo: Repo, branch: str, path: str, content: bytes) -> None:
    """Someone commits *content* to *path* on top of *branch* and pushes (a fast-forward:
    the branch still holds the job's commit)."""
    git("fetch", "-q", "origin", branch, cwd=repo.tree)
    git("checkout", "-q", "--detach", "FETCH_HEAD", cwd=repo.tree)
    (repo.tree / path).write_bytes(content)
    git("commit", "-qam", "edit on the reseal branch", cwd=repo.tree)
    git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=repo.tree)


def _old_ciphertext(repo: Repo, path: str, content: bytes) -> bytes:
    """*content* with its first encryptedData value put back to the base branch's (a
    revert to the value sealed with the old key)."""
    old = splice.locate(repo.files[path], source=path).documents[0]
    new = splice.locate(content, source=path)
    document = new.documents[0]
    spot = next(iter(document.values.values()))
    text = new.text
    return (text[:spot.start] + text[spot.start:spot.end].replace(
        spot.value, old.values[spot.item].value) + text[spot.end:]).encode()


async def test_an_untouched_branch_passes_without_opening_any_value_again(
        tmp_path: Path, repo: Repo) -> None:
    settings = settings_for(tmp_path, repo)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        outcome = await GitResealer(ctx).reseal_step(job, "gitops",
                                                     [repo.db, repo.crlf, repo.api])
        verified = await GitResealer(ctx).verify(job, "gitops", outcome.detail)
    detail = outcome.detail
    branch = detail["branch"]
    # The blob ids the step recorded are the ones git holds for the files it checked.
    assert detail["checked_blobs"] == {
        path: git("rev-parse", f"{branch}:{path}", cwd=repo.remote).strip()
        for path in ("apps/api.json", "apps/crlf.yaml", "apps/multi.yaml")}
    assert detail["verified_items"] == 4          # opened by the step, before the write
    assert (verified["documents"], verified["unchanged_documents"]) == (3, 3)
    assert (verified["verified_items"], verified["decrypted_items"]) == (4, 0)
    assert verified["unverified_items"] == 0


async def test_a_file_changed_on_the_branch_is_opened_and_an_altered_ciphertext_fails(
        tmp_path: Path, repo: Repo) -> None:
    settings = settings_for(tmp_path, repo)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        outcome = await GitResealer(ctx).reseal_step(job, "gitops",
                                                     [repo.db, repo.crlf, repo.api])
        branch = outcome.detail["branch"]
        path = "apps/crlf.yaml"
        resealed = repo.show(branch, path)

        # A comment added on the branch: another blob, the same values; opened again.
        _push_on_top(repo, branch, path, b"# reviewed\r\n" + resealed)
        verified = await GitResealer(ctx).verify(job, "gitops", outcome.detail)
        assert (verified["unchanged_documents"], verified["decrypted_items"]) == (2, 1)
        assert verified["verified_items"] == 4

        # The ciphertext put back to the one sealed with the old key: verify fails.
        _push_on_top(repo, branch, path, _old_ciphertext(repo, path, resealed))
        assert git("merge-base", "--is-ancestor", outcome.detail["commit"], branch,
                   cwd=repo.remote) == ""                 # still holds the job's commit
        with pytest.raises(FleetError, match=re.escape(
                f"{path}: document 0: item(s) token not sealed with {repo.new.fingerprint}")):
            await GitResealer(ctx).verify(job, "gitops", outcome.detail)

        # A value garbled in place (same length, still base64): verify fails too.
        spot = splice.locate(resealed, source=path).documents[0].values["token"]
        garbled = spot.value[:40] + ("A" if spot.value[40] != "A" else "B") + spot.value[41:]
        _push_on_top(repo, branch, path, resealed.replace(spot.value.encode(),
                                                          garbled.encode()))
        with pytest.raises(FleetError, match=re.escape(
                f"{path}: document 0: item(s) token not sealed with")):
            await GitResealer(ctx).verify(job, "gitops", outcome.detail)
