"""One error hierarchy for the whole project, named by what the caller should do.

Adapters translate their library's errors into these exactly once (chaining with
``from``), so callers never match library exceptions or message text.  Messages must
never contain plaintext secret values, private keys or tokens.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error sealfleet raises on purpose."""


class TransientError(FleetError):
    """Worth retrying later: timeouts, 5xx, 429, refused connections."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(FleetError):
    """Retrying will not help: mark the unit unhealthy and carry on with the others."""


class ConfigError(FleetError):
    """The configuration is wrong: the process should exit and name the file and key."""


class InputError(PermanentError):
    """A user-supplied file, flag or document is malformed (CLI exit code 2)."""


class DecryptionError(PermanentError):
    """No available private key could decrypt a sealed value (CLI exit code 1)."""


class StoreError(FleetError):
    """The SQLite store is unusable: bad schema, edited migration, unreadable KEK."""


class StoreBusyError(StoreError, TransientError):
    """The database was locked by someone else (SQLITE_BUSY/LOCKED) past the busy timeout.

    The store itself is fine and nothing was written: retry briefly.  It is a
    :class:`StoreError` (the failure is ours, not a cluster's) and a
    :class:`TransientError` (so the one retry helper retries it).
    """


def first_error(group: BaseExceptionGroup[BaseException], *,
                prefer: tuple[type[BaseException], ...] = (FleetError,)) -> BaseException:
    """The error that ended a TaskGroup: its first leaf of the first *prefer* kind that
    occurs (in order), else its first leaf.  The one place exception groups are unwrapped,
    so a caller deals with one error as before TaskGroups."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for kind in prefer:
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else group


def drop_tracebacks(error: BaseException) -> None:
    """Forget the tracebacks of *error* (and of its causes, contexts and group members):
    a handled error that is retried, not kept.

    A failed connection's exceptions and frames refer to each other (aiohttp's and
    aiohappyeyeballs' error lists are locals of frames in those exceptions' tracebacks),
    so only the cyclic collector freed them: about 100 objects per failed attempt, and
    in a fleet-wide outage of 1,000 clusters generation-2 collections of 60-175 ms every
    second or two, each a stop of the event loop and of the API.  Without the exception
    -> traceback link, reference counting frees them at once.  The frames themselves are
    left alone: ``traceback.clear_frames`` would also finalize a coroutine still
    suspended in a shared exception's traceback (one set on a future by another task),
    and it did, stopping a reseal's Git watcher.
    """
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


class RefusedError(PermanentError):
    """A mutation was refused as asked (it would lose something, or names nothing that
    exists): nothing was journaled or changed.  The message says why; CLI exit code 2."""
