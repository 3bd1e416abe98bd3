"""Resealing a repository's SealedSecret documents as one job step (``repo:<name>``).

The reseal job plans one step per repository and calls :meth:`GitResealer.reseal_step`
with the documents planned for it.  A step:

1. lists the pending ``sealfleet/reseal-*`` branches (below);
2. prepares a private worktree (:class:`RepoWriter`: the user's checkout is never
   touched) from ``base_branch`` (fetched from ``remote`` when one is set; without a
   remote the repository's own branch), or from the tip of the pending branch it adds to;
3. reads the planned files from that commit, reseals only the planned documents' items
   not sealed with the target key yet (old key from the keystore; new ciphertext for the
   target's certificate, same label), splices only the ciphertext spans, parses the
   result again and opens every new value with the target's private key when sealfleet
   holds it (:mod:`git_files`); a file that fails any check is not written;
4. writes the changed files only and makes one commit for the job (message: files,
   objects, items, old and new key fingerprints, a ``Sealfleet-Job`` trailer; never a
   value), and pushes it when ``push = true`` (the commit also stays under the private
   ref ``refs/sealfleet/jobs/<branch>``).

Values the splice cannot rewrite safely (block or multi-line scalars, anchors, aliases,
tags, legacy ``spec.data``), documents that moved in their file since the scan and
files that do not parse are reported in the step detail (``problems``), never guessed at.

**Replays.**  The job's commit is found by its trailer on the remote branch or under the
private ref (:meth:`RepoWriter.job_commit`), whichever branch it is on (its own or a
pending one it added to): a re-run after a crash at any point makes no second commit,
pushes the found one if it was not pushed, and reports it as the first run would have
(the detail is read back from the commit: its files and its message).

**Checkpoints and the journal.**  Before the commit, the files are staged in batches
while the RSA work goes on, and a staged batch is recorded as a checkpoint (at most
every few seconds, and once at the end: ``writing.RepoWriter.checkpoint``, a private
ref never pushed, with no ``Sealfleet-Job`` trailer).  Once a checkpoint is recorded,
its documents are marked ``done`` in the job's per-object journal (``job_objects``), in
one transaction per checkpoint: the job document's progress moves while the step runs.
A re-run after a crash before the commit starts from the last checkpoint of the same
start commit: the files it holds are kept as they are (not resealed again, so no
document gets a second, different ciphertext) and only the rest is resealed; the detail
counts ``carried_items`` and ``resealed_items``.  The checkpoint is what a replay trusts
(a journal mark without one, say a deleted ref, only means that document is redone);
the job's one commit is made on the start commit as before, and the checkpoint ref is
deleted with it.

**Pending branches.**  Until someone merges a reseal branch, ``base_branch`` still holds
the old ciphertexts and the inventory still calls those documents stale.  A branch is
*pending* while it has commits the base does not (``base..branch`` is not empty):
with ``push = true`` the remote's ``sealfleet/reseal-*`` branches (a branch deleted on
the remote without merging is given up), otherwise the private refs as well.  A planned
document counts as *already done* on a pending branch when that branch touched its file
and, read from the branch tip, the document is the same object (index, namespace and
name) with every item opening with the target key (one RSA unwrap per item: this needs
the target's private key; without it a document never counts as done).  Then:

- documents done on a pending branch are not resealed again; the step reports them
  with the branch (``pending``);
- the remaining documents (stale since) go, in a new commit, onto the pending branch
  that holds most of the planned documents (newest on a tie), which is pushed as a
  fast-forward; only when no planned document is done anywhere is a new branch made.

Each step records what it found and made in ``store.git_pending`` (migration 0008's
``git_pending_reseals``) and drops the rows of branches no longer pending, so the
staleness listing names the branch beside each document still stale on the base.

:meth:`GitResealer.verify` reads what the repository shows: the branch (on the remote
when pushed, else the private ref) holds the job's commit, and every document it
resealed is there as the step checked it.  The step already opened every new value
with the target key before writing its file, and records the blob id of each file
whose values it all opened (``checked_blobs``); a file the branch shows with that very
blob holds those very values, so verify compares blob ids (``git cat-file
--batch-check``, no content read) instead of decrypting every item a third time.  A
file with another blob (edited on the branch since, or the step could not open it: the
target's private key not held, or a replay whose detail was read back from the commit)
is parsed and its items are opened with the target key, as before; a value changed or
reverted on the branch fails there.  Its detail counts ``unchanged_documents`` and
``decrypted_items``; both details carry ``seconds`` per phase.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import structlog

from sealfleet.adapters.git import cli
from sealfleet.adapters.store.job_objects import JobObject
from sealfleet.adapters.store.records import JobRecord, JsonObject, JsonValue
from sealfleet.app.config import RepoSettings
from sealfleet.app.jobs import git_files
from sealfleet.app.jobs.context import JobContext
from sealfleet.app.jobs.executor import StepOutcome
from sealfleet.app.jobs.git_pipeline import Clock
from sealfleet.app.jobs.git_repo import RepoKeys, RepoRun, branch_ahead
from sealfleet.app.jobs.reseal_journal import document_ref
from sealfleet.domain.jobs import StepState
from sealfleet.domain.planning.resealing import PlannedReseal, Source
from sealfleet.errors import PermanentError

log = structlog.get_logger(__name__)

_SHOWN = 5   # mismatches named in a verify error before "and N more"


def credentials_of(repo: RepoSettings) -> cli.Credentials:
    """How git authenticates to *repo*'s remote (paths only; git reads the files)."""
    return cli.Credentials(ssh_key_file=repo.ssh_key_file,
                           known_hosts_file=repo.known_hosts_file,
                           token_file=repo.token_file, username=repo.token_username)


