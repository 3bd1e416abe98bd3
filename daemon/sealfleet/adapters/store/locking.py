"""One daemon per database: an ``flock`` on a sidecar ``<database>.lock`` file.

Two daemons on one database (each with its own socket and port) would both scan,
both write and both serve, each unaware of the other's keys and jobs.  The daemon
therefore opens the store with ``exclusive=True``, which takes an exclusive, non-
blocking ``flock`` on ``<database>.lock`` before touching the database, and holds it
until the store closes; a second daemon is refused, naming the holder.  CLI commands
that only read (``sealfleet db status``) take no lock.

Why a sidecar file and ``flock``: SQLite's own locks are per transaction, not per
process lifetime; ``flock`` is released by the kernel when the holder dies, however
it dies, so there is never a stale lock to clean up.  The file's content (holder pid
and host) is informational only: it is written after the lock is taken and read to
name the holder in the refusal.  The file is never deleted, because deleting a lock
file races with a process that has just opened it.  Mode 0600, since anyone who can
open the file can also lock it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from sealfleet.errors import StoreError


@dataclass
class InstanceLock:
    """A held lock; :meth:`release` (or process exit) lets the next daemon in."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the flock
            self.fd = None


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


def acquire(database: Path) -> InstanceLock:
    """Take the single-instance lock of *database* or raise a StoreError naming the holder."""
    path = lock_path(database)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the single-instance lock file "
                         f"({exc.strerror or type(exc).__name__})") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{database}: already in use by another sealfleet daemon "
                             f"({_holder(fd)}, lock {path}); stop it first, or give this "
                             "one its own [store] database") from None
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)   # an older, wider file: nobody else may lock it
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"{path}: cannot take the single-instance lock "
                         f"({exc.strerror or type(exc).__name__})") from exc
    except BaseException:
        os.close(fd)
        raise
    return InstanceLock(path, fd)


def _holder(fd: int) -> str:
    """'pid N on HOST' from the lock file, as far as it can be read."""
    try:
        text = os.pread(fd, 256, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return "holder unknown"
    host = f" on {parts[1]}" if len(parts) > 1 else ""
    return f"pid {parts[0]}{host}"
