"""The Git reseal step through GitResealer, with the real git CLI against a bare remote,
real keys, a real Store and keystore: byte-faithful files, one commit per job, push or
private ref, replays after a crash at each point, pending branches reused, verify."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from pathlib import Path

import pytest
from reseal_git_fixtures import (
    PLAINTEXT,
    Repo,
    git,
    hang_once,
    job_context,
    make_repo,
    new_job,
    settings_for,
)

from polling import eventually
from sealfleet.adapters.http_api import InventoryView, gitops
from sealfleet.adapters.store.records import GitSealedSecretRecord, ItemFact, JobRecord
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.reseal_git import GitResealer
from sealfleet.domain import documents, sealed_secrets, splice
from sealfleet.domain.jobs import StepState
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.planning.resealing import PlannedReseal
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState, StalenessPolicy
from sealfleet.errors import FleetError

JOB = "3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b"
OTHER_JOB = "aaaabbbbccccdddd0000111122223333"


@pytest.fixture
def repo(tmp_path: Path, rsa2048_keys: list[SealingKey]) -> Repo:
    old, _, new = rsa2048_keys
    return make_repo(tmp_path, old, new)


def branch_of(job_id: str, created: dt.datetime | None = None) -> str:
    """The branch a job makes: its creation day (UTC) and the first 8 of its id."""
    day = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    return f"sealfleet/reseal-{day:%Y%m%d}-{job_id[:8]}"


def _with_old_values(repo: Repo, path: str, content: bytes) -> bytes:
    """*content* with every encryptedData value span put back to the original's."""
    old = splice.locate(repo.files[path], source=path)
    new = splice.locate(content, source=path)
    text = new.text
    for old_doc, new_doc in sorted(zip(old.documents, new.documents, strict=True),
                                   key=lambda pair: -pair[1].index):
        for item, spot in sorted(new_doc.values.items(), key=lambda kv: -kv[1].start):
            text = text[:spot.start] + text[spot.start:spot.end].replace(
                spot.value, old_doc.values[item].value) + text[spot.end:]
    return text.encode()


async def test_a_reseal_pushes_one_commit_that_changes_only_ciphertext_spans(
        tmp_path: Path, repo: Repo) -> None:
    settings = settings_for(tmp_path, repo)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        entries = [repo.db, repo.blocky, repo.crlf, repo.api, repo.current]
        outcome = await GitResealer(ctx).reseal_step(job, "gitops", entries)
        verified = await GitResealer(ctx).verify(job, "gitops", outcome.detail)
    branch = branch_of(JOB, job.created_at)
    detail = outcome.detail
    assert outcome.state is StepState.DONE
    assert (detail["branch"], detail["pushed"], detail["replayed"]) == (branch, True, False)
    assert repo.remote_branches() == [branch]
    assert git("rev-parse", branch, cwd=repo.remote).strip() == detail["commit"]
    assert git("rev-list", "--count", f"main..{branch}", cwd=repo.remote).strip() == "1"
    assert detail["files_changed"] == ["apps/api.json", "apps/crlf.yaml", "apps/multi.yaml"]
    assert (detail["documents_resealed"], detail["items"], detail["verified_items"]) == (3, 4, 4)
    assert detail["skipped"] == ["gitops:apps/current.yaml#0"]
    (problem,) = detail["problems"]
    assert problem.startswith("apps/multi.yaml: document 2: spec.encryptedData.password: ")
    assert verified["documents"] == 3
    assert verified["verified_items"] == 4
    assert verified["commit"] == detail["commit"]
    assert verified["pushed"] is True

    message = git("log", "-1", "--format=%B", branch, cwd=repo.remote)
    old, new = repo.old.fingerprint, repo.new.fingerprint
    assert f"- apps/multi.yaml [1] prod/db: password, user: {old} -> {new}" in message
    assert f"Sealfleet-Job: {JOB}" in message
    history = git("log", "--all", "-p", cwd=repo.remote)
    assert PLAINTEXT.decode() not in history
    assert "admin" not in history
    assert PLAINTEXT.decode() not in json.dumps(detail)

    for path, original in repo.files.items():
        content = repo.show(branch, path)
        if path not in detail["files_changed"]:
            assert content == original, path          # untouched files untouched
            continue
        assert content != original
        # Byte-identical but for the ciphertext spans: comments, anchors, quoting, CRLF.
        assert _with_old_values(repo, path, content) == original, path
        for doc in documents.parse_documents(content, source=path):
            if doc.get("kind") != "SealedSecret" or doc["metadata"]["name"] == "blocky":
                continue
            opened = sealed_secrets.decrypt_items(doc, [repo.new.private_key])
            assert set(opened.values()) <= {PLAINTEXT, b"admin"}
    assert json.loads(repo.show(branch, "apps/api.json"))["spec"]["template"] == {
        "type": "Opaque"}                               # JSON stays JSON, indent kept
    assert b"\r\n" in repo.show(branch, "apps/crlf.yaml")
    # The user's checkout was not touched.
    assert git("status", "--porcelain", cwd=repo.tree) == ""
    assert git("branch", "--list", cwd=repo.tree).split() == ["*", "main"]