class GitResealer:
    """Reseal steps and their verification for the configured ``[[repos]]``."""

    # One step at a time per repository (two jobs, or a step and a verify): they share
    # its private refs and worktrees.
    _locks: ClassVar[dict[str, asyncio.Lock]] = {}

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    def _repo(self, name: str) -> RepoSettings:
        for repo in self._ctx.settings().repos:
            if repo.name == name:
                return repo
        raise PermanentError(f"no repository named {name!r} in the config")

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _worktrees(self, repo: RepoSettings) -> Path:
        return self._ctx.settings().store.database.parent / "worktrees" / repo.name

    async def _run(self, git: cli.Git, repo: RepoSettings) -> RepoRun:
        return await RepoRun.open(git, repo, self._worktrees(repo))

    async def reseal_step(self, job: JobRecord, repo: str,
                          entries: Sequence[PlannedReseal]) -> StepOutcome:
        """Reseal *entries* (the documents planned for *repo*) in one commit for *job*."""
        settings = self._repo(repo)
        planned = [e for e in entries
                   if e.source is Source.GIT and e.repo == repo and e.path is not None]
        day = job.created_at.astimezone(dt.UTC).date()
        step = f"repo:{repo}"

        async def durable(entries: Sequence[PlannedReseal]) -> None:
            # Checkpointed: a replay keeps these, so the journal counts them done now.
            if entries:
                await self._ctx.store.jobs.update_objects(job.id, [
                    JobObject(step, document_ref(e.path, e.document), "done",
                              outcome="resealed") for e in entries])
        async with self._lock(repo), cli.Git(credentials=credentials_of(settings)) as git:
            run = await self._run(git, settings)
            keys = await RepoKeys.load(self._ctx, planned)
            detail = await run.reseal(job.id, day, planned, keys, durable)
            with Clock(detail.seconds)("record"):
                await run.record_pending(self._ctx.store, job.id, detail, keys)
        state = StepState.DONE if detail.commit is not None else StepState.SKIPPED
        log.info("git_reseal_step_done", repo=repo, job=job.id, branch=detail.branch,
                 commit=detail.commit, pushed=detail.pushed,
                 documents=len(detail.documents), problems=len(detail.problems),
                 pending=len(detail.pending))
        return StepOutcome(state, detail.to_json(repo))

    async def verify(self, job: JobRecord, repo: str, detail: JsonObject) -> JsonObject:
        """What the repository shows for the step's *detail*; a FleetError on mismatch.

        The branch must hold the job's commit, and each resealed document must be there
        as the step checked it: a file whose blob is the one the step wrote after
        opening every new value with the target key (``checked_blobs``) is not opened
        again; any other is parsed and its items opened with the target key.
        """
        settings = self._repo(repo)
        recorded = recorded_detail(detail)
        if recorded.commit is None or recorded.branch is None:
            return {"repo": repo, "branch": recorded.branch, "commit": None, "tip": None,
                    "pushed": False, "documents": 0, "items": 0, "verified_items": 0,
                    "unverified_items": 0, "unchanged_documents": 0, "decrypted_items": 0,
                    "pending": recorded.pending}
        clock = Clock()
        async with self._lock(repo), cli.Git(credentials=credentials_of(settings)) as git:
            run = await self._run(git, settings)
            with clock("fetch"):
                tip = await run.writer.branch_tip(recorded.branch, on_remote=recorded.pushed)
                where = "the remote" if recorded.pushed else "the private ref"
                if tip is None:
                    raise PermanentError(f"repo {repo}: branch {recorded.branch} not found "
                                         f"on {where}")
                if not await branch_ahead(run.writer, recorded.commit, tip):
                    raise PermanentError(f"repo {repo}: branch {recorded.branch} on {where} "
                                         f"does not hold the job's commit {recorded.commit}")
            keys = await RepoKeys.load(self._ctx, ())
            with clock("check"):
                checks = await run.verify_documents(tip, recorded.documents,
                                                    recorded.checked_blobs, keys)
        wrong = [c.problem for c in checks if c.problem is not None]
        if wrong:
            more = f" and {len(wrong) - _SHOWN} more" if len(wrong) > _SHOWN else ""
            raise PermanentError(f"repo {repo}: branch {recorded.branch}: "
                                 + "; ".join(wrong[:_SHOWN]) + more)
        return {"repo": repo, "branch": recorded.branch, "commit": recorded.commit,
                "tip": tip, "pushed": recorded.pushed, "documents": len(checks),
                "items": sum(len(d.items) for d in recorded.documents),
                "verified_items": sum(c.verified_items for c in checks),
                "unverified_items": sum(c.unverified_items for c in checks),
                "unchanged_documents": sum(c.unchanged for c in checks),
                "decrypted_items": sum(c.verified_items for c in checks if not c.unchanged),
                "pending": recorded.pending,
                "seconds": {name: round(value, 3) for name, value in clock.seconds.items()}}


