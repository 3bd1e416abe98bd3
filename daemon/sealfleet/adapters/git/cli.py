"""The git command line, run through asyncio subprocesses (as Argo CD Image Updater and
Renovate drive git): one ``git`` per operation, a fixed argv we build, no shell.

Every command runs hermetically: the system and global git config are ignored
(``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``), repository hooks never run
(``core.hooksPath=/dev/null``), no credential helper stores anything, line endings are
never converted by config (``core.autocrlf=false``), and git never prompts.

Credentials never appear in an argv, a URL, a log line or an error:

- a deploy key is passed as its *path* in ``GIT_SSH_COMMAND`` (``ssh -i <file>
  -o IdentitiesOnly=yes -o BatchMode=yes``, host keys checked);
- a token stays in its credentials file: ``GIT_ASKPASS`` names a tiny helper script,
  written 0700 in a private 0700 temporary directory, that reads the file when git asks.
  Only git and the helper see it; the environment holds two paths.

A failed command becomes one :class:`GitCommandError` naming the subcommand and the
last lines of its stderr, scrubbed of credentials (the token, URL userinfo, bearer
tokens and PEM blocks); a command over its time limit is killed and becomes a
:class:`~sealfleet.errors.TransientError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import structlog

from sealfleet.adapters import credentials
from sealfleet.domain.redaction import REDACTED, mask_text
from sealfleet.errors import ConfigError, PermanentError, TransientError

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT_SECONDS = 300.0
_MAX_TOKEN_BYTES = 16 << 10
_STDERR_LINES = 3
_STDERR_CHARS = 400
# Config that makes every command hermetic (see the module docstring).
_HERMETIC = ("-c", "core.hooksPath=/dev/null", "-c", "credential.helper=",
             "-c", "core.autocrlf=false", "-c", "commit.gpgSign=false",
             "-c", "advice.detachedHead=false")


class GitCommandError(PermanentError):
    """A git command failed; the message names it and never carries a credential."""

    def __init__(self, message: str, *, command: str, returncode: int) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to remotes: a deploy key file (SSH) and/or a token file (HTTPS).

    *username* goes with the token (``x-access-token`` suits GitHub; GitLab and Gitea
    accept any name with a token).  *known_hosts_file* pins the SSH host keys.
    """

    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    token_file: Path | None = None
    username: str = "x-access-token"


@dataclass(frozen=True)
class Completed:
    stdout: bytes
    stderr: bytes = field(repr=False)
    returncode: int


def _ssh_command(creds: Credentials) -> str:
    parts = ["ssh", "-i", str(creds.ssh_key_file), "-o", "IdentitiesOnly=yes",
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]
    if creds.known_hosts_file is not None:
        parts += ["-o", f"UserKnownHostsFile={creds.known_hosts_file}"]
    return shlex.join(parts)


def _askpass_script(username: str, token_file: Path) -> str:
    # git asks "Username for ..." and "Password for ...": the name is no secret, and the
    # token is read from its file only now, by the shell's builtin (no process argv).
    return ("#!/bin/sh\n"
            'case "$1" in\n'
            f"  [Uu]sername*) printf '%s\\n' {shlex.quote(username)} ;;\n"
            f"  *) IFS= read -r line < {shlex.quote(str(token_file))}; "
            "printf '%s\\n' \"$line\" ;;\n"
            "esac\n")


class Git:
    """Runs git for sealfleet.  Use as an async context manager: the askpass helper
    exists only while it is open."""

    def __init__(self, *, credentials: Credentials | None = None, binary: str = "git",
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._credentials = credentials or Credentials()
        self._binary = binary
        self._timeout = timeout
        self._helper_dir: str | None = None
        self._secrets: tuple[str, ...] = ()
        self._env: dict[str, str] = {}

    async def __aenter__(self) -> Git:
        await asyncio.to_thread(self._open)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.to_thread(self._close)

    def _open(self) -> None:
        creds = self._credentials
        env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C",
               "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
               "GIT_CONFIG_GLOBAL": os.devnull}
        home = os.environ.get("HOME")
        if home:
            env["HOME"] = home  # ssh looks for its config there; git's is ignored above
        if creds.ssh_key_file is not None:
            if not creds.ssh_key_file.is_file():
                raise ConfigError(f"deploy key {creds.ssh_key_file}: no such file")
            env["GIT_SSH_COMMAND"] = _ssh_command(creds)
        if creds.token_file is not None:
            token = credentials.read_private(creds.token_file, limit=_MAX_TOKEN_BYTES,
                                             label="git token").decode("utf-8", "replace")
            token = token.splitlines()[0].strip() if token.strip() else ""
            if not token:
                raise ConfigError(f"git token {creds.token_file}: the file is empty")
            self._secrets = (token,)  # kept only to scrub it out of git's stderr
            self._helper_dir = tempfile.mkdtemp(prefix="sealfleet-git-")  # mode 0700
            helper = os.path.join(self._helper_dir, "askpass")
            fd = os.open(helper, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as handle:
                handle.write(_askpass_script(creds.username,
                                             creds.token_file.resolve()))
            env["GIT_ASKPASS"] = helper
        self._env = env

    def _close(self) -> None:
        if self._helper_dir is not None:
            shutil.rmtree(self._helper_dir, ignore_errors=True)
            self._helper_dir = None
        self._secrets = ()

    @property
    def environment(self) -> Mapping[str, str]:
        """What every git process gets as its environment (paths, never a secret)."""
        return dict(self._env)

    def scrub(self, text: str) -> str:
        """*text* with every credential masked (for errors and logs)."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return mask_text(text)

    async def run(self, *args: str, cwd: Path, stdin: bytes | None = None,
                  env: Mapping[str, str] | None = None, check: bool = True,
                  ok_codes: Sequence[int] = (0,)) -> Completed:
        """Run ``git <args>`` in *cwd*; a return code outside *ok_codes* raises (when
        *check*).  *env* adds variables (author identity, say) to the hermetic set."""
        if not self._env:
            raise RuntimeError("Git is used outside 'async with'")
        command = next((a for a in args if not a.startswith("-")), "git")
        argv = [self._binary, *_HERMETIC, *args]
        started = time.monotonic()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env={**self._env, **(env or {})},
                stdin=asyncio.subprocess.PIPE if stdin is not None
                else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise PermanentError(f"cannot run {self._binary}: "
                                 f"{exc.strerror or type(exc).__name__}") from None
        try:
            async with asyncio.timeout(self._timeout):
                stdout, stderr = await process.communicate(stdin)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # the process we started, by its pid
            await process.wait()
            raise TransientError(f"git {command} did not finish within "
                                 f"{self._timeout:g}s") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        returncode = process.returncode if process.returncode is not None else -1
        log.debug("git_command_finished", command=command, returncode=returncode,
                  duration_ms=round((time.monotonic() - started) * 1000, 1))
        result = Completed(stdout, stderr, returncode)
        if check and returncode not in ok_codes:
            raise self.error(command, result)
        return result

    def error(self, command: str, result: Completed) -> GitCommandError:
        """The one translation of a failed command: scrubbed last lines of its stderr."""
        lines = [line.strip() for line in result.stderr.decode("utf-8", "replace").splitlines()
                 if line.strip() and not line.startswith("hint:")]
        detail = self.scrub("; ".join(lines[-_STDERR_LINES:]))[:_STDERR_CHARS]
        message = f"git {command} failed (exit {result.returncode})"
        return GitCommandError(f"{message}: {detail}" if detail else message,
                               command=command, returncode=result.returncode)