@pytest.mark.parametrize("remote", ["origin", None])
async def test_without_push_the_commit_stays_under_a_private_ref(
        tmp_path: Path, repo: Repo, remote: str | None) -> None:
    settings = settings_for(tmp_path, repo, push=False, remote=remote)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        resealer = GitResealer(ctx)
        outcome = await resealer.reseal_step(job, "gitops", [repo.db, repo.api])
        again = await resealer.reseal_step(job, "gitops", [repo.db, repo.api])
        verified = await resealer.verify(job, "gitops", outcome.detail)
    branch = branch_of(JOB, job.created_at)
    assert outcome.detail["pushed"] is False
    assert repo.remote_branches() == []
    ref = f"refs/sealfleet/jobs/{branch}"
    assert git("rev-parse", ref, cwd=repo.tree).strip() == outcome.detail["commit"]
    assert git("rev-list", "--count", f"main..{ref}", cwd=repo.tree).strip() == "1"
    assert again.detail["commit"] == outcome.detail["commit"]
    assert again.detail["replayed"]
    assert again.detail["documents"] == outcome.detail["documents"]
    assert verified["pushed"] is False
    assert verified["verified_items"] == 3
    assert git("status", "--porcelain", cwd=repo.tree) == ""


async def killed_when_git_hangs(ctx: JobContext, job: JobRecord, entries: list[PlannedReseal],
                                marker: Path) -> None:
    """The repository step, stopped where the daemon would die: once the hung git
    command (``hang_once``) has left its *marker*."""
    running = asyncio.create_task(GitResealer(ctx).reseal_step(job, "gitops", entries))

    async def hung() -> bool:
        return await asyncio.to_thread(marker.exists)
    await eventually(hung)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


