"""One repository's part of a Git reseal step: branches, files, the commit, the push.

:class:`RepoRun` does what :mod:`reseal_git` describes for one ``[[repos]]`` entry with
one :class:`RepoWriter`; the RSA work runs on a thread pool sized to the CPUs
(:mod:`git_files`), every file queued at once, and the files it changed are staged
from memory and checkpointed in batches while it goes on (:mod:`git_pipeline`; a
re-run after a crash keeps what the checkpoints hold, :mod:`git_checkpoints`), so that
little but the commit and the push (overlapped with the worktree's removal) is left
when the last item is resealed.  Paths in plans and details are relative to the
configured tree, which may be a subdirectory of its repository (the writer's paths
carry the prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sealfleet.adapters.git import cli, writing
from sealfleet.adapters.store import Store
from sealfleet.adapters.store.git_pending import PendingReseal
from sealfleet.adapters.store.records import JsonObject, JsonValue
from sealfleet.app.config import RepoSettings
from sealfleet.app.jobs import git_checkpoints, git_files, git_pipeline
from sealfleet.app.jobs.context import JobContext
from sealfleet.domain.keys import SealingKey, load_certificate
from sealfleet.domain.planning.resealing import PlannedReseal
from sealfleet.domain.resealing import KeyRing, TargetKey
from sealfleet.errors import FleetError, InputError, PermanentError


@dataclass(frozen=True)
class RepoKeys:
    """The keys a step works with: every held private key (to open old items), the
    targets' certificates (to seal for), and the targets whose private key is held."""

    keyring: KeyRing
    targets: Mapping[str, TargetKey]
    held: Mapping[str, SealingKey]

    @classmethod
    async def load(cls, ctx: JobContext, planned: Sequence[PlannedReseal]) -> RepoKeys:
        await ctx.keystore.materialize()
        loaded = ctx.keystore.loaded_keys()
        held = {key.fingerprint: key for key in loaded}
        targets: dict[str, TargetKey] = {}
        wanted = {entry.target_key for entry in planned}
        for fingerprint in wanted & set(held):
            targets[fingerprint] = held[fingerprint].certificate
        if wanted - set(held):
            for record in await ctx.store.keys.list_keys():
                if record.fingerprint in wanted - set(held) and record.certificate_pem:
                    try:
                        targets[record.fingerprint] = load_certificate(
                            record.certificate_pem.encode())
                    except InputError:
                        continue   # reported per document: no certificate of the target
        return cls(KeyRing(loaded), targets, held)


@dataclass(frozen=True)
class Branch:
    """A pending branch and where its tip is (the remote, or only the private ref)."""

    pending: writing.PendingBranch
    on_remote: bool

    @property
    def name(self) -> str:
        return self.pending.name


@dataclass
class StepDetail:
    """What a step did (names, paths and fingerprints only)."""

    branch: str | None = None
    base: str | None = None
    commit: str | None = None
    pushed: bool = False
    reused_pending_branch: str | None = None
    replayed: bool = False
    files_changed: list[str] = field(default_factory=list)
    documents: list[git_files.ResealedDocument] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pending: list[tuple[PlannedReseal, Branch]] = field(default_factory=list)
    verified_items: int = 0
    unverified_items: int = 0
    resealed_items: int = 0      # resealed by this run (RSA decrypt, encrypt, check)
    carried_items: int = 0       # kept from the checkpoints of a crashed run of the job
    checkpoints: int = 0         # checkpoints this run recorded
    # tree path -> blob id of the content the step checked, for files whose every new
    # value it opened with the target key: verify compares the branch with these.
    checked_blobs: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)   # per phase (git_pipeline.Clock)

    def to_json(self, repo: str) -> JsonObject:
        documents: list[JsonValue] = [
            {"path": d.path, "document": d.document, "namespace": d.namespace,
             "name": d.name, "target_key": d.target_key, "items": list(d.items)}
            for d in self.documents]
        pending: list[JsonValue] = [
            {"ref": entry.ref, "path": entry.path or "", "document": entry.document,
             "namespace": entry.namespace, "name": entry.name, "branch": branch.name,
             "commit": branch.pending.commit} for entry, branch in self.pending]
        return {
            "repo": repo, "branch": self.branch, "base": self.base, "commit": self.commit,
            "pushed": self.pushed, "reused_pending_branch": self.reused_pending_branch,
            "replayed": self.replayed, "files_changed": list(self.files_changed),
            "documents_resealed": len(self.documents),
            "items": sum(len(d.items) for d in self.documents),
            "verified_items": self.verified_items, "unverified_items": self.unverified_items,
            "resealed_items": self.resealed_items, "carried_items": self.carried_items,
            "checkpoints": self.checkpoints,
            "documents": documents, "problems": list(self.problems),
            "skipped": list(self.skipped), "pending": pending,
            "checked_blobs": dict(self.checked_blobs),
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
        }


