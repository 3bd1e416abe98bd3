"""The Git write side against real repositories with the real git CLI: a bare repository
as the remote (and a smart-HTTP one behind Basic auth for the token), a user's clone."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog
from aiohttp import web

from sealfleet.adapters.git import cli, writing
from sealfleet.domain import documents, keys, resealing, sealed_secrets
from sealfleet.errors import ConfigError, InputError

DAY = dt.date(2026, 1, 2)
JOB = "3f2a9c1e5b7d4e6f8a0b1c2d3e4f5a6b"
BRANCH = "sealfleet/reseal-20260102-3f2a9c1e"
TOKEN = "s3cr3t-token-QmFzZTY0LWxpa2U"
PLAINTEXT = b"plaintext-never-in-git"
HERMETIC_ENV = {"PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C", "GIT_AUTHOR_NAME": "u",
                "GIT_AUTHOR_EMAIL": "u@example.org", "GIT_COMMITTER_NAME": "u",
                "GIT_COMMITTER_EMAIL": "u@example.org"}


def git(*args: str, cwd: Path) -> str:
    return git_bytes(*args, cwd=cwd).decode()


def git_bytes(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, env=HERMETIC_ENV, check=True,
                          capture_output=True).stdout


def _sealed_yaml(key: keys.SealingKey, name: str, nl: str = "\n") -> str:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": name, "namespace": "prod"},
              "data": {"password": base64.b64encode(PLAINTEXT).decode(),
                       "user": base64.b64encode(b"admin").decode()}}
    values = sealed_secrets.seal_secret(secret, key.public_key)["spec"]["encryptedData"]
    return (f"# {name}: owned by the payments team{nl}apiVersion: bitnami.com/v1alpha1{nl}"
            f"kind: SealedSecret{nl}metadata:{nl}  name: {name}{nl}  namespace: prod{nl}"
            f"spec:{nl}  encryptedData:{nl}    password: {values['password']}   # rotated{nl}"
            f"    user: '{values['user']}'{nl}  template:{nl}    metadata:{nl}"
            f"      name: {name}{nl}")


@dataclass
class Fleet:
    """A remote (bare), sealfleet's clone of it, the user's clone, the files first
    committed and the keys."""

    remote: Path
    cache: Path
    clone: Path
    files: dict[str, bytes]
    old: keys.SealingKey
    new: keys.SealingKey


@pytest.fixture
def fleet(tmp_path: Path, rsa2048_keys: list[keys.SealingKey]) -> Fleet:
    old, _, new = rsa2048_keys
    files = {
        "README.md": b"# apps\n",
        "apps/db.yaml": (_sealed_yaml(old, "db") + "---\n" + _sealed_yaml(old, "db-ro")).encode(),
        "apps/crlf.yaml": _sealed_yaml(old, "windows", nl="\r\n").encode(),
        "apps/current.yaml": _sealed_yaml(new, "current").encode(),
        "apps/config.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    }
    seed = tmp_path / "seed"
    for path, content in files.items():
        (seed / path).parent.mkdir(parents=True, exist_ok=True)
        (seed / path).write_bytes(content)
    (seed / "apps" / "link.yaml").symlink_to("config.yaml")  # tracked symlinks
    (seed / "linked").symlink_to("apps")
    git("init", "-q", "-b", "main", str(seed), cwd=tmp_path)
    git("add", "-A", cwd=seed)
    git("commit", "-qm", "initial", cwd=seed)
    remote = tmp_path / "remote.git"
    git("clone", "-q", "--bare", str(seed), str(remote), cwd=tmp_path)
    cache = tmp_path / "cache.git"
    git("clone", "-q", "--bare", str(remote), str(cache), cwd=tmp_path)
    clone = tmp_path / "clone"
    git("clone", "-q", str(remote), str(clone), cwd=tmp_path)
    return Fleet(remote, cache, clone, files, old, new)


@pytest.fixture
async def git_cli() -> AsyncIterator[cli.Git]:
    async with cli.Git() as opened:
        yield opened


def _writer(git_cli: cli.Git, repo: Path, tmp_path: Path) -> writing.RepoWriter:
    return writing.RepoWriter(git_cli, repo, base_branch="main",
                              worktrees_dir=tmp_path / "worktrees")


async def _run_job(writer: writing.RepoWriter, fleet: Fleet, *, push: bool = True,
                   job: str = JOB) -> str | None:
    """What the reseal executor does for one repository."""
    workspace = await writer.prepare(job, DAY)
    sha = workspace.commit
    if sha is None:
        ring = resealing.KeyRing([fleet.old, fleet.new])
        contents = await writer.read_files(
            workspace, sorted(p for p in fleet.files if p.endswith(".yaml")))
        requests = [resealing.FileRequest(path, content, fleet.new.certificate)
                    for path, content in contents.items() if content is not None]
        changes = [writing.FileChange(o.source, o.result.content, o.documents)
                   for o in resealing.iter_reseal_files(requests, ring)
                   if o.changed and o.result is not None]
        await writer.write_files(workspace, changes)
        sha = await writer.commit(workspace, job, changes)
    if push and sha is not None and not workspace.pushed:
        await writer.push(workspace, sha)
    await writer.cleanup(workspace)
    return sha


async def test_reseal_branch_commit_and_push_reach_the_bare_remote(
        fleet: Fleet, git_cli: cli.Git, tmp_path: Path) -> None:
    sha = await _run_job(_writer(git_cli, fleet.cache, tmp_path), fleet)
    assert git("rev-parse", f"refs/heads/{BRANCH}", cwd=fleet.remote).strip() == sha
    assert git("rev-list", "--count", f"main..{BRANCH}", cwd=fleet.remote).strip() == "1"
    assert git("log", "-1", "--format=%an <%ae>|%cn <%ce>", BRANCH, cwd=fleet.remote) \
        .strip() == "sealfleet <sealfleet@localhost>|sealfleet <sealfleet@localhost>"
    message = git("log", "-1", "--format=%B", BRANCH, cwd=fleet.remote)
    old, new = fleet.old.fingerprint, fleet.new.fingerprint
    assert message.splitlines()[0] == f"sealfleet: reseal 3 SealedSecret(s) in 2 file(s) with {new}"
    assert f"- apps/db.yaml [1] prod/db-ro: password, user: {old} -> {new}" in message
    assert f"Sealfleet-Job: {JOB}" in message.splitlines()
    assert "plaintext" not in message
    # Resealed files decrypt with the new key; nothing else in the tree changed.
    changed = git("diff", "--name-only", f"main..{BRANCH}", cwd=fleet.remote).split()
    assert changed == ["apps/crlf.yaml", "apps/db.yaml"]
    for path, content in fleet.files.items():
        blob = git_bytes("show", f"{BRANCH}:{path}", cwd=fleet.remote)
        if path not in changed:
            assert blob == content
            continue
        assert blob != content
        for doc in documents.parse_documents(blob):
            assert sealed_secrets.decrypt_items(doc, [fleet.new.private_key]) == {
                "password": PLAINTEXT, "user": b"admin"}


async def test_the_diff_touches_only_ciphertext_lines(fleet: Fleet, git_cli: cli.Git,
                                                      tmp_path: Path) -> None:
    await _run_job(_writer(git_cli, fleet.cache, tmp_path), fleet)
    diff = git("diff", "--unified=0", f"main..{BRANCH}", cwd=fleet.remote)
    removed = [line[1:] for line in diff.splitlines()
               if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    assert len(removed) == len(added) == 6  # two items in each of three objects
    for before, after in zip(removed, added, strict=True):
        key, _, old_value = before.partition(": ")
        assert key.strip() in ("password", "user")
        assert after.startswith(f"{key}: ")
        # Same quoting, same trailing comment, same line ending: only the value differs.
        new_value = after.partition(": ")[2]
        old_core, new_core = old_value.split()[0].strip("'"), new_value.split()[0].strip("'")
        assert old_value.replace(old_core, "X") == new_value.replace(new_core, "X")
    crlf = git_bytes("show", f"{BRANCH}:apps/crlf.yaml", cwd=fleet.remote)
    assert crlf.count(b"\r\n") == crlf.count(b"\n") == fleet.files["apps/crlf.yaml"].count(b"\n")


async def test_a_rerun_of_the_job_makes_no_second_commit(fleet: Fleet, git_cli: cli.Git,
                                                         tmp_path: Path) -> None:
    writer = _writer(git_cli, fleet.cache, tmp_path)
    # A first run that stopped after its commit, before the push ...
    first = await _run_job(writer, fleet, push=False)
    assert first is not None
    assert not git("ls-remote", "--heads", str(fleet.remote), BRANCH, cwd=tmp_path).strip()
    # ... is found and pushed by the next run, and a third run finds it on the remote.
    assert await _run_job(writer, fleet) == first
    assert await _run_job(writer, fleet) == first
    assert git("rev-parse", f"refs/heads/{BRANCH}", cwd=fleet.remote).strip() == first
    assert git("rev-list", "--count", f"main..{BRANCH}", cwd=fleet.remote).strip() == "1"
    # Another job finds the files resealed already only if merged; unmerged, it reseals
    # again on its own branch (one commit, its own trailer).
    other = await _run_job(writer, fleet, job="aaaabbbbccccdddd")
    assert other not in (None, first)
    pending = await writer.pending_branches()
    assert [(p.name, p.commit, p.job_ids, p.files) for p in pending] == [
        (BRANCH, first, (JOB,), ("apps/crlf.yaml", "apps/db.yaml")),
        ("sealfleet/reseal-20260102-aaaabbbb", other, ("aaaabbbbccccdddd",),
         ("apps/crlf.yaml", "apps/db.yaml"))]


async def test_the_commit_holds_exactly_the_files_written(fleet: Fleet, git_cli: cli.Git,
                                                          tmp_path: Path) -> None:
    writer = _writer(git_cli, fleet.cache, tmp_path)
    workspace = await writer.prepare(JOB, DAY)
    # Something else put a file in the worktree: not ours, not committed.
    await asyncio.to_thread((workspace.path / "README.md").write_bytes, b"# changed\n")
    change = writing.FileChange("apps/config.yaml", b"apiVersion: v1\nkind: ConfigMap\n")
    assert await writer.write_files(workspace, [change]) == ["apps/config.yaml"]
    assert await writer.write_files(workspace, [change]) == []  # already so
    sha = await writer.commit(workspace, JOB, [change])
    assert sha is not None
    assert git("diff-tree", "--no-commit-id", "--name-only", "-r", sha,
               cwd=fleet.cache).split() == ["apps/config.yaml"]
    assert await writer.commit(workspace, "another-job", []) is None  # nothing of its own
    await writer.cleanup(workspace)


async def test_files_staged_from_memory_are_committed_byte_for_byte(
        fleet: Fleet, git_cli: cli.Git, tmp_path: Path) -> None:
    """store_files writes no file into the worktree: the blobs go straight into the
    object store and the index, exactly as given (CRLF kept, no filter), modes kept."""
    (fleet.clone / ".gitattributes").write_text("* text=auto eol=lf\n")   # never applied
    script = fleet.clone / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    git("add", ".gitattributes", "run.sh", cwd=fleet.clone)
    git("commit", "-qm", "attributes and a script", cwd=fleet.clone)
    git("push", "-q", "origin", "main", cwd=fleet.clone)
    writer = _writer(git_cli, fleet.cache, tmp_path)
    workspace = await writer.prepare(JOB, DAY)
    crlf = b"a: 1\r\nb: 2\r\n"
    changes = [writing.FileChange("apps/crlf.yaml", crlf),
               writing.FileChange("run.sh", b"#!/bin/sh\necho resealed\n")]
    assert await writer.store_files(workspace, changes) == ["apps/crlf.yaml", "run.sh"]
    assert not (workspace.path / "apps").exists()
    assert not (workspace.path / "run.sh").exists()
    for path in ("../outside.yaml", ".git/config", "apps/link.yaml", "apps/missing.yaml"):
        with pytest.raises(InputError):
            await writer.store_files(workspace, [writing.FileChange(path, b"y: 2\n")])
    sha = await writer.commit(workspace, JOB, changes)
    assert sha is not None
    await writer.cleanup(workspace)
    assert git_bytes("show", f"{sha}:apps/crlf.yaml", cwd=fleet.cache) == crlf
    assert git("ls-tree", sha, "run.sh", cwd=fleet.cache).split()[0] == "100755"
    assert git("diff-tree", "--no-commit-id", "--name-only", "-r", sha,
               cwd=fleet.cache).split() == ["apps/crlf.yaml", "run.sh"]


async def test_a_rerun_starts_from_the_checkpoints_of_the_same_start(
        fleet: Fleet, git_cli: cli.Git, tmp_path: Path) -> None:
    writer = _writer(git_cli, fleet.cache, tmp_path)
    workspace = await writer.prepare(JOB, DAY)
    item = resealing.ItemChange("password", "SHA256:old", "SHA256:new", resealed=True)
    first = writing.FileChange("apps/config.yaml", b"kind: ConfigMap\n",
                               (resealing.DocumentChange(0, "prod", "c", (item,)),))
    second = writing.FileChange("README.md", b"# resealed\n",
                                (resealing.DocumentChange(2, "", "r", (item,)),))
    await writer.store_files(workspace, [first])
    one = await writer.checkpoint(workspace, JOB, workspace.start, [first])
    await writer.store_files(workspace, [second])
    two = await writer.checkpoint(workspace, JOB, one, [second])
    # The run dies here.  The next one finds both checkpoints and starts from them.
    again = await writer.prepare(JOB, DAY)
    assert again.checkpoint == two
    assert again.carried == {"apps/config.yaml": first.documents,
                             "README.md": second.documents}
    assert git("diff", "--cached", "--name-only", cwd=again.path).split() == [
        "README.md", "apps/config.yaml"]
    assert "Sealfleet-Job" not in git("log", "--format=%B", f"main..{two}", cwd=fleet.cache)
    assert await writer.pending_branches() == []          # never listed as a branch
    # The job's one commit is on the start commit, and the checkpoints are dropped.
    sha = await writer.commit(again, JOB, [first, second])
    assert sha is not None
    assert git("rev-parse", f"{sha}^", cwd=fleet.cache).strip() == again.start
    assert git("for-each-ref", "refs/sealfleet/checkpoints/", cwd=fleet.cache) == ""
    await writer.cleanup(again)
    # Checkpoints of another start (the base moved since) are not used.
    stale = await writer.prepare("aaaabbbbccccdddd", DAY)
    await writer.store_files(stale, [first])
    await writer.checkpoint(stale, "aaaabbbbccccdddd", fleet_head(fleet), [first])
    rerun = await writer.prepare("aaaabbbbccccdddd", DAY)
    assert (rerun.checkpoint, rerun.carried) == (None, {})
    await writer.cleanup(rerun)


def fleet_head(fleet: Fleet) -> str:
    """A commit that is not the base: the checkpoint chain then grows from elsewhere."""
    return git("commit-tree", "-m", "elsewhere", "main^{tree}", cwd=fleet.cache).strip()


async def test_nothing_stale_means_no_commit_and_no_branch(fleet: Fleet, git_cli: cli.Git,
                                                           tmp_path: Path) -> None:
    fleet.old = fleet.new  # every object is sealed with the target already (or current)
    fleet.files = {"apps/current.yaml": fleet.files["apps/current.yaml"]}
    assert await _run_job(_writer(git_cli, fleet.cache, tmp_path), fleet) is None
    assert not git("ls-remote", "--heads", str(fleet.remote), "sealfleet/*",
                   cwd=tmp_path).strip()


async def test_the_users_checkout_is_never_touched(fleet: Fleet, git_cli: cli.Git,
                                                   tmp_path: Path) -> None:
    clone = fleet.clone
    (clone / "apps/db.yaml").write_bytes(b"# the user's uncommitted edit\n")
    (clone / "untracked.txt").write_text("mine\n")
    git("add", "apps/db.yaml", cwd=clone)
    before = {cmd: git(*cmd.split(), cwd=clone) for cmd in (
        "status --porcelain=v1", "rev-parse HEAD", "symbolic-ref HEAD", "branch --list",
        "for-each-ref refs/heads refs/remotes refs/tags", "diff --cached")}
    writer = writing.RepoWriter(git_cli, clone, base_branch="main",
                                worktrees_dir=tmp_path / "worktrees")
    assert await _run_job(writer, fleet) is not None
    assert {cmd: git(*cmd.split(), cwd=clone) for cmd in before} == before
    assert not (clone / ".git" / "FETCH_HEAD").exists()
    assert (clone / "apps/db.yaml").read_bytes() == b"# the user's uncommitted edit\n"
    assert git("worktree", "list", "--porcelain", cwd=clone).count("worktree ") == 1
    assert git("rev-parse", f"refs/heads/{BRANCH}", cwd=fleet.remote).strip()


async def test_paths_that_leave_the_worktree_are_refused(fleet: Fleet, git_cli: cli.Git,
                                                         tmp_path: Path) -> None:
    writer = _writer(git_cli, fleet.cache, tmp_path)
    workspace = await writer.prepare(JOB, DAY)
    assert await writer.read_files(workspace, ["README.md", "apps", "missing"]) == {
        "README.md": b"# apps\n", "apps": None, "missing": None}
    outside = tmp_path / "outside.yaml"
    outside.write_bytes(b"x: 1\n")
    # A symlink put into the worktree where a tracked file will be written.
    await asyncio.to_thread((workspace.path / "apps").mkdir)
    (workspace.path / "apps" / "db.yaml").symlink_to(outside)
    for path in ("../outside.yaml", "/etc/passwd", ".git/config", "apps/link.yaml",
                 "linked/x.yaml", "apps/missing.yaml", "apps", "apps/db.yaml"):
        with pytest.raises(InputError):
            await writer.write_files(workspace, [writing.FileChange(path, b"y: 2\n")])
    assert outside.read_bytes() == b"x: 1\n"
    await writer.cleanup(workspace)
    assert not workspace.path.exists()


def test_branch_names_and_commit_messages() -> None:
    assert writing.branch_name("3F2A-9C1E-5B7D", DAY) == BRANCH
    with pytest.raises(ValueError, match="letters or digits"):
        writing.branch_name("--", DAY)
    change = resealing.ItemChange("password", "SHA256:old", "SHA256:new", resealed=True)
    message = writing.commit_message("j1", [writing.FileChange(
        "a.yaml", b"", (resealing.DocumentChange(0, "prod", "db", (change,)),))])
    assert message == ("sealfleet: reseal 1 SealedSecret(s) in 1 file(s) with SHA256:new\n\n"
                       "- a.yaml [0] prod/db: password: SHA256:old -> SHA256:new\n\n"
                       "Sealfleet-Job: j1\n")


# ----------------------------------------------------------------- credentials


def _cgi_response(output: bytes) -> web.Response:
    head, _, body = output.partition(b"\r\n\r\n")
    status, headers = 200, {}
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "status":
            status = int(value.split()[0])
        elif name:
            headers[name] = value.strip()
    return web.Response(status=status, headers=headers, body=body)


def _processes_holding(secret: bytes) -> tuple[list[str], int]:
    """Which live processes show *secret* in their argv or environment, and how many
    git processes were seen at all (the check must have seen the client)."""
    holders, gits = [], 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            if part == "cmdline" and b"git" in data and b"http-backend" not in data:
                gits += 1
            if secret in data:
                holders.append(f"{pid}/{part}")
    return holders, gits


@pytest.fixture
async def http_remote(fleet: Fleet) -> AsyncIterator[tuple[str, list[tuple[list[str], int]]]]:
    """The bare remote over smart HTTP behind Basic auth (user ``x-access-token``,
    password TOKEN); every authenticated request records who shows the token."""
    seen: list[tuple[list[str], int]] = []
    good = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()

    async def backend(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != good:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="git"'})
        seen.append(_processes_holding(TOKEN.encode()))
        env = {**HERMETIC_ENV, "GIT_PROJECT_ROOT": str(fleet.remote.parent),
               "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": request.path.removeprefix("/git"),
               "QUERY_STRING": request.query_string, "REQUEST_METHOD": request.method,
               "CONTENT_TYPE": request.headers.get("Content-Type", ""),
               "REMOTE_USER": "x-access-token", "REMOTE_ADDR": "127.0.0.1",
               "GIT_PROTOCOL": request.headers.get("Git-Protocol", "")}
        backend = await asyncio.create_subprocess_exec(
            "git", "http-backend", env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        output, _ = await backend.communicate(await request.read())
        return _cgi_response(output)

    app = web.Application()
    app.router.add_route("*", "/git/{tail:.*}", backend)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/git/{fleet.remote.name}", seen
    finally:
        await runner.cleanup()


@pytest.fixture
def logging_wrapper(tmp_path: Path) -> tuple[str, Path]:
    """A ``git`` that records every argv and environment it is started with."""
    record = tmp_path / "calls.log"
    wrapper = tmp_path / "git-wrapper"
    wrapper.write_text(f'#!/bin/sh\n{{ printf "%s\\0" "$@"; echo; env; }} >> "{record}"\n'
                       'exec git "$@"\n')
    wrapper.chmod(0o700)
    return str(wrapper), record


def _private_helper(helper: Path) -> bool:
    """The askpass helper and its directory are owner-only and the script holds no token."""
    return (helper.stat().st_mode & 0o777 == 0o700
            and helper.parent.stat().st_mode & 0o777 == 0o700
            and TOKEN not in helper.read_text())


async def test_a_token_given_through_askpass_never_shows(
        fleet: Fleet, http_remote: tuple[str, list[tuple[list[str], int]]],
        logging_wrapper: tuple[str, Path], tmp_path: Path) -> None:
    url, seen = http_remote
    wrapper, record = logging_wrapper
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    creds = cli.Credentials(token_file=token_file)
    with structlog.testing.capture_logs() as logs:
        async with cli.Git(credentials=creds, binary=wrapper) as git_cli:
            helper = Path(git_cli.environment["GIT_ASKPASS"])
            assert _private_helper(helper)
            writer = writing.RepoWriter(git_cli, fleet.clone, base_branch="main",
                                        worktrees_dir=tmp_path / "worktrees", remote=url)
            sha = await _run_job(writer, fleet)
            assert [p.name for p in await writer.pending_branches()] == [BRANCH]
        assert not await asyncio.to_thread(helper.exists)
    assert git("rev-parse", f"refs/heads/{BRANCH}", cwd=fleet.remote).strip() == sha
    # git asked the helper, and while it held the token nobody's argv or environment did.
    assert seen
    assert all(holders == [] for holders, _ in seen)
    assert any(gits > 0 for _, gits in seen)
    calls = record.read_bytes()
    assert b"GIT_ASKPASS=" in calls
    assert TOKEN.encode() not in calls
    assert TOKEN not in repr(logs)

    # A wrong token: the error names the command, never the token or the URL's secret.
    token_file.write_text("wrong-" + TOKEN + "\n")
    async with cli.Git(credentials=creds) as git_cli:
        writer = writing.RepoWriter(git_cli, fleet.clone, base_branch="main",
                                    worktrees_dir=tmp_path / "worktrees", remote=url)
        with pytest.raises(cli.GitCommandError) as caught:
            await writer.pending_branches()
    assert caught.value.command == "fetch"
    assert str(caught.value).startswith("git fetch failed (exit 128): ")
    assert TOKEN not in str(caught.value)


async def test_a_deploy_key_is_passed_by_path_and_errors_are_scrubbed(
        fleet: Fleet, logging_wrapper: tuple[str, Path], tmp_path: Path) -> None:
    wrapper, record = logging_wrapper
    key_file = tmp_path / "deploy_key"
    key_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n"
                        "-----END OPENSSH PRIVATE KEY-----\n")
    key_file.chmod(0o600)
    creds = cli.Credentials(ssh_key_file=key_file, known_hosts_file=tmp_path / "known_hosts")
    async with cli.Git(credentials=creds, binary=wrapper, timeout=30) as git_cli:
        assert git_cli.environment["GIT_SSH_COMMAND"] == (
            f"ssh -i {key_file} -o IdentitiesOnly=yes -o BatchMode=yes "
            f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={tmp_path / 'known_hosts'}")
        writer = writing.RepoWriter(git_cli, fleet.clone, base_branch="main",
                                    worktrees_dir=tmp_path / "worktrees",
                                    remote="ssh://git@127.0.0.1:1/apps.git")
        with pytest.raises(cli.GitCommandError) as caught:
            await writer.prepare(JOB, DAY)
    assert caught.value.command == "ls-remote"
    assert "not-a-real-key" not in str(caught.value)
    assert b"not-a-real-key" not in record.read_bytes()
    assert f"GIT_SSH_COMMAND=ssh -i {key_file}".encode() in record.read_bytes()


async def test_credential_files_are_checked_when_git_opens(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    with pytest.raises(ConfigError, match="token"):
        async with cli.Git(credentials=cli.Credentials(token_file=token_file)):
            pass
    token_file.chmod(0o600)
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        async with cli.Git(credentials=cli.Credentials(token_file=token_file)):
            pass
    with pytest.raises(ConfigError, match="no such file"):
        async with cli.Git(credentials=cli.Credentials(ssh_key_file=tmp_path / "none")):
            pass
    git_cli = cli.Git()
    assert git_cli.scrub("push https://u:p@h/x Bearer abc") == \
        "push https://[REDACTED]@h/x Bearer [REDACTED]"
