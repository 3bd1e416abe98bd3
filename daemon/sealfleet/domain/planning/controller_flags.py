"""The sealed-secrets controller's flags that key planning depends on, read as it reads them.

The controller takes every flag from its command line or from a ``SEALED_SECRETS_*``
env var (pflagenv: the flag name upper-cased, ``-`` as ``_``), the command line winning
(sealed-secrets.md §3).  Key sync needs four of them:

- ``--key-renew-period`` (deprecated alias ``--rotate-period``; default 720h, ``0`` off):
  a controller that renews on its own adds keys the fleet did not make;
- ``--watch-for-secrets`` (default false): key Secrets *added* at runtime are loaded
  without a restart (updates, relabels and deletions still need one);
- ``--key-prefix`` (default ``sealed-secrets-key``): the Secret named exactly this is
  loaded whatever its label;
- ``--key-order-priority`` (``CertNotBefore`` or ``SecretCreationTimestamp``): which key
  seals.  Any other value is logged by the controller and means ``CertNotBefore``.

Durations use Go's ``time.ParseDuration`` syntax, parsed here exactly (``720h``,
``1h30m``, ``0``, ``1.5h``; no ``d`` unit).  A value the controller would refuse is a
:class:`FlagsError` naming the flag: such a controller does not start at all.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Mapping, Sequence

from sealfleet.domain.keys import DEFAULT_KEY_PREFIX

DEFAULT_KEY_RENEW_PERIOD = dt.timedelta(hours=720)
ENV_PREFIX = "SEALED_SECRETS_"

_UNITS_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60 * 1_000_000_000, "h": 3600 * 1_000_000_000}
_MAX_NS = 2**63 - 1  # Go's Duration is an int64 of nanoseconds
_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_NUMBER_CHARS = frozenset(".0123456789")
_PREFIX = re.compile(r"^[a-z0-9-]{1,245}$")
# The controller's boolean flags: given without "=value" they take no argument.
_BOOL_FLAGS = frozenset({"watch-for-secrets", "update-status", "skip-recreate",
                         "accept-deprecated-v1-data", "all-namespaces", "old-gc-behavior",
                         "log-info-stdout"})
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class FlagsError(ValueError):
    """The controller would refuse to start with this value (the message names the flag)."""


class KeyOrder(enum.StrEnum):
    """``--key-order-priority``: what makes a key the newest (the one that seals)."""

    CERT_NOT_BEFORE = "CertNotBefore"
    SECRET_CREATION = "SecretCreationTimestamp"  # noqa: S105 (a flag value)


@dataclasses.dataclass(frozen=True)
class ControllerFlags:
    """What key planning needs to know of one controller's settings (upstream defaults)."""

    key_renew_period: dt.timedelta = DEFAULT_KEY_RENEW_PERIOD
    watch_for_secrets: bool = False
    key_prefix: str = DEFAULT_KEY_PREFIX
    key_order: KeyOrder = KeyOrder.CERT_NOT_BEFORE
    # SEALED_SECRETS_* variables (and envFrom sources) whose value the Deployment does
    # not spell out (valueFrom, envFrom): the settings above may be wrong about them.
    unresolved: tuple[str, ...] = ()

    @property
    def self_renewal(self) -> bool:
        """Does the controller add keys of its own (``period > 0``, as upstream checks)?"""
        return self.key_renew_period > dt.timedelta(0)


def parse_go_duration(text: str) -> dt.timedelta:
    """Go's ``time.ParseDuration``; ValueError with Go's wording when it would fail."""
    invalid = f'time: invalid duration "{text}"'
    rest = text
    negative = False
    if rest[:1] in ("-", "+") and rest:
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return dt.timedelta(0)
    if not rest:
        raise ValueError(invalid)
    total = 0
    while rest:
        match = _NUMBER.match(rest)
        assert match is not None  # the pattern matches the empty string
        whole, fraction = match.group(1), match.group(2)
        if (not whole and not fraction) or len(whole) > 19:  # 19 digits: beyond is overflow
            raise ValueError(invalid)
        fraction = (fraction or "")[:19]  # digits beyond a nanosecond's precision count not
        rest = rest[match.end():]
        unit_end = next((i for i, c in enumerate(rest) if c in _NUMBER_CHARS), len(rest))
        unit, rest = rest[:unit_end], rest[unit_end:]
        if not unit:
            raise ValueError(f'time: missing unit in duration "{text}"')
        if unit not in _UNITS_NS:
            raise ValueError(f'time: unknown unit "{unit}" in duration "{text}"')
        scale = _UNITS_NS[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
        if total > _MAX_NS:
            raise ValueError(invalid)
    return dt.timedelta(microseconds=(-total if negative else total) // 1000)


def _go_bool(flag: str, text: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise FlagsError(f'invalid argument "{text}" for "--{flag}" flag: not a boolean')


def _duration(flag: str, text: str) -> dt.timedelta:
    try:
        return parse_go_duration(text)
    except ValueError as exc:
        raise FlagsError(f'invalid argument "{text}" for "--{flag}" flag: {exc}') from None


def _command_line(args: Sequence[str]) -> list[tuple[str, str]]:
    """(flag, value) pairs in order, as pflag reads them (positional args skipped)."""
    pairs: list[tuple[str, str]] = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            break  # everything after is positional
        if not arg.startswith("-") or arg == "-":
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if not has_value:
            if name in _BOOL_FLAGS:
                value = "true"
            elif index < len(args):
                value, index = args[index], index + 1
            else:
                raise FlagsError(f"flag needs an argument: --{name}")
        pairs.append((name, value))
    return pairs


# The deprecated alias first: between two env vars, the current name wins.
_KNOWN = ("rotate-period", "key-renew-period", "watch-for-secrets", "key-prefix",
          "key-order-priority")


def parse_controller_flags(args: Sequence[str], env: Mapping[str, str], *,
                           unresolved: Sequence[str] = ()) -> ControllerFlags:
    """The settings from the container's args (``command[1:]`` then ``args``) and literal
    env, the command line winning; later occurrences of a flag win, as in pflag."""
    settings: list[tuple[str, str]] = []
    for flag in _KNOWN:
        name = ENV_PREFIX + flag.upper().replace("-", "_")
        if name in env:
            settings.append((flag, env[name]))
    settings += [(flag, value) for flag, value in _command_line(args) if flag in _KNOWN]
    renew, watch = DEFAULT_KEY_RENEW_PERIOD, False
    prefix, order = DEFAULT_KEY_PREFIX, KeyOrder.CERT_NOT_BEFORE
    for flag, value in settings:
        if flag in ("key-renew-period", "rotate-period"):
            renew = _duration(flag, value)
        elif flag == "watch-for-secrets":
            watch = _go_bool(flag, value)
        elif flag == "key-prefix":
            prefix = value
        else:
            order = KeyOrder(value) if value in tuple(KeyOrder) else KeyOrder.CERT_NOT_BEFORE
    if not _PREFIX.match(prefix):
        raise FlagsError(f'invalid argument "{prefix}" for "--key-prefix" flag: only a-z, 0-9 '
                         "and '-', at most 245 characters")
    return ControllerFlags(key_renew_period=renew, watch_for_secrets=watch, key_prefix=prefix,
                           key_order=order, unresolved=tuple(unresolved))
