"""Listing a working tree's files, as they are on disk, and reading them.

In a git work tree the files are those ``git ls-files`` names: tracked ones (from the
index, with their blob hash, ``-s``) and untracked ones that ``.gitignore`` does not
exclude (``--others --exclude-standard``).  Anything else is walked plainly (``.git``
directories skipped, symlinks never followed).  Only regular files count: a symlink
could point out of the tree, a submodule is another tree.

Every file gets a *signature*: the index's blob hash (git) plus size, mtime and inode
from ``lstat``.  The blob alone would miss an edit not yet staged; the stat alone, a
checkout that restores a file's old size within one mtime tick.  A file whose
signature did not change since it was parsed is not read again.

Git runs as an asyncio subprocess with a timeout, never taking optional locks
(``GIT_OPTIONAL_LOCKS=0``), so reading never gets in the way of whoever writes the
repository.  Failures are :class:`~sealfleet.errors.TransientError` (the next scan
tries again) naming the tree and what failed, never file content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sealfleet.errors import InputError, TransientError

GIT_TIMEOUT_SECONDS = 30.0
# A manifest is kilobytes; anything past this is not worth parsing (and YAML parsing
# of a huge file would hold a thread for seconds).
MAX_FILE_BYTES = 4 << 20
_MODE_REGULAR = ("100644", "100755")
_ENV = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


@dataclass(frozen=True)
class TreeFile:
    """One file of the tree: its '/'-separated path relative to the tree, its signature."""

    path: str
    signature: str


@dataclass(frozen=True)
class Tree:
    """What a scan of the tree found."""

    is_git: bool
    head_commit: str | None = None      # None: not git, or no commit yet
    head_branch: str | None = None      # None: detached HEAD, or not git
    remotes: tuple[str, ...] = ()
    files: tuple[TreeFile, ...] = ()


async def _git(root: Path, *args: str, seconds: float) -> tuple[int, bytes]:
    """(exit status, stdout) of ``git -C root ARGS``; stderr is never shown (it may
    quote file names or content from hooks), only the status."""
    try:
        process = await asyncio.create_subprocess_exec(
            "git", "-C", str(root), *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **_ENV})
    except OSError as exc:
        raise TransientError(f"{root}: cannot run git ({exc.strerror or exc})") from exc
    try:
        async with asyncio.timeout(seconds):
            out, _ = await process.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise TransientError(f"{root}: git {args[0]} took longer than {seconds:g}s") from None
    return process.returncode or 0, out


def _entries(out: bytes) -> list[str]:
    return [entry for entry in out.decode("utf-8", "surrogateescape").split("\0") if entry]


async def _is_work_tree(root: Path, seconds: float) -> bool:
    if not await asyncio.to_thread(root.is_dir):
        raise TransientError(f"{root}: not a directory")
    try:
        status, out = await _git(root, "rev-parse", "--is-inside-work-tree", seconds=seconds)
    except TransientError:
        if await asyncio.to_thread((root / ".git").exists):
            raise   # a git tree without a usable git: say so rather than walk it plainly
        return False
    return status == 0 and out.strip() == b"true"


async def list_tree(root: Path, wanted: Callable[[str], bool], *,
                    git_seconds: float = GIT_TIMEOUT_SECONDS) -> Tree:
    """The files of *root* whose relative path *wanted* accepts, with signatures
    (*git_seconds*: how long one git command may take)."""
    if not await _is_work_tree(root, git_seconds):
        files = await asyncio.to_thread(_walk, root, wanted)
        return Tree(is_git=False, files=tuple(files))
    (tracked_status, tracked), (others_status, others), (_, head), (_, branch), \
        (_, remotes) = await asyncio.gather(
            _git(root, "ls-files", "-s", "-z", seconds=git_seconds),
            _git(root, "ls-files", "-z", "--others", "--exclude-standard", seconds=git_seconds),
            _git(root, "rev-parse", "-q", "--verify", "HEAD", seconds=git_seconds),
            _git(root, "symbolic-ref", "-q", "--short", "HEAD", seconds=git_seconds),
            _git(root, "remote", seconds=git_seconds))
    if tracked_status or others_status:
        raise TransientError(f"{root}: git ls-files failed (exit status "
                             f"{tracked_status or others_status})")
    blobs: dict[str, str] = {}
    for entry in _entries(tracked):
        meta, _, path = entry.partition("\t")
        mode, blob, _stage = [*meta.split(" "), "", "", ""][:3]
        # Symlinks (120000) and submodules (160000) are not manifests of this tree.
        if mode in _MODE_REGULAR and wanted(path):
            blobs[path] = blob
    untracked = [path for path in _entries(others) if wanted(path) and path not in blobs]
    files = await asyncio.to_thread(_stat_all, root, blobs, untracked)
    head_text = head.decode("ascii", "replace").strip()
    branch_text = branch.decode("utf-8", "replace").strip()
    return Tree(is_git=True, head_commit=head_text or None, head_branch=branch_text or None,
                remotes=tuple(r.decode("utf-8", "replace") for r in remotes.split()),
                files=tuple(files))


def _signature(root: Path, path: str, blob: str) -> str | None:
    try:
        info = os.lstat(root / path)
    except OSError:
        return None   # listed but gone (deleted, not staged): nothing on disk to read
    if not stat.S_ISREG(info.st_mode):
        return None
    return f"{blob or '-'}:{info.st_size}:{info.st_mtime_ns}:{info.st_ino}"


def _stat_all(root: Path, blobs: dict[str, str], untracked: list[str]) -> list[TreeFile]:
    found = []
    for path, blob in [*blobs.items(), *((p, "") for p in untracked)]:
        signature = _signature(root, path, blob)
        if signature is not None:
            found.append(TreeFile(path, signature))
    return sorted(found, key=lambda f: f.path)


def _walk(root: Path, wanted: Callable[[str], bool]) -> list[TreeFile]:
    found = []
    for directory, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        relative = Path(directory).relative_to(root).as_posix()
        for name in names:
            path = name if relative == "." else f"{relative}/{name}"
            if wanted(path):
                signature = _signature(root, path, "")
                if signature is not None:
                    found.append(TreeFile(path, signature))
    return sorted(found, key=lambda f: f.path)


def read_file(root: Path, path: str) -> bytes:
    """The bytes of one listed file (blocking: call it on a thread).

    Opened without following a symlink (one that replaced the file since it was
    listed must not lead out of the tree); InputError names the path and the reason.
    """
    try:
        fd = os.open(root / path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise InputError("not a regular file")
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"larger than {MAX_FILE_BYTES >> 20} MiB: not parsed")
    return data
