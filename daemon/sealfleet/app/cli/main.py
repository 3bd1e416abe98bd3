"""The ``sealfleet`` command: one argparse tree, one module per command group.

Command modules are imported lazily by name so that ``sealfleet seal`` never pays for
(or depends on) the daemon, and nothing on the daemon's path imports the sandbox.
Every module exposes ``register(subparsers)``, which adds its parsers and sets
``handler`` (a callable taking the parsed namespace and returning an exit code).

Exit codes: 0 success, 1 the operation found a failure (e.g. a value no key decrypts,
an unreachable daemon, a store that fails at run time), 2 usage, input or configuration
error - including the files and addresses the config names: a missing or loose KEK or
token file, a database that is not SQLite, a state directory that cannot be written,
an API address already in use - 130 interrupted.  Errors are one line on stderr: no traceback
(unless ``SEALFLEET_DEBUG=1``), never a plaintext value or key material.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from sealfleet import __version__
from sealfleet.errors import (
    ConfigError,
    DecryptionError,
    FleetError,
    InputError,
    RefusedError,
    StoreError,
)

# Where the daemon and its client commands find their config unless told (-c); here, so
# that no command pays for the config module (pydantic) just to learn the default.
DEFAULT_CONFIG_PATH = Path("/etc/sealfleet/sealfleet.toml")

# Modules under sealfleet.app.cli, each contributing the subcommands listed.  Only the
# module of the command being run is imported: `sealfleet seal` must not pay for pydantic,
# aiosqlite or aiohttp at start-up.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "sealing": ("seal", "unseal", "reencrypt", "validate"),
    "keys": ("keys",),
    "db": ("db",),
    "sandbox": ("sandbox",),
    "daemon": ("run", "status", "staleness", "demo"),
    "jobs": ("jobs", "audit"),
    "check": ("check",),
    "reseal": ("reseal",),
}

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _modules_for(argv: Sequence[str]) -> list[str]:
    """The command modules needed to parse *argv*: one when a known command leads, else all."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    for module, commands in COMMAND_MODULES.items():
        if first in commands:
            return [module]
    return list(COMMAND_MODULES)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="sealfleet",
                     description="Fleet manager for Bitnami Sealed Secrets.")
    parser.add_argument("--version", action="version", version=f"sealfleet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in _modules_for(argv):
        importlib.import_module(f"sealfleet.app.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except (InputError, ConfigError, RefusedError) as exc:
        return _fail(exc, 2)
    except DecryptionError as exc:
        return _fail(exc, 1)
    except (StoreError, FleetError) as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error worth a message.
        sys.stderr.close()
        return 1
    except Exception as exc:
        # An unexpected error: say what kind, never its text (it may quote input).
        if os.environ.get("SEALFLEET_DEBUG") == "1":
            traceback.print_exc()
        return _fail(f"internal error ({type(exc).__name__}); "
                     "rerun with SEALFLEET_DEBUG=1 for a traceback", 1)


def _fail(error: object, code: int) -> int:
    print(f"sealfleet: error: {error}", file=sys.stderr)
    return code
