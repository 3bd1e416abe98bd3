"""What Flux's source-controller does for a GitRepository: fetch the branch from the
remote (never anyone's working tree) and keep its files as an artifact.

The revision is named as source-controller v1 names it, ``<branch>@sha1:<commit>``; an
artifact is read again only when the branch moved.  Whether it moved is read from the
remote's ref files (loose, else ``packed-refs``) without running git: at a fetch every
fraction of a second per cluster, a process per look would be most of the sandbox's
work (and asyncio's child watcher starts a thread for each).  The remote is a local one (a
``file://`` URL, as the sandbox's GitOps repository is), read in place with
``git --git-dir``: the commit's tree and its blobs, nothing checked out.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse

from sealfleet.sandbox.gitops import git_env

GIT_TIMEOUT = 30.0
_MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


class SourceError(Exception):
    """The remote could not be read (the GitRepository's Ready=False message)."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    revision: str                 # main@sha1:<commit>
    files: Mapping[str, bytes]    # path in the repository -> content (manifests only)

    @property
    def commit(self) -> str:
        return self.revision.rsplit(":", 1)[-1]


def remote_path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme not in ("file", ""):
        raise SourceError(f"unsupported URL scheme {parsed.scheme!r}: the sandbox's "
                          "source-controller reads local (file://) remotes only")
    return Path(unquote(parsed.path))


async def _git(git_dir: Path, *args: str, stdin: bytes | None = None) -> bytes:
    process = await asyncio.create_subprocess_exec(
        "git", f"--git-dir={git_dir}", *args, env=git_env(),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(GIT_TIMEOUT):
            out, err = await process.communicate(stdin)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise SourceError(f"git {args[0]} timed out") from None
    if process.returncode != 0:
        raise SourceError(f"git {args[0]}: "
                          f"{err.decode(errors='replace').strip().splitlines()[-1:]}")
    return out


def _ref_from_files(git_dir: Path, branch: str) -> str | None:
    """The branch's commit from the ref files, or None (not found, or not plain)."""
    ref = f"refs/heads/{branch}"
    try:
        text = (git_dir / ref).read_text().strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        text = ""
    except OSError:
        return None
    if len(text) == 40 and all(c in "0123456789abcdef" for c in text):
        return text
    try:
        packed = (git_dir / "packed-refs").read_text()
    except OSError:
        return None
    for line in packed.splitlines():
        sha, _, name = line.partition(" ")
        if name == ref and len(sha) == 40:
            return sha
    return None


def _wanted(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(_MANIFEST_SUFFIXES) or name in _KUSTOMIZATION_FILES


async def fetch(url: str, branch: str, previous: Artifact | None = None) -> Artifact:
    """The branch's newest commit as an artifact (*previous* when it did not move)."""
    git_dir = remote_path(url)
    if not git_dir.is_dir():
        raise SourceError(f"failed to checkout and determine revision: repository "
                          f"{url} does not exist")
    commit = _ref_from_files(git_dir, branch)
    if commit is not None and previous is not None and previous.commit == commit:
        return previous
    try:
        if commit is None:
            commit = (await _git(git_dir, "rev-parse", "--verify", "--quiet",
                                 f"refs/heads/{branch}^{{commit}}")).decode().strip()
    except SourceError:
        raise SourceError(f"failed to checkout and determine revision: unable to clone "
                          f"'{url}': couldn't find remote ref \"refs/heads/{branch}\"") from None
    revision = f"{branch}@sha1:{commit}"
    if previous is not None and previous.revision == revision:
        return previous
    listing = await _git(git_dir, "ls-tree", "-r", "-z", "--full-tree", commit)
    blobs: list[tuple[str, str]] = []
    for entry in listing.split(b"\0"):
        if not entry:
            continue
        info, _, path_bytes = entry.partition(b"\t")
        mode, kind, sha = info.decode().split()
        path = path_bytes.decode("utf-8", errors="replace")
        if kind == "blob" and mode != "120000" and _wanted(path):
            blobs.append((path, sha))
    files: dict[str, bytes] = {}
    if blobs:
        out = await _git(git_dir, "cat-file", "--batch",
                         stdin="".join(f"{sha}\n" for _, sha in blobs).encode())
        position = 0
        for path, _ in blobs:
            header_end = out.index(b"\n", position)
            size = int(out[position:header_end].split()[2])
            start = header_end + 1
            files[path] = out[start:start + size]
            position = start + size + 1
    return Artifact(revision, files)
