"""Writing a reseal into a Git repository: a branch, one commit per job, a push.

The user's checkout is never touched: the work happens in a separate worktree
(``git worktree add --detach``) under a directory sealfleet owns, remote refs are
fetched into sealfleet's own namespace (``refs/sealfleet/...``, not ``refs/remotes``,
and no ``FETCH_HEAD``), and the commit is pushed as ``sealfleet/reseal-<YYYYMMDD>-<job8>``
(``git push <remote> <commit>:refs/heads/<branch>``) without a local branch.

The worktree is sparse in effect: its index holds the whole start commit
(``read-tree``), but no file is checked out.  Files are read from the object store
(``cat-file --batch``) and the rewritten ones staged by exact path, either from memory
(:meth:`RepoWriter.store_files`: ``fast-import`` of the blobs, ``update-index
--index-info``; what the reseal step uses, so 5,000 files are never written, hashed
again or deleted) or from files written into the worktree (:meth:`RepoWriter.write_files`
then ``update-index``: ``git add`` matches every pathspec against every index entry,
which for thousands of files costs more than the RSA work).  Only regular files the
start commit tracks can be written (no symlinks, no submodules, nothing outside).

Idempotent per job: the commit carries a ``Sealfleet-Job: <id>`` trailer, and a
re-run of the job (after a crash, say) finds it, on the remote branch or on the
private ref ``refs/sealfleet/jobs/<branch>`` it records locally before pushing, and
makes no second commit.  The commit message names files, objects, items and key
fingerprints, never a value.

Checkpoints: while a job's files are staged in batches, each staged batch is recorded
as a *checkpoint* commit under ``refs/sealfleet/checkpoints/<branch>`` (its parent the
previous checkpoint, the first one's the start commit; a ``Sealfleet-Checkpoint: <id>``
trailer, never the job trailer, so no listing of jobs or branches ever sees one, and it
is never pushed).  A re-run of a job that crashed before its commit finds the chain
(:meth:`RepoWriter.prepare`: only when it still grows from the same start), starts its
index from the last checkpoint's tree and redoes only the files not in it; the job's
one commit is still made on the start commit, and the checkpoint ref is deleted then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import re
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import structlog

from sealfleet.adapters.git.cli import Git
from sealfleet.domain.resealing import DocumentChange, ItemChange
from sealfleet.errors import InputError

log = structlog.get_logger(__name__)

BRANCH_PREFIX = "sealfleet/reseal-"
JOB_TRAILER = "Sealfleet-Job"
CHECKPOINT_TRAILER = "Sealfleet-Checkpoint"
_PRIVATE = "refs/sealfleet"
_SHA = re.compile(r"[0-9a-f]{40,64}")
# No FETCH_HEAD, and no "opportunistic" update of the clone's remote-tracking refs.
_FETCH_OPTIONS = ("--no-tags", "--no-write-fetch-head", "--refmap=", "--quiet")
# A push builds a pack of the new blobs: fresh ciphertext never deltifies against
# anything, so the delta search (most of pack-objects' CPU for thousands of files) is
# skipped.  Set through the environment: git's -c would precede the subcommand.
_PUSH_CONFIG = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "pack.window",
                "GIT_CONFIG_VALUE_0": "0"}
# "- <path> [<index>] <display>: <items>: <old> -> <new>; ..." (commit_message)
_MESSAGE_LINE = re.compile(r"^- (?P<path>.+) \[(?P<index>[0-9]+)\] (?P<display>[^ ]+): "
                           r"(?P<detail>.+)$")


@dataclass(frozen=True)
class Author:
    """Who the commits are by (author and committer)."""

    name: str = "sealfleet"
    email: str = "sealfleet@localhost"

    def environment(self) -> dict[str, str]:
        return {"GIT_AUTHOR_NAME": self.name, "GIT_AUTHOR_EMAIL": self.email,
                "GIT_COMMITTER_NAME": self.name, "GIT_COMMITTER_EMAIL": self.email}


def branch_name(job_id: str, day: dt.date) -> str:
    """``sealfleet/reseal-<YYYYMMDD>-<first 8 characters of the job id>``."""
    short = re.sub(r"[^a-z0-9]", "", job_id.lower())[:8]
    if not short:
        raise ValueError("a job id needs letters or digits")
    return f"{BRANCH_PREFIX}{day:%Y%m%d}-{short}"


def blob_id(content: bytes, object_id: str) -> str:
    """The id git gives *content* as a blob (no clean filter applied), in the object
    format of the repository *object_id* comes from (40 hex digits: SHA-1, 64: SHA-256)."""
    algorithm = "sha256" if len(object_id) == 64 else "sha1"
    return hashlib.new(algorithm, b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class FileChange:
    """A file's new content (*path* relative to the repository root, ``/``-separated)
    and what was resealed in it."""

    path: str
    content: bytes = field(repr=False)
    documents: tuple[DocumentChange, ...] = ()


def commit_message(job_id: str, changes: Sequence[FileChange], *,
                   trailer: str = JOB_TRAILER) -> str:
    """Subject, one line per resealed object (items, old key -> new key), the trailer."""
    objects = [(change.path, document) for change in changes for document in change.documents]
    new_keys = sorted({c.new_key for _, d in objects for c in d.changes})
    what = "checkpoint" if trailer == CHECKPOINT_TRAILER else "reseal"
    subject = (f"sealfleet: {what} {len(objects)} SealedSecret(s) in {len(changes)} file(s)"
               + (f" with {new_keys[0]}" if len(new_keys) == 1 else ""))
    lines = [subject, ""]
    for path, document in objects:
        by_keys: dict[tuple[str, str], list[str]] = {}
        for change in document.changes:
            by_keys.setdefault((change.old_key, change.new_key), []).append(change.item)
        detail = "; ".join(f"{', '.join(items)}: {old} -> {new}"
                           for (old, new), items in by_keys.items())
        lines.append(f"- {path} [{document.index}] {document.display}: {detail}")
    return "\n".join([*lines, "", f"{trailer}: {job_id}", ""])


def message_changes(message: str) -> dict[str, list[DocumentChange]]:
    """What a :func:`commit_message` lists, path -> its documents' changes (the inverse
    of that function: names and fingerprints only)."""
    found: dict[str, list[DocumentChange]] = {}
    for line in message.splitlines():
        match = _MESSAGE_LINE.match(line)
        if match is None:
            continue
        namespace, _, name = match["display"].rpartition("/")
        items: list[ItemChange] = []
        for group in match["detail"].split("; "):
            names, _, keys = group.rpartition(": ")
            old, _, new = keys.partition(" -> ")
            items.extend(ItemChange(item, old, new, resealed=True)
                         for item in names.split(", "))
        found.setdefault(match["path"], []).append(
            DocumentChange(int(match["index"]), namespace, name, tuple(items)))
    return found


@dataclass(frozen=True)
class Workspace:
    """A job's worktree, detached at *start* (its index holds the start commit; its
    directory only the files written)."""

    path: Path
    branch: str
    base: str                 # commit of the base branch
    start: str                # commit the worktree is at: the base, or the job's commit
    commit: str | None        # the job's commit, when a previous run already made it
    pushed: bool              # that commit is on the remote branch
    # Files a crashed run of the job staged and checkpointed (the index starts from the
    # last checkpoint's tree): repository path -> the documents resealed in it.
    carried: dict[str, tuple[DocumentChange, ...]] = field(default_factory=dict)
    checkpoint: str | None = None   # the last checkpoint commit (None: none yet)


@dataclass(frozen=True)
class PendingBranch:
    """A ``sealfleet/reseal-*`` branch on the remote, not merged into the base."""

    name: str
    commit: str
    job_ids: tuple[str, ...]
    files: tuple[str, ...]


def _safe_relative(path: str) -> PurePosixPath:
    relative = PurePosixPath(path)
    if (not path or relative.is_absolute() or ".." in relative.parts
            or relative.parts[:1] == (".git",) or "\0" in path):
        raise InputError(f"{path!r}: not a path inside the repository")
    return relative


_REGULAR_MODES = {"100644": 0o644, "100755": 0o755}
_MODE_NAMES = {mode: name.encode() for name, mode in _REGULAR_MODES.items()}
_PATHSPECS_PER_CALL = 500   # directories per ls-tree (argv stays far below its limit)


def _write_file(root: Path, path: str, content: bytes, mode: int) -> bool:
    """Write *content* to *root*/*path* unless it is already so; directories on the way
    are created, and none of them (nor the file) may be a symlink.  Written in place:
    the worktree is sealfleet's own, and a torn write there is harmless (the next run
    makes a fresh worktree)."""
    relative = _safe_relative(path)
    current = root
    for part in relative.parts[:-1]:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            raise InputError(f"{path}: {current.relative_to(root)} is not a directory")
        current.mkdir(mode=0o755, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
    try:
        fd = os.open(root.joinpath(*relative.parts), flags, mode)
    except OSError:  # ELOOP: a symlink put there since
        raise InputError(f"{path}: not a regular file") from None
    with os.fdopen(fd, "r+b") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path}: not a regular file")
        if handle.read() == content:
            return False
        handle.seek(0)
        handle.write(content)
        handle.truncate()
    return True


class RepoWriter:
    """Writes reseals into one repository: *repo_dir* is a local clone (bare or not,
    never modified beyond ``refs/sealfleet/`` and its worktree list), *remote* a remote
    name or URL, *worktrees_dir* a directory sealfleet owns."""

    def __init__(self, git: Git, repo_dir: Path, *, base_branch: str, worktrees_dir: Path,
                 remote: str = "origin", author: Author | None = None) -> None:
        self._git = git
        self._repo = repo_dir
        self._base = base_branch
        self._worktrees = worktrees_dir
        self._remote = remote
        self._author = author or Author()
        self._modes: dict[Path, dict[str, int]] = {}     # per worktree: tracked files
        self._unstaged: dict[Path, set[str]] = {}        # per worktree: written, not staged
        self._stage_lock = asyncio.Lock()

    async def _rev(self, ref: str, cwd: Path | None = None) -> str | None:
        result = await self._git.run("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}",
                                     cwd=cwd or self._repo, ok_codes=(0, 1))
        sha = result.stdout.decode().strip()
        return sha if result.returncode == 0 and _SHA.fullmatch(sha) else None

    async def job_commit(self, job_id: str, base: str, tip: str) -> str | None:
        """The commit in *base*..*tip* whose ``Sealfleet-Job`` trailer is *job_id*."""
        result = await self._git.run(
            "log", "--format=%H %(trailers:key=" + JOB_TRAILER + ",valueonly,separator=%x20)",
            f"{base}..{tip}", cwd=self._repo)
        for line in result.stdout.decode().splitlines():
            sha, _, jobs = line.partition(" ")
            if job_id in jobs.split():
                return sha
        return None

    async def prepare(self, job_id: str, day: dt.date, *, onto: str | None = None) -> Workspace:
        """Fetch, find what an earlier run of the job did, and make a fresh worktree.

        *onto* names an existing ``sealfleet/reseal-*`` branch (a pending one, on the
        remote or only under the private ref) to add the job's commit to, instead of a
        new branch from the base: the worktree then starts at that branch's tip (the
        private ref when it is ahead of the remote one, e.g. not pushed yet).
        """
        branch = onto if onto is not None else branch_name(job_id, day)
        if not branch.startswith(BRANCH_PREFIX):
            raise InputError(f"{branch}: not a {BRANCH_PREFIX}* branch")
        base_ref, remote_ref = f"{_PRIVATE}/base/{self._base}", f"{_PRIVATE}/remote/{branch}"
        job_ref = f"{_PRIVATE}/jobs/{branch}"
        listed = await self._git.run("ls-remote", "--heads", self._remote,
                                     f"refs/heads/{branch}", cwd=self._repo)
        refspecs = [f"+refs/heads/{self._base}:{base_ref}"]
        if listed.stdout.strip():
            refspecs.append(f"+refs/heads/{branch}:{remote_ref}")
        await self._git.run("fetch", *_FETCH_OPTIONS, self._remote, *refspecs,
                            cwd=self._repo)
        base = await self._rev(base_ref)
        if base is None:
            raise InputError(f"{self._remote}: no branch {self._base}")
        start, commit, pushed = base, None, False
        for ref, on_remote in ((remote_ref, True), (job_ref, False)):
            if on_remote and not listed.stdout.strip():
                continue
            tip = await self._rev(ref)
            found = await self.job_commit(job_id, base, tip) if tip else None
            if tip and found:
                start, commit, pushed = tip, found, on_remote
                break
        if onto is not None and commit is None:
            start = await self._onto_tip(remote_ref if listed.stdout.strip() else None,
                                         job_ref, branch)
        carried: dict[str, tuple[DocumentChange, ...]] = {}
        checkpoint = None
        if commit is None:
            carried, checkpoint = await self._checkpoints(job_id, branch, start)
        else:
            await self._drop_checkpoints(branch)
        path = self._worktrees / branch.replace("/", "-")
        self._forget(path)
        await self._remove_worktree(path)
        await asyncio.to_thread(self._worktrees.mkdir, parents=True, exist_ok=True)
        await self._git.run("worktree", "add", "--quiet", "--no-checkout", "--detach",
                            str(path), start, cwd=self._repo)
        # The index only (no files): the start commit's tree, or the last checkpoint's.
        await self._git.run("read-tree", checkpoint or start, cwd=path)
        log.info("git_worktree_added", branch=branch, base=base, resumed=commit is not None,
                 carried_files=len(carried))
        return Workspace(path, branch, base, start, commit, pushed, carried, checkpoint)

    async def _checkpoints(self, job_id: str, branch: str, start: str,
                           ) -> tuple[dict[str, tuple[DocumentChange, ...]], str | None]:
        """The checkpoints of a crashed run of *job_id* on *start* (see the module
        docstring): what they carry, and the last one.  A chain that does not grow from
        *start* (the base moved since), or holds a commit of something else, is dropped:
        the job then starts over from *start*."""
        ref = f"{_PRIVATE}/checkpoints/{branch}"
        tip = await self._rev(ref)
        if tip is None:
            return {}, None
        if await self.is_ancestor(start, tip):
            listed = await self._git.run(
                "log", "--first-parent", "--format=%(trailers:key=" + CHECKPOINT_TRAILER
                + ",valueonly,separator=%x20)%x00%B%x00", f"{start}..{tip}", cwd=self._repo)
            fields = listed.stdout.decode("utf-8", "surrogateescape").split("\0")
            pairs = list(zip(fields[0::2], fields[1::2], strict=False))
            if pairs and all(jobs.strip() == job_id for jobs, _ in pairs):
                carried: dict[str, list[DocumentChange]] = {}
                for _, message in reversed(pairs):        # oldest first
                    for path, documents in message_changes(message).items():
                        carried[path] = documents     # a file is checkpointed once
                return {p: tuple(d) for p, d in carried.items()}, tip
        log.info("git_checkpoints_dropped", branch=branch, tip=tip, start=start)
        await self._drop_checkpoints(branch)
        return {}, None

    async def _drop_checkpoints(self, branch: str) -> None:
        # Not fatal (a lock left by a killed git, say): a chain left behind is only
        # ever used by the same job on the same start commit, and never pushed.
        dropped = await self._git.run("update-ref", "-d", f"{_PRIVATE}/checkpoints/{branch}",
                                      cwd=self._repo, check=False)
        if dropped.returncode:
            log.warning("git_checkpoints_not_dropped", branch=branch,
                        error=str(self._git.error("update-ref", dropped)))

    async def checkpoint(self, workspace: Workspace, job_id: str, parent: str,
                         changes: Sequence[FileChange]) -> str:
        """Record what is staged as a checkpoint commit on *parent* (the previous
        checkpoint, or the start commit) listing *changes* (the files staged since
        that one); returns the checkpoint's id.  The ref moves only once the commit
        exists, so a crash leaves the chain at its previous checkpoint."""
        async with self._stage_lock:      # write-tree takes the index lock too
            tree = await self._git.run("write-tree", cwd=workspace.path)
        made = await self._git.run(
            "commit-tree", tree.stdout.decode().strip(), "-p", parent, "-F", "-",
            cwd=self._repo, env=self._author.environment(),
            stdin=commit_message(job_id, changes, trailer=CHECKPOINT_TRAILER).encode())
        sha = made.stdout.decode().strip()
        if not _SHA.fullmatch(sha):
            raise InputError(f"{workspace.branch}: the checkpoint did not land")
        await self._git.run("update-ref", f"{_PRIVATE}/checkpoints/{workspace.branch}", sha,
                            cwd=self._repo)
        return sha

    async def _tracked(self, workspace: Workspace) -> dict[str, int]:
        """The regular files of the start commit, path -> file mode (read once)."""
        tracked = self._modes.get(workspace.path)
        if tracked is None:
            listed = await self._git.run("ls-files", "--stage", "-z", cwd=workspace.path)
            tracked = {}
            for entry in listed.stdout.decode("utf-8", "surrogateescape").split("\0"):
                info, _, name = entry.partition("\t")
                mode = _REGULAR_MODES.get(info.split(" ")[0])
                if name and mode is not None:
                    tracked[name] = mode
            self._modes[workspace.path] = tracked
        return tracked

    async def _onto_tip(self, remote_ref: str | None, job_ref: str, branch: str) -> str:
        """The tip a commit onto *branch* builds on: the private ref when the remote
        branch is absent or behind it, else the remote branch."""
        remote_tip = await self._rev(remote_ref) if remote_ref else None
        local_tip = await self._rev(job_ref)
        if local_tip and (remote_tip is None or await self.is_ancestor(remote_tip, local_tip)):
            return local_tip
        if remote_tip is None:
            raise InputError(f"{branch}: no such branch")
        return remote_tip

    async def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        result = await self._git.run("merge-base", "--is-ancestor", ancestor, descendant,
                                     cwd=self._repo, ok_codes=(0, 1))
        return result.returncode == 0

    async def read_files(self, workspace: Workspace,
                         paths: Sequence[str]) -> dict[str, bytes | None]:
        """The files at the workspace's start commit (None: no such file), read from the
        object store (``git cat-file --batch``)."""
        return await self.read_files_at(workspace.start, paths)

    @staticmethod
    def _query_paths(commit: str, paths: Sequence[str]) -> list[str]:
        if not _SHA.fullmatch(commit):
            raise InputError(f"{commit!r}: not a commit id")
        wanted = [_safe_relative(p).as_posix() for p in paths]
        if any("\n" in p for p in wanted):
            raise InputError("a path with a line break cannot be read")
        return wanted

    async def read_files_at(self, commit: str, paths: Sequence[str]) -> dict[str, bytes | None]:
        """The files at *commit* (None: no such file)."""
        wanted = self._query_paths(commit, paths)
        query = "".join(f"{commit}:{p}\n" for p in wanted).encode()
        result = await self._git.run("cat-file", "--batch", cwd=self._repo, stdin=query)
        out, pos = result.stdout, 0
        files: dict[str, bytes | None] = {}
        for path in wanted:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            pos = end + 1
            if len(header) != 3 or header[1] != b"blob":
                files[path] = None  # "<name> missing", or not a file (a tree, a submodule)
                if len(header) == 3:
                    pos += int(header[2]) + 1
                continue
            size = int(header[2])
            files[path] = out[pos:pos + size]
            pos += size + 1
        return files

    async def blob_ids_at(self, commit: str, paths: Sequence[str]) -> dict[str, str | None]:
        """The blob id of each file at *commit* (None: no such file, or not a regular
        file), from ``git ls-tree`` over the files' directories: no content is read, and
        one listing answers for a whole directory (``cat-file --batch-check`` with
        ``<commit>:<path>`` walks the trees again for every path, 100 times slower for
        thousands of files)."""
        wanted = self._query_paths(commit, paths)
        scopes = sorted({path.rpartition("/")[0] or path for path in wanted})
        listed: dict[str, str] = {}
        for start in range(0, len(scopes), _PATHSPECS_PER_CALL):
            result = await self._git.run(
                "ls-tree", "-r", "-z", "--full-tree", commit, "--",
                *scopes[start:start + _PATHSPECS_PER_CALL], cwd=self._repo,
                env={"GIT_LITERAL_PATHSPECS": "1"})
            for entry in result.stdout.decode("utf-8", "surrogateescape").split("\0"):
                info, _, name = entry.partition("\t")
                mode, _, rest = info.partition(" ")
                kind, _, sha = rest.partition(" ")
                if name and kind == "blob" and mode in _REGULAR_MODES and _SHA.fullmatch(sha):
                    listed[name] = sha
        return {path: listed.get(path) for path in wanted}

    async def stage(self, workspace: Workspace) -> list[str]:
        """Stage the files written so far (call it while writing goes on: it hashes only
        what was written since the last call); returns the paths it staged."""
        async with self._stage_lock:  # one update-index at a time (the index lock)
            return await self._stage(workspace)

    async def _stage(self, workspace: Workspace) -> list[str]:
        pending = sorted(self._unstaged.pop(workspace.path, set()))
        if pending:
            await self._git.run("update-index", "-z", "--stdin", cwd=workspace.path,
                                stdin=b"".join(p.encode("utf-8", "surrogateescape") + b"\0"
                                               for p in pending))
        return pending

    async def _remove_worktree(self, path: Path) -> None:
        if await asyncio.to_thread(path.exists):
            await self._git.run("worktree", "remove", "--force", str(path), cwd=self._repo,
                                check=False)
            if await asyncio.to_thread(path.exists):  # not registered (any more): ours
                await asyncio.to_thread(shutil.rmtree, path)
        await self._git.run("worktree", "prune", cwd=self._repo)

    async def write_files(self, workspace: Workspace,
                          changes: Sequence[FileChange]) -> list[str]:
        """Write the changed files into the worktree; returns the paths written (a file
        written before with the same content is not written again)."""
        tracked = await self._tracked(workspace)
        paths = [_safe_relative(change.path).as_posix() for change in changes]
        for path in paths:
            if path not in tracked:
                raise InputError(f"{path}: not a regular file of {self._base}")

        def write_all() -> list[str]:
            return [path for path, change in zip(paths, changes, strict=True)
                    if _write_file(workspace.path, path, change.content, tracked[path])]
        written = await asyncio.to_thread(write_all)
        self._unstaged.setdefault(workspace.path, set()).update(written)
        return written

    async def store_files(self, workspace: Workspace,
                          changes: Sequence[FileChange]) -> list[str]:
        """Stage *changes* straight from memory, no file written: their blobs go into
        the object store in one ``git fast-import`` and into the worktree's index with
        ``update-index --index-info`` (the blob ids computed here, and ``write-tree``
        refuses an index naming a blob that is not stored).  Byte for byte, as the files
        were read (no clean filter), with each file's mode kept; only regular files the
        start commit tracks.  For thousands of files this saves writing them, hashing
        them again and deleting them with the worktree.  Returns the paths staged."""
        tracked = await self._tracked(workspace)
        paths = [_safe_relative(change.path).as_posix() for change in changes]
        for path in paths:
            if path not in tracked:
                raise InputError(f"{path}: not a regular file of {self._base}")
        if not changes:
            return []
        await self._git.run("fast-import", "--quiet", cwd=self._repo, stdin=b"".join(
            b"blob\ndata %d\n%s\n" % (len(change.content), change.content)
            for change in changes))
        info = b"".join(
            b"%s %s\t%s\0" % (_MODE_NAMES[tracked[path]], blob_id(change.content,
                                                                 workspace.start).encode(),
                              path.encode("utf-8", "surrogateescape"))
            for path, change in zip(paths, changes, strict=True))
        async with self._stage_lock:       # the index lock, as update-index --stdin
            await self._git.run("update-index", "-z", "--index-info", cwd=workspace.path,
                                stdin=info)
        return paths

    async def commit(self, workspace: Workspace, job_id: str,
                     changes: Sequence[FileChange]) -> str | None:
        """One commit for the job (None when nothing changed); the earlier run's commit
        when it exists.  Records it under ``refs/sealfleet/jobs/`` before any push."""
        if workspace.commit is not None:
            return workspace.commit
        await self.stage(workspace)
        staged = await self._git.run("diff", "--cached", "--name-only", "-z",
                                     cwd=workspace.path)
        if not staged.stdout.strip(b"\0"):
            return None
        await self._git.run("commit", "--quiet", "--no-verify", "-F", "-", cwd=workspace.path,
                            stdin=commit_message(job_id, changes).encode(),
                            env=self._author.environment())
        sha = await self._rev("HEAD", workspace.path)
        if sha is None:
            raise InputError(f"{workspace.branch}: the commit did not land")
        await self._git.run("update-ref", f"{_PRIVATE}/jobs/{workspace.branch}", sha,
                            cwd=self._repo)
        await self._drop_checkpoints(workspace.branch)   # the job commit carries it all
        log.info("git_reseal_committed", branch=workspace.branch, commit=sha,
                 files=len(changes))
        return sha

    async def push(self, workspace: Workspace, commit: str) -> None:
        """``git push <remote> <commit>:refs/heads/<branch>`` (never forced).

        A remote *name* is pushed to by its push URL, so git does not update the
        clone's remote-tracking refs as it would for the name.
        """
        remote = self._remote
        named = await self._git.run("remote", "get-url", "--push", remote, cwd=self._repo,
                                    ok_codes=(0, 2))
        if named.returncode == 0 and named.stdout.strip():
            remote = named.stdout.decode().strip()
        await self._git.run("push", "--quiet", remote,
                            f"{commit}:refs/heads/{workspace.branch}", cwd=self._repo,
                            env=_PUSH_CONFIG)
        log.info("git_reseal_pushed", branch=workspace.branch, commit=commit)

    async def branch_tip(self, branch: str, *, on_remote: bool) -> str | None:
        """The tip of *branch* on the remote (fetched into the private namespace), or
        under the private job ref; None when there is no such branch."""
        if not on_remote:
            return await self._rev(f"{_PRIVATE}/jobs/{branch}")
        listed = await self._git.run("ls-remote", "--heads", self._remote,
                                     f"refs/heads/{branch}", cwd=self._repo)
        if not listed.stdout.strip():
            return None
        remote_ref = f"{_PRIVATE}/remote/{branch}"
        await self._git.run("fetch", *_FETCH_OPTIONS, self._remote,
                            f"+refs/heads/{branch}:{remote_ref}", cwd=self._repo)
        return await self._rev(remote_ref)

    def _forget(self, path: Path) -> None:
        self._modes.pop(path, None)
        self._unstaged.pop(path, None)

    async def cleanup(self, workspace: Workspace) -> None:
        self._forget(workspace.path)
        await self._remove_worktree(workspace.path)

    async def pending_branches(self) -> list[PendingBranch]:
        """The remote's ``sealfleet/reseal-*`` branches, their jobs and the files they touch."""
        base_ref = f"{_PRIVATE}/base/{self._base}"
        await self._git.run(
            "fetch", *_FETCH_OPTIONS, "--prune", self._remote,
            f"+refs/heads/{self._base}:{base_ref}",
            f"+refs/heads/{BRANCH_PREFIX}*:{_PRIVATE}/remote/{BRANCH_PREFIX}*", cwd=self._repo)
        return await self._branches_under(f"{_PRIVATE}/remote/")

    async def local_branches(self, *, fetch: bool = True) -> list[PendingBranch]:
        """The branches recorded under the private job refs (committed, pushed or not),
        against the base (fetched first unless *fetch* is false: :meth:`pending_branches`
        just did); a merged one has no jobs and no files."""
        if fetch:
            await self._git.run("fetch", *_FETCH_OPTIONS, self._remote,
                                f"+refs/heads/{self._base}:{_PRIVATE}/base/{self._base}",
                                cwd=self._repo)
        return await self._branches_under(f"{_PRIVATE}/jobs/")

    async def _branches_under(self, prefix: str) -> list[PendingBranch]:
        base_ref = f"{_PRIVATE}/base/{self._base}"
        listed = await self._git.run("for-each-ref", "--sort=refname",
                                     "--format=%(objectname) %(refname)",
                                     f"{prefix}{BRANCH_PREFIX}*", cwd=self._repo)
        pending = []
        for line in listed.stdout.decode().splitlines():
            sha, _, ref = line.partition(" ")
            name = ref.removeprefix(prefix)
            if not name.startswith(BRANCH_PREFIX):
                continue
            diff = await self._git.run("diff", "--name-only", "-z", f"{base_ref}...{sha}",
                                       cwd=self._repo)
            jobs = await self._git.run(
                "log", "--format=%(trailers:key=" + JOB_TRAILER + ",valueonly,separator=%x20)",
                f"{base_ref}..{sha}", cwd=self._repo)
            pending.append(PendingBranch(
                name, sha, tuple(dict.fromkeys(jobs.stdout.decode().split())),
                tuple(p for p in diff.stdout.decode("utf-8", "replace").split("\0") if p)))
        return pending