@dataclass(frozen=True)
class _Recorded:
    branch: str | None
    commit: str | None
    pushed: bool
    documents: tuple[git_files.ResealedDocument, ...]
    pending: int
    checked_blobs: dict[str, str]


def _document(entry: JsonValue) -> git_files.ResealedDocument:
    if not isinstance(entry, dict):
        raise PermanentError("the step detail lists a malformed document")
    path, index, namespace = entry.get("path"), entry.get("document"), entry.get("namespace")
    name, target, items = entry.get("name"), entry.get("target_key"), entry.get("items")
    if not (isinstance(path, str) and isinstance(index, int) and isinstance(namespace, str)
            and isinstance(name, str) and isinstance(target, str) and isinstance(items, list)
            and all(isinstance(i, str) for i in items)):
        raise PermanentError("the step detail lists a malformed document")
    return git_files.ResealedDocument(path, index, namespace, name, target,
                                      tuple(str(i) for i in items))


def recorded_detail(detail: JsonObject) -> _Recorded:
    """The parts of a step detail verify reads (a malformed one is a PermanentError)."""
    branch, commit, pushed = detail.get("branch"), detail.get("commit"), detail.get("pushed")
    documents, pending = detail.get("documents", []), detail.get("pending", [])
    blobs = detail.get("checked_blobs", {})   # absent in a detail from before it existed
    if not (isinstance(branch, str | None) and isinstance(commit, str | None)
            and isinstance(pushed, bool) and isinstance(documents, list)
            and isinstance(pending, list) and isinstance(blobs, dict)
            and all(isinstance(b, str) for b in blobs.values())):
        raise PermanentError("the step detail is not a Git reseal step's")
    return _Recorded(branch, commit, pushed, tuple(_document(d) for d in documents),
                     len(pending), {path: str(blob) for path, blob in blobs.items()})