async def branch_ahead(writer: writing.RepoWriter, commit: str, tip: str) -> bool:
    """*tip* is *commit* or has it in its history."""
    return tip == commit or await writer.is_ancestor(commit, tip)


def _parse_message(message: str, files: Iterable[str]) -> list[git_files.ResealedDocument]:
    """The documents a job's commit message lists (``writing.message_changes``), those
    resealed with one target key."""
    changed, target = set(files), git_checkpoints.target_of
    return [git_files.ResealedDocument(path, d.index, d.namespace, d.name, target(d),
                                       tuple(c.item for c in d.changes))
            for path, listed in writing.message_changes(message).items() if path in changed
            for d in listed if target(d)]


class RepoRun:
    """One step's work on one repository (see :mod:`reseal_git`)."""

    def __init__(self, git: cli.Git, repo: RepoSettings, writer: writing.RepoWriter,
                 prefix: str) -> None:
        self.git = git
        self.repo = repo
        self.writer = writer
        self._prefix = prefix      # the tree's path inside its repository ("" or "a/b/")
        self._pending: set[str] = set()   # pending branch names, as the step last listed

    @classmethod
    async def open(cls, git: cli.Git, repo: RepoSettings, worktrees: Path) -> RepoRun:
        base = repo.base_branch
        if base is None:
            current = await git.run("symbolic-ref", "-q", "--short", "HEAD", cwd=repo.path,
                                    ok_codes=(0, 1))
            base = current.stdout.decode("utf-8", "replace").strip()
            if current.returncode or not base:
                raise PermanentError(f"repo {repo.name}: {repo.path} has a detached HEAD and "
                                     "no base_branch is set: nothing to branch from")
        prefix = await git.run("rev-parse", "--show-prefix", cwd=repo.path)
        writer = writing.RepoWriter(git, repo.path, base_branch=base, worktrees_dir=worktrees,
                                    remote=repo.remote or ".")
        return cls(git, repo, writer, prefix.stdout.decode("utf-8", "surrogateescape").strip())

    @property
    def _pushes(self) -> bool:
        return self.repo.push and self.repo.remote is not None

    def _in_repo(self, path: str) -> str:
        return self._prefix + path

    def _in_tree(self, path: str) -> str:
        return path.removeprefix(self._prefix)

    # ------------------------------------------------------------ pending branches

    async def branches(self) -> tuple[dict[str, Branch], dict[str, Branch]]:
        """(pending branches, branches with a commit not pushed yet): see the module
        docstring of :mod:`reseal_git` for what counts as pending."""
        pending: dict[str, Branch] = {}
        if self.repo.remote is not None:
            for branch in await self.writer.pending_branches():
                if branch.job_ids:
                    pending[branch.name] = Branch(branch, on_remote=True)
        unpushed: dict[str, Branch] = {}
        for branch in await self.writer.local_branches(fetch=self.repo.remote is None):
            if not branch.job_ids:
                continue                                   # merged
            known = pending.get(branch.name)
            if known is not None:
                if known.pending.commit != branch.commit and await self.writer.is_ancestor(
                        known.pending.commit, branch.commit):
                    unpushed[branch.name] = Branch(branch, on_remote=False)  # ahead locally
                continue
            if self._pushes:
                unpushed[branch.name] = Branch(branch, on_remote=False)
            else:
                pending[branch.name] = Branch(branch, on_remote=False)
        return pending, unpushed

    async def covered(self, branches: Iterable[Branch], planned: Sequence[PlannedReseal],
                      keys: RepoKeys) -> dict[str, Branch]:
        """entry ref -> the newest pending branch on which it is done already."""
        found: dict[str, Branch] = {}
        for branch in sorted(branches, key=lambda b: b.name, reverse=True):
            touched = set(branch.pending.files)
            candidates = [e for e in planned if e.ref not in found and e.path is not None
                          and self._in_repo(e.path) in touched and e.target_key in keys.held]
            if not candidates:
                continue
            contents = await self.writer.read_files_at(
                branch.pending.commit, sorted({self._in_repo(e.path or "") for e in candidates}))

            def done(entry: PlannedReseal, contents: Mapping[str, bytes | None] = contents,
                     ) -> bool:
                path = entry.path or ""
                return git_files.sealed_with_target(
                    path, contents.get(self._in_repo(path)), entry, keys.held[entry.target_key])
            answers = await git_pipeline.on_threads(candidates,
                                                    lambda chunk: [done(e) for e in chunk])
            found.update({e.ref: branch for e, yes in zip(candidates, answers, strict=True)
                          if yes})
        return found

    # ------------------------------------------------------------ the step

    async def reseal(self, job_id: str, day: dt.date, planned: Sequence[PlannedReseal],
                     keys: RepoKeys, durable: git_pipeline.DurableEntries | None = None,
                     ) -> StepDetail:
        """The step; *durable* is told, batch by batch, the planned documents that a
        checkpoint holds (resealed, checked and recorded in the repository)."""
        clock = git_pipeline.Clock()
        with clock("branches"):
            pending, unpushed = await self.branches()
            self._pending = set(pending)
            mine = next((b for b in [*unpushed.values(), *pending.values()]
                         if job_id in b.pending.job_ids), None)
            covered = await self.covered(pending.values(), planned, keys)
        onto = mine
        if onto is None and covered:
            tally: dict[str, int] = {}
            for branch in covered.values():
                tally[branch.name] = tally.get(branch.name, 0) + 1
            best = max(tally.items(), key=lambda kv: (kv[1], kv[0]))[0]
            onto = pending[best]
        detail = StepDetail(seconds=clock.seconds)
        todo = [e for e in planned if e.ref not in covered]
        if mine is None and not todo:
            detail.pending = [(e, covered[e.ref]) for e in planned]
            detail.branch = onto.name if onto else None
            return detail
        with clock("prepare"):
            workspace = await self.writer.prepare(job_id, day,
                                                  onto=onto.name if onto is not None else None)
        removed = False
        try:
            detail.branch, detail.base = workspace.branch, workspace.base
            own = writing.branch_name(job_id, day)
            detail.reused_pending_branch = None if workspace.branch == own else workspace.branch
            if workspace.commit is not None:
                detail.replayed = True
                detail.commit = workspace.commit
                detail.files_changed, detail.documents = await self._summary(workspace.commit)
            else:
                await self._reseal_files(workspace, job_id, todo, keys, detail, clock,
                                         durable)
            detail.pushed = workspace.pushed
            if detail.commit is not None and self._pushes and not workspace.pushed:
                await self._push_and_remove(workspace, detail.commit, clock)
                removed = detail.pushed = True
        finally:
            if not removed:
                with clock("cleanup"):
                    await self.writer.cleanup(workspace)
        done = {(d.path, d.document) for d in detail.documents}
        detail.pending = [(e, b) for ref, b in covered.items()
                          for e in planned if e.ref == ref and (e.path, e.document) not in done]
        return detail

    async def _push_and_remove(self, workspace: writing.Workspace, commit: str,
                               clock: git_pipeline.Clock) -> None:
        """Push *commit* while the worktree is removed (the push reads only the object
        store): the step's tail is the longer of the two, not their sum."""
        async def remove() -> None:
            with clock("cleanup"):
                await self.writer.cleanup(workspace)
        removal = asyncio.create_task(remove(), name="reseal-git:cleanup")
        try:
            with clock("push"):
                await self.writer.push(workspace, commit)
            await removal
        except BaseException:
            removal.cancel()
            with contextlib.suppress(asyncio.CancelledError, FleetError):
                await removal
            raise

    async def _reseal_files(self, workspace: writing.Workspace, job_id: str,
                            todo: Sequence[PlannedReseal], keys: RepoKeys,
                            detail: StepDetail, clock: git_pipeline.Clock,
                            durable: git_pipeline.DurableEntries | None) -> None:
        by_path: dict[str, list[PlannedReseal]] = {}
        for entry in todo:
            by_path.setdefault(entry.path or "", []).append(entry)
        carry = git_checkpoints.carry(workspace, by_path, self._in_tree)
        carried = set(carry.documents)
        detail.carried_items = carry.items
        detail.documents.extend(d for docs in carry.documents.values() for d in docs)
        if durable is not None and carry.entries:
            await durable(carry.entries)
        paths = sorted(p for p in by_path if by_path[p])
        with clock("read"):
            contents = await self.writer.read_files(
                workspace, [self._in_repo(p) for p in paths if p not in carried])
            if workspace.checkpoint is not None and any(p in carried for p in paths):
                contents.update(await self.writer.read_files_at(
                    workspace.checkpoint, [self._in_repo(p) for p in paths if p in carried]))

        def one(path: str) -> git_files.FileResult:
            return git_files.reseal_one_file(path, contents.pop(self._in_repo(path)),
                                             by_path[path], keys.targets, keys.keyring,
                                             keys.held)
        changes: list[writing.FileChange] = []
        checked: dict[str, bytes] = {}

        async def written(batch: Sequence[writing.FileChange]) -> None:
            if durable is not None:
                await durable([e for change in batch for e in git_checkpoints.entries_of(
                    change, by_path.get(self._in_tree(change.path), []))])
        writes = git_pipeline.Writes(self.writer, workspace, clock, job_id=job_id,
                                     batch=git_pipeline.write_batch(len(paths)),
                                     durable=written)
        try:
            with clock("reseal"):   # the RSA threads; writes and stages overlap it
                async with contextlib.aclosing(git_pipeline.iter_on_threads(
                        paths, lambda chunk: [one(p) for p in chunk])) as results:
                    async for result in results:
                        detail.problems.extend(result.problems)
                        detail.skipped.extend(result.skipped)
                        if result.content is None:
                            continue
                        change = writing.FileChange(self._in_repo(result.path), result.content,
                                                    result.documents)
                        changes.append(change)
                        await writes.add(change)
                        detail.verified_items += result.verified_items
                        detail.unverified_items += result.unverified_items
                        if result.unverified_items == 0 and result.path not in carried:
                            checked[result.path] = result.content  # (carried: verify opens)
                        detail.documents.extend(_resealed(result))
                        detail.resealed_items += sum(len(d.items) for d in _resealed(result))
            with clock("write_stage_tail"):   # what is left once the last file is resealed
                await writes.finish()
        finally:
            await writes.close()
        detail.checkpoints = writes.checkpoints
        changes = git_checkpoints.merged(carry.changes, changes)
        if not changes:
            return
        with clock("commit"):
            detail.commit = await self.writer.commit(workspace, job_id, changes)
        if detail.commit is not None:
            detail.files_changed = [self._in_tree(c.path) for c in changes]
            detail.checked_blobs = {path: writing.blob_id(content, detail.commit)
                                    for path, content in checked.items()}

    async def _summary(self, commit: str) -> tuple[list[str], list[git_files.ResealedDocument]]:
        """A found commit's files and the documents its message lists (a replay)."""
        message = await self.git.run("log", "-1", "--format=%B", commit, cwd=self.repo.path)
        listed = await self.git.run("diff-tree", "--no-commit-id", "--name-only", "-r", "-z",
                                    commit, cwd=self.repo.path)
        files = [self._in_tree(p) for p in listed.stdout.decode("utf-8", "surrogateescape")
                 .split("\0") if p]
        in_repo = {self._in_repo(p) for p in files}
        documents = [git_files.ResealedDocument(self._in_tree(d.path), d.document, d.namespace,
                                                d.name, d.target_key, d.items)
                     for d in _parse_message(message.stdout.decode("utf-8", "replace"),
                                             in_repo)]
        return files, documents

    # ------------------------------------------------------------ store and verify

    async def record_pending(self, store: Store, job_id: str, detail: StepDetail,
                             keys: RepoKeys) -> None:
        """The documents waiting on pending branches (made or found by this step)."""
        rows = [PendingReseal(self.repo.name, d.path, d.document, d.namespace, d.name,
                              detail.branch, detail.commit, d.target_key, job_id)
                for d in detail.documents if detail.branch and detail.commit]
        rows += [PendingReseal(self.repo.name, e.path or "", e.document, e.namespace, e.name,
                               b.name, b.pending.commit, e.target_key, job_id)
                 for e, b in detail.pending if e.document is not None]
        names = set(self._pending)
        if detail.branch is not None and detail.commit is not None:
            names.add(detail.branch)
        await store.git_pending.record(self.repo.name, rows, pending=names)

    async def verify_documents(self, tip: str, documents: Sequence[git_files.ResealedDocument],
                               checked_blobs: Mapping[str, str], keys: RepoKeys,
                               ) -> list[git_files.DocumentCheck]:
        """What *tip* shows for each resealed document.  A file whose blob at *tip* is
        the one the step checked (every new value opened with the target key before it
        was written) holds those very values: nothing to decrypt again.  Any other file
        (changed on the branch since, or one the step could not open, or a replay whose
        detail was read back from the commit) is parsed and its items are opened with
        the target key (:func:`git_files.check_document`)."""
        paths = sorted({d.path for d in documents})
        blobs = await self.writer.blob_ids_at(tip, [self._in_repo(p) for p in paths])
        same = {p for p in paths
                if p in checked_blobs and blobs.get(self._in_repo(p)) == checked_blobs[p]}
        rest = [d for d in documents if d.path not in same]
        checked = {d.ref: check for d, check in zip(
            rest, await self._check_documents(tip, rest, keys), strict=True)}
        return [checked[d.ref] if d.ref in checked else git_files.DocumentCheck(
            d.ref, None, verified_items=len(d.items), unchanged=True) for d in documents]

    async def _check_documents(self, tip: str,
                               documents: Sequence[git_files.ResealedDocument],
                               keys: RepoKeys) -> list[git_files.DocumentCheck]:
        if not documents:
            return []
        contents = await self.writer.read_files_at(
            tip, sorted({self._in_repo(d.path) for d in documents}))

        def check(document: git_files.ResealedDocument) -> git_files.DocumentCheck:
            return git_files.check_document(contents.get(self._in_repo(document.path)),
                                            document, keys.held.get(document.target_key))
        return await git_pipeline.on_threads(list(documents),
                                             lambda chunk: [check(d) for d in chunk])


def _resealed(result: git_files.FileResult) -> Iterator[git_files.ResealedDocument]:
    """The step detail's entries for a written file's documents."""
    for change in result.documents:
        resealed = tuple(c.item for c in change.changes if c.resealed)
        new_keys = {c.new_key for c in change.changes if c.resealed}
        yield git_files.ResealedDocument(result.path, change.index, change.namespace,
                                         change.name,
                                         new_keys.pop() if len(new_keys) == 1 else "",
                                         resealed)
