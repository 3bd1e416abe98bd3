"""Files and URLs the CLI reads and writes, with OS and network errors translated once.

Writes are atomic (temporary file in the same directory, fsync, rename, fsync of the
directory), as kubeseal's renameio writes are: a reader never sees half a SealedSecret,
and a failed run leaves the old file untouched.  Error messages name the path or URL
and the reason, never file content.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sealfleet.errors import InputError

STDIN_NAME = "<stdin>"
# A certificate is a few kilobytes; refuse to buffer anything absurd from a URL.
_MAX_CERT_BYTES = 1 << 20
_URL_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Input:
    """The bytes of one input and the name errors should use for it."""

    name: str
    content: bytes


def read_input(path: str | None) -> Input:
    """Read ``-f PATH`` (``-`` or None means stdin)."""
    if path is None or path == "-":
        if sys.stdin.isatty():
            # As kubeseal does: a silent wait on a terminal looks like a hang.
            print("(tty detected: expecting input on stdin, end with Ctrl-D)", file=sys.stderr)
        try:
            return Input(STDIN_NAME, sys.stdin.buffer.read())
        except OSError as exc:
            raise InputError(f"{STDIN_NAME}: cannot read: {exc.strerror or exc}") from None
    return Input(path, read_file(path))


def read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None


def read_certificate_source(source: str) -> bytes:
    """The bytes behind ``--cert``: a local path, an http(s) URL or a ``file://`` URL.

    Like kubeseal, any HTTP status other than 200 is an error, and the usual proxy
    environment variables apply (urllib honours them).
    """
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme == "file":
        return read_file(urllib.request.url2pathname(urllib.parse.urlsplit(source).path))
    if scheme not in ("http", "https"):
        return read_file(source)
    try:
        with urllib.request.urlopen(source, timeout=_URL_TIMEOUT_SECONDS) as response:  # noqa: S310 (scheme checked above)
            status = response.status
            body: bytes = response.read(_MAX_CERT_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise InputError(f"{source}: cannot fetch certificate: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InputError(f"{source}: cannot fetch certificate: {reason}") from None
    if status != 200:
        raise InputError(f"{source}: cannot fetch certificate: HTTP {status}")
    if len(body) > _MAX_CERT_BYTES:
        raise InputError(f"{source}: certificate response is larger than 1 MiB")
    return body


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], data: bytes | str, *,
                 mode: int | None = None) -> None:
    """Replace *path* with *data* atomically.

    *mode* None keeps an existing file's permission bits (or uses the umask default
    for a new file); key files pass ``0o600`` so the key is never readable by others,
    not even for an instant.
    """
    target = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    if mode is None:
        try:
            mode = stat.S_IMODE(target.stat().st_mode)
        except FileNotFoundError:
            mode = 0o666 & ~_current_umask()
        except OSError as exc:
            raise InputError(f"{target}: cannot write: {exc.strerror or exc}") from None
    directory = target.parent
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{target}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise InputError(f"{target}: cannot write: {exc.strerror or exc}") from None
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse, which is harmless.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_output(path: str | None, data: str) -> None:
    """``-w PATH`` writes atomically; without it the text goes to stdout as is."""
    if path is None or path == "-":
        sys.stdout.write(data)
        sys.stdout.flush()
    else:
        atomic_write(path, data)
