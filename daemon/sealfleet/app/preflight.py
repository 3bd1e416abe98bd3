"""Start-up checks of the files the config names: every problem is a :class:`ConfigError`.

A daemon that cannot read its KEK, finds something else than SQLite at its database
path, cannot write its state directory or cannot bind its API address will fail the
same way on every restart: that is a configuration error (exit 2, which the shipped
unit's ``Restart=on-failure`` treats like any failure, but which tells the operator and
``sealfleet run`` callers to fix a file rather than wait), not a runtime failure (1).

The adapters report *what* failed (the KEK loader names its file, the API server its
address); only this layer knows which config key named it, so the messages here are
``<config>: <dotted key>: <what failed>`` on one line, and never carry a token.

Everything here blocks (file I/O): run it in a thread.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sealfleet.adapters import credentials
from sealfleet.adapters.store import KeyEncryptionKey
from sealfleet.errors import ConfigError

if TYPE_CHECKING:  # settings are only read here: `db status` need not import pydantic
    from sealfleet.app.config import Settings

SQLITE_HEADER = b"SQLite format 3\x00"
MIN_TOKEN_BYTES = 16     # shorter is guessable; secrets.token_urlsafe(32) (the README) gives 43
MAX_TOKEN_BYTES = 4096   # read no further: a token file pointing at /dev/zero must not hang us

TokenKey = Literal["read_token_file", "admin_token_file"]


@dataclass(frozen=True)
class Credentials:
    """What the daemon reads once at start: the KEK and the API's bearer tokens."""

    kek: KeyEncryptionKey
    read_token: bytes | None = field(default=None, repr=False)
    admin_token: bytes | None = field(default=None, repr=False)


def where(settings: Settings, key: str) -> str:
    """``<config file>: <dotted key>``: how every error of this module starts."""
    return f"{settings.config_path or '<config>'}: {key}"


def check(settings: Settings) -> Credentials:
    """All start-up checks, in the order the daemon needs the files."""
    kek = load_kek(settings)
    check_database(settings.store.database, where=where(settings, "store.database"),
                   writable=True)
    read_token, admin_token = read_tokens(settings)
    return Credentials(kek, read_token, admin_token)


def load_kek(settings: Settings) -> KeyEncryptionKey:
    try:
        return KeyEncryptionKey.from_file(settings.store.kek_file)
    except ConfigError as exc:  # the loader names the file; add the config and the key
        raise ConfigError(f"{where(settings, 'store.kek_file')}: {exc}") from exc


def check_database(path: Path, *, where: str | None, writable: bool) -> None:
    """An absent file is fine (it will be created); an existing one must be SQLite.

    *writable*: the directory must accept new files too, since SQLite creates the
    database and its ``-wal``/``-shm`` files next to each other.
    """
    prefix = f"{where}: " if where else ""
    if writable:
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # Probing beats os.access(): that says yes to root on a read-only mount.
            with tempfile.TemporaryFile(dir=directory, prefix=".sealfleet-probe-"):
                pass
        except OSError as exc:
            raise ConfigError(f"{prefix}directory {directory} is not writable "
                              f"({exc.strerror or type(exc).__name__}); the database and "
                              "its WAL files are created there") from exc
    try:
        with open(path, "r+b" if writable else "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"{prefix}{path}: cannot open the database "
                          f"({exc.strerror or type(exc).__name__})") from exc
    if header and header != SQLITE_HEADER:  # an empty file is a valid, empty database
        raise ConfigError(f"{prefix}{path} is not an SQLite database")


def read_tokens(settings: Settings) -> tuple[bytes | None, bytes | None]:
    """Both bearer tokens; refused when they are equal (the read token would be admin)."""
    read_token = read_token_of(settings, "read_token_file")
    admin_token = read_token_of(settings, "admin_token_file")
    if read_token is not None and read_token == admin_token:
        raise ConfigError(f"{settings.config_path or '<config>'}: api.read_token_file and "
                          "api.admin_token_file hold the same token: the read token would "
                          "also grant admin; give each its own")
    return read_token, admin_token


def read_token_of(settings: Settings, key: TokenKey) -> bytes | None:
    """The token ``[api] <key>`` names; None when the key is unset."""
    path: Path | None = getattr(settings.api, key)
    if path is None:
        return None
    return read_token(path, where=where(settings, f"api.{key}"))


def read_token(path: Path, *, where: str) -> bytes:
    """A bearer token from an owner-only file, surrounding whitespace stripped.

    Owner-only like the KEK (the same rule, :mod:`sealfleet.adapters.credentials`): a
    token other local users can read is no access control.  Messages name the file,
    never its content.
    """
    data = credentials.read_private(path, limit=MAX_TOKEN_BYTES + 1, label=f"{where}:")
    if len(data) > MAX_TOKEN_BYTES:
        raise ConfigError(f"{where}: {path}: longer than {MAX_TOKEN_BYTES} bytes; "
                          "a token file holds one token")
    token = data.strip()
    if len(token) < MIN_TOKEN_BYTES:
        raise ConfigError(f"{where}: {path}: the token is shorter than "
                          f"{MIN_TOKEN_BYTES} characters")
    if any(byte < 0x21 or byte > 0x7E for byte in token):
        raise ConfigError(f"{where}: {path}: the token may hold only printable ASCII "
                          "without spaces (it travels in an Authorization header)")
    return token


def bind_failure(settings: Settings, error: Exception) -> ConfigError:
    """The API server could not bind an address: a ConfigError naming the key.

    With both a socket and a listener configured, the section is named; the server's
    message says which address failed.
    """
    api = settings.api
    key = ("api.listen" if api.socket is None else "api.socket" if api.listen is None
           else "api")
    return ConfigError(f"{where(settings, key)}: {error}")