@pytest.mark.parametrize("point", ["cat-file", "commit", "push", "worktree remove"])
async def test_a_replay_after_a_crash_makes_no_second_commit(
        tmp_path: Path, repo: Repo, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon dies while git runs *point*: before anything is written (cat-file:
    reading), with files written but not committed, committed but not pushed, pushed
    but not cleaned up.  The next start runs the step again."""
    settings = settings_for(tmp_path, repo)
    marker = tmp_path / "hung"
    monkeypatch.setenv("PATH", hang_once(tmp_path, point, marker))
    entries = [repo.db, repo.crlf, repo.api]
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        await killed_when_git_hangs(ctx, job, entries, marker)
    async with job_context(settings) as ctx:           # the next start: keys from the store
        resumed = await ctx.store.jobs.get_job(JOB)
        assert resumed is not None
        assert resumed.created_at == job.created_at
        job = resumed
        outcome = await GitResealer(ctx).reseal_step(job, "gitops", entries)
        verified = await GitResealer(ctx).verify(job, "gitops", outcome.detail)
    branch = branch_of(JOB, job.created_at)
    assert repo.remote_branches() == [branch]
    assert git("rev-list", "--count", f"main..{branch}", cwd=repo.remote).strip() == "1"
    assert git("rev-parse", branch, cwd=repo.remote).strip() == outcome.detail["commit"]
    assert outcome.detail["replayed"] is (point in ("push", "worktree remove"))
    assert outcome.detail["pushed"] is True
    assert outcome.detail["files_changed"] == ["apps/api.json", "apps/crlf.yaml",
                                               "apps/multi.yaml"]
    assert [(d["path"], d["document"], d["items"]) for d in outcome.detail["documents"]] == [
        ("apps/api.json", 0, ["key"]), ("apps/crlf.yaml", 0, ["token"]),
        ("apps/multi.yaml", 1, ["password", "user"])]
    assert verified["verified_items"] == 4


async def test_a_crash_mid_step_redoes_only_what_no_checkpoint_holds(
        tmp_path: Path, repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon dies while the step records its second checkpoint: the first staged
    batch (apps/api.json) is in a checkpoint and done in the job's journal.  The replay
    keeps that file as checkpointed (no RSA work for it: it is not resealed twice into
    another value), reseals the rest, and still makes one commit listing everything."""
    settings = settings_for(tmp_path, repo)
    marker = tmp_path / "hung"
    monkeypatch.setenv("PATH", hang_once(tmp_path, "commit-tree", marker, after=1))
    entries = [repo.db, repo.crlf, repo.api]
    refs = ["apps/api.json#0", "apps/crlf.yaml#0", "apps/multi.yaml#1"]
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        await ctx.store.jobs.create_job("reseal", {}, ["repo:gitops"], job_id=JOB,
                                        objects=[("repo:gitops", r) for r in refs])
        job = await ctx.store.jobs.get_job(JOB)
        assert job is not None
        await killed_when_git_hangs(ctx, job, entries, marker)
        marks = {o.ref: o.state for o in await ctx.store.jobs.step_objects(JOB, "repo:gitops")}
    assert marks == {"apps/api.json#0": "done", "apps/crlf.yaml#0": "planned",
                     "apps/multi.yaml#1": "planned"}
    branch = branch_of(JOB, job.created_at)
    checkpointed = git("rev-parse", f"refs/sealfleet/checkpoints/{branch}:apps/api.json",
                       cwd=repo.tree).strip()
    assert repo.remote_branches() == []
    async with job_context(settings) as ctx:           # the next start
        outcome = await GitResealer(ctx).reseal_step(job, "gitops", entries)
        verified = await GitResealer(ctx).verify(job, "gitops", outcome.detail)
        marks = {o.ref: o.state for o in await ctx.store.jobs.step_objects(JOB, "repo:gitops")}
    detail = outcome.detail
    assert (detail["carried_items"], detail["resealed_items"]) == (1, 3)
    assert repo.remote_branches() == [branch]
    assert git("rev-list", "--count", f"main..{branch}", cwd=repo.remote).strip() == "1"
    assert git("rev-parse", f"{branch}:apps/api.json", cwd=repo.remote).strip() == checkpointed
    assert detail["files_changed"] == ["apps/api.json", "apps/crlf.yaml", "apps/multi.yaml"]
    assert sorted((d["path"], d["document"], d["items"]) for d in detail["documents"]) == [
        ("apps/api.json", 0, ["key"]), ("apps/crlf.yaml", 0, ["token"]),
        ("apps/multi.yaml", 1, ["password", "user"])]
    message = git("log", "-1", "--format=%B", branch, cwd=repo.remote)
    assert "- apps/api.json [0] prod/api: key: " in message
    assert "Sealfleet-Checkpoint" not in message
    assert verified["verified_items"] == 4             # the carried file opened by verify
    assert marks == dict.fromkeys(refs, "done")
    assert git("for-each-ref", "refs/sealfleet/checkpoints/", cwd=repo.tree) == ""
    for path in ("apps/api.json", "apps/crlf.yaml", "apps/multi.yaml"):
        content = repo.show(branch, path)
        assert _with_old_values(repo, path, content) == repo.files[path], path
        for doc in documents.parse_documents(content, source=path):
            if doc.get("kind") == "SealedSecret" and doc["metadata"]["name"] != "blocky":
                opened = sealed_secrets.decrypt_items(doc, [repo.new.private_key])
                assert set(opened.values()) <= {PLAINTEXT, b"admin"}


async def test_a_checkpoint_that_cannot_be_recorded_does_not_stop_the_step(
        tmp_path: Path, repo: Repo) -> None:
    """A killed git left the checkpoint ref's lock behind: no checkpoint can be
    recorded, so none is, and the step makes its one commit all the same."""
    settings = settings_for(tmp_path, repo)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        branch = branch_of(JOB, job.created_at)
        lock = repo.tree / ".git" / "refs" / "sealfleet" / "checkpoints" / f"{branch}.lock"
        lock.parent.mkdir(parents=True)
        lock.write_text("")
        outcome = await GitResealer(ctx).reseal_step(job, "gitops",
                                                     [repo.db, repo.crlf, repo.api])
        verified = await GitResealer(ctx).verify(job, "gitops", outcome.detail)
    assert outcome.state is StepState.DONE
    assert (outcome.detail["checkpoints"], outcome.detail["resealed_items"]) == (0, 4)
    assert git("rev-list", "--count", f"main..{branch}", cwd=repo.remote).strip() == "1"
    assert verified["verified_items"] == 4


async def test_a_later_reseal_adds_to_the_pending_branch_instead_of_a_new_one(
        tmp_path: Path, repo: Repo) -> None:
    settings = settings_for(tmp_path, repo)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        resealer = GitResealer(ctx)
        first = await resealer.reseal_step(await new_job(ctx, JOB), "gitops",
                                           [repo.db, repo.crlf])
        # Not merged: the base still holds the old ciphertexts, so the next plan names
        # db and crlf again, and api, stale since.
        job = await new_job(ctx, OTHER_JOB)
        second = await resealer.reseal_step(job, "gitops", [repo.db, repo.crlf, repo.api])
        replay = await resealer.reseal_step(job, "gitops", [repo.db, repo.crlf, repo.api])
        verified = await resealer.verify(job, "gitops", second.detail)
        third = await resealer.reseal_step(await new_job(ctx, "cccc" * 8), "gitops",
                                           [repo.db, repo.api])
        rows = await ctx.store.git_pending.of_repo("gitops")
    branch = first.detail["branch"]
    assert repo.remote_branches() == [branch]           # no second branch
    assert second.detail["branch"] == branch == second.detail["reused_pending_branch"]
    assert second.detail["commit"] != first.detail["commit"]
    assert git("rev-list", "--count", f"main..{branch}", cwd=repo.remote).strip() == "2"
    assert git("rev-parse", f"{branch}~1", cwd=repo.remote).strip() == first.detail["commit"]
    assert second.detail["files_changed"] == ["apps/api.json"]
    assert sorted((p["ref"], p["branch"]) for p in second.detail["pending"]) == [
        ("gitops:apps/crlf.yaml#0", branch), ("gitops:apps/multi.yaml#1", branch)]
    assert replay.detail["commit"] == second.detail["commit"]
    assert replay.detail["replayed"]
    assert verified["documents"] == 1
    # Everything planned is done on the pending branch: nothing to commit.
    assert third.state is StepState.SKIPPED
    assert third.detail["commit"] is None
    assert third.detail["branch"] == branch
    assert len(third.detail["pending"]) == 2
    assert git("rev-list", "--count", f"main..{branch}", cwd=repo.remote).strip() == "2"
    assert sorted((r.path, r.document, r.branch) for r in rows) == [
        ("apps/api.json", 0, branch), ("apps/crlf.yaml", 0, branch),
        ("apps/multi.yaml", 1, branch)]


async def test_verify_fails_when_the_branch_no_longer_holds_the_commit(
        tmp_path: Path, repo: Repo) -> None:
    settings = settings_for(tmp_path, repo)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        outcome = await GitResealer(ctx).reseal_step(job, "gitops", [repo.db])
        branch = outcome.detail["branch"]
        git("update-ref", f"refs/heads/{branch}", "main", cwd=repo.remote)  # force-pushed away
        with pytest.raises(FleetError, match="does not hold the job's commit"):
            await GitResealer(ctx).verify(job, "gitops", outcome.detail)
        git("update-ref", "-d", f"refs/heads/{branch}", cwd=repo.remote)
        with pytest.raises(FleetError, match="not found on the remote"):
            await GitResealer(ctx).verify(job, "gitops", outcome.detail)


async def test_a_document_that_moved_in_its_file_is_reported_not_guessed(
        tmp_path: Path, repo: Repo) -> None:
    settings = settings_for(tmp_path, repo)
    moved = repo.entry("apps/multi.yaml", 2, "db", "password")     # db is document 1
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        outcome = await GitResealer(ctx).reseal_step(await new_job(ctx, JOB), "gitops",
                                                     [moved])
    assert outcome.state is StepState.SKIPPED
    assert outcome.detail["commit"] is None
    assert outcome.detail["problems"] == [
        "apps/multi.yaml: document 2: is prod/blocky, expected prod/db (the file changed "
        "since it was scanned)"]
    assert repo.remote_branches() == []


def _scanned(repo: Repo, entry_state: list[tuple[str, int, str, SecretState]],
             ) -> list[GitSealedSecretRecord]:
    """Documents as the repo scan records them from the base branch."""
    now = dt.datetime.now(dt.UTC)
    return [GitSealedSecretRecord(
        repo="gitops", path=path, document=index, namespace="prod", name=name,
        scope=Scope.STRICT, ciphertext_fingerprint=f"cf-{name}",
        items=(ItemFact("k", f"h-{name}", repo.old.fingerprint),), clusters=("prod",),
        state=state, observed_at=now) for path, index, name, state in entry_state]


async def test_the_report_names_the_pending_branch_until_it_is_merged(
        tmp_path: Path, repo: Repo) -> None:
    settings = settings_for(tmp_path, repo)
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        store = ctx.store
        first = await GitResealer(ctx).reseal_step(await new_job(ctx, JOB), "gitops",
                                                   [repo.db, repo.crlf])
        await store.git.upsert_repo("gitops", path=str(repo.tree))
        await store.git.apply_scan("gitops", files=[], documents=_scanned(repo, [
            ("apps/multi.yaml", 1, "db", SecretState.STALE),
            ("apps/crlf.yaml", 0, "windows", SecretState.STALE),
            ("apps/api.json", 0, "api", SecretState.STALE),
            ("apps/current.yaml", 0, "current", SecretState.CURRENT)]))
        view = InventoryView(store, policy=StalenessPolicy(dt.timedelta(days=30),
                                                           dt.timedelta(days=30)))
        branch = first.detail["branch"]
        (report_repo,) = (await view.rebuild()).report["repos"]
        assert report_repo["pending_branches"] == [{"name": branch, "documents": 2}]
        listed, _ = await store.git.list_sealed_secrets(repo="gitops")
        pending = await store.git_pending.branches_for([gitops.pending_key(d) for d in listed])
        assert {(d.path, gitops.git_entry(d, pending.get(gitops.pending_key(d)))
                 ["pending_branch"]) for d in listed} == {
            ("apps/multi.yaml", branch), ("apps/crlf.yaml", branch), ("apps/api.json", None),
            ("apps/current.yaml", None)}

        # Merged (the base moves to the branch): no longer pending; the next reseal of
        # the repository makes a new branch and forgets the old one's rows.
        git("update-ref", "refs/heads/main", branch, cwd=repo.remote)
        later = await GitResealer(ctx).reseal_step(await new_job(ctx, OTHER_JOB), "gitops",
                                                   [repo.api])
        assert later.detail["branch"] != branch
        assert later.detail["pending"] == []
        assert later.detail["reused_pending_branch"] is None
        (report_repo,) = (await view.rebuild()).report["repos"]
        assert report_repo["pending_branches"] == [
            {"name": later.detail["branch"], "documents": 1}]


async def test_a_deploy_key_from_the_config_reaches_ssh_and_the_push_lands(
        tmp_path: Path, repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    # An ``ssh`` on PATH that records how git called it and then serves the repository
    # locally (what sshd would run: git-upload-pack / git-receive-pack), so the remote is
    # a real ssh:// URL without a network.
    record = tmp_path / "ssh-calls"
    shim = tmp_path / "ssh-shim" / "ssh"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{record}"\n'
                    'for last; do :; done\nexec sh -c "$last"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim.parent}:{os.environ['PATH']}")
    git("remote", "set-url", "origin", f"ssh://git@localhost{repo.remote}", cwd=repo.tree)
    key_file = tmp_path / "deploy_key"
    key_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n"
                        "-----END OPENSSH PRIVATE KEY-----\n")
    key_file.chmod(0o600)
    settings = settings_for(tmp_path, repo, ssh_key_file="deploy_key",
                            known_hosts_file="known_hosts")
    async with job_context(settings, [repo.old, repo.new]) as ctx:
        job = await new_job(ctx, JOB)
        outcome = await GitResealer(ctx).reseal_step(job, "gitops", [repo.db])
        await GitResealer(ctx).verify(job, "gitops", outcome.detail)
    assert outcome.detail["pushed"] is True
    assert repo.remote_branches() == [branch_of(JOB, job.created_at)]
    calls = record.read_text().splitlines()
    assert calls
    assert all(f"-i {key_file} -o IdentitiesOnly=yes" in call for call in calls)
    assert all(f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in call for call in calls)
    assert any("git-receive-pack" in call for call in calls)     # the push went over it
    assert "not-a-real-key" not in "".join(calls) + json.dumps(outcome.detail)
