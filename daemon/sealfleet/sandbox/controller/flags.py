"""The emulated controller's command line, read from its Deployment as the real one is.

The real controller takes its settings from flags (and ``SEALED_SECRETS_*`` env vars) in
the Deployment's pod template, so changing them means editing the Deployment, which
rolls the Pod.  The emulation does the same: every (re)start parses the container args
and env of the Deployment as it is *now*, so ``kubectl edit``/``kubectl set env`` and a
rollout behave as on a real cluster.  A flag the real controller does not know makes it
exit at once (pflag's behaviour), which shows as a crash loop.

Durations use Go's ``time.ParseDuration`` syntax (``720h``, ``1h30m``, ``0``, ``250ms``);
the cutoff time is RFC 1123 with a numeric zone, as ``date -R`` prints it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sealfleet.domain.keys import DEFAULT_KEY_PREFIX
from sealfleet.domain.planning import controller_flags

CONTAINER_NAME = "sealed-secrets-controller"
IMAGE = "docker.io/bitnami/sealed-secrets-controller:0.36.6"
ORDER_BY_NOT_BEFORE = "CertNotBefore"
ORDER_BY_CREATION = "SecretCreationTimestamp"

_PREFIX_PATTERN = re.compile(r"^[a-z0-9-]{1,245}$")


class FlagError(ValueError):
    """The controller would refuse to start with these flags."""


def parse_go_duration(text: str) -> dt.timedelta:
    """Go's ``time.ParseDuration`` (the daemon's parser: one definition of the syntax)."""
    try:
        return controller_flags.parse_go_duration(text)
    except ValueError as exc:
        raise FlagError(str(exc)) from None


def format_go_duration(delta: dt.timedelta) -> str:
    """The shortest Go-style spelling the parser reads back (``720h0m0s`` style)."""
    total = delta.total_seconds()
    if total == 0:
        return "0s"
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{int(hours)}h{int(minutes)}m{seconds:g}s"


def parse_cutoff(text: str) -> dt.datetime:
    """``--key-cutoff-time``: RFC 1123 with a numeric zone (``Mon, 02 Jan 2006 15:04:05 -0700``)."""
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise FlagError(f"error parsing key cutoff time {text!r}: expected RFC1123Z")
    return parsed.astimezone(dt.UTC)


def format_cutoff(when: dt.datetime) -> str:
    return email.utils.format_datetime(when.astimezone(dt.UTC))


@dataclasses.dataclass(frozen=True)
class ControllerFlags:
    """The subset of the controller's flags the emulation honours (defaults as upstream)."""

    key_renew_period: dt.timedelta = dt.timedelta(hours=720)
    key_cutoff_time: dt.datetime | None = None
    key_prefix: str = DEFAULT_KEY_PREFIX
    key_size: int = 4096
    key_ttl: dt.timedelta = dt.timedelta(hours=87600)
    my_cn: str = ""
    key_order_priority: str = ORDER_BY_NOT_BEFORE
    watch_for_secrets: bool = False
    update_status: bool = True
    skip_recreate: bool = False
    rate_limit: float = 2.0
    rate_limit_burst: int = 2

    def to_args(self) -> list[str]:
        """The container args a Deployment would carry for these settings."""
        defaults = ControllerFlags()
        args: list[str] = []
        for spec in _FLAGS.values():
            value = getattr(self, spec.attribute)
            if value != getattr(defaults, spec.attribute):
                args.append(f"--{spec.name}={spec.render(value)}")
        return args


@dataclasses.dataclass(frozen=True)
class _Flag:
    name: str
    attribute: str
    kind: str  # duration | time | str | int | float | bool

    def parse(self, text: str) -> Any:
        if self.kind == "duration":
            return parse_go_duration(text)
        if self.kind == "time":
            return parse_cutoff(text) if text else None
        if self.kind == "int":
            try:
                return int(text)
            except ValueError:
                raise FlagError(f'invalid argument "{text}" for "--{self.name}"') from None
        if self.kind == "float":
            try:
                return float(text)
            except ValueError:
                raise FlagError(f'invalid argument "{text}" for "--{self.name}"') from None
        if self.kind == "bool":
            lowered = text.lower()
            if lowered in ("1", "t", "true"):
                return True
            if lowered in ("0", "f", "false"):
                return False
            raise FlagError(f'invalid argument "{text}" for "--{self.name}"')
        return text

    def render(self, value: Any) -> str:
        if self.kind == "duration":
            return format_go_duration(value)
        if self.kind == "time":
            return format_cutoff(value)
        if self.kind == "bool":
            return "true" if value else "false"
        if self.kind == "float":
            return f"{value:g}"
        return str(value)


_FLAGS: dict[str, _Flag] = {
    f.name: f
    for f in (
        _Flag("key-renew-period", "key_renew_period", "duration"),
        _Flag("rotate-period", "key_renew_period", "duration"),  # deprecated alias
        _Flag("key-cutoff-time", "key_cutoff_time", "time"),
        _Flag("key-prefix", "key_prefix", "str"),
        _Flag("key-size", "key_size", "int"),
        _Flag("key-ttl", "key_ttl", "duration"),
        _Flag("my-cn", "my_cn", "str"),
        _Flag("key-order-priority", "key_order_priority", "str"),
        _Flag("watch-for-secrets", "watch_for_secrets", "bool"),
        _Flag("update-status", "update_status", "bool"),
        _Flag("skip-recreate", "skip_recreate", "bool"),
        _Flag("rate-limit", "rate_limit", "float"),
        _Flag("rate-limit-burst", "rate_limit_burst", "int"),
    )
}
# Flags the real controller accepts that the emulation takes but does not act on.
_ACCEPTED_IGNORED = frozenset(
    (
        "accept-deprecated-v1-data",
        "all-namespaces",
        "additional-namespaces",
        "label-selector",
        "old-gc-behavior",
        "max-unseal-retries",
        "kubeclient-qps",
        "kubeclient-burst",
        "listen-addr",
        "listen-metrics-addr",
        "read-timeout",
        "write-timeout",
        "log-level",
        "log-format",
        "log-info-stdout",
        "privatekey-labels",
        "privatekey-annotations",
        "update-status-interval",
    )
)
_BOOL_FLAGS = frozenset(name for name, f in _FLAGS.items() if f.kind == "bool") | {
    "accept-deprecated-v1-data",
    "all-namespaces",
    "old-gc-behavior",
    "log-info-stdout",
}


def parse_flags(args: Sequence[str], env: Mapping[str, str] | None = None) -> ControllerFlags:
    """Flags from env (``SEALED_SECRETS_*``) overridden by the command line, as pflagenv does."""
    values: dict[str, Any] = {}
    for name, spec in _FLAGS.items():
        env_name = "SEALED_SECRETS_" + name.upper().replace("-", "_")
        if env and env_name in env:
            values[spec.attribute] = spec.parse(env[env_name])
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-"):
            continue  # positional arguments are ignored by the controller
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in _FLAGS and name not in _ACCEPTED_IGNORED:
            raise FlagError(f"unknown flag: --{name}")
        if not has_value:
            if name in _BOOL_FLAGS:
                value = "true"
            elif index < len(args):
                value = args[index]
                index += 1
            else:
                raise FlagError(f"flag needs an argument: --{name}")
        if name in _FLAGS:
            values[_FLAGS[name].attribute] = _FLAGS[name].parse(value)
    flags = ControllerFlags(**values)
    if not _PREFIX_PATTERN.match(flags.key_prefix):
        raise FlagError(f"invalid key prefix {flags.key_prefix!r}")
    if flags.key_order_priority not in (ORDER_BY_NOT_BEFORE, ORDER_BY_CREATION):
        # Upstream logs the error and falls back to NotBefore ordering.
        flags = dataclasses.replace(flags, key_order_priority=ORDER_BY_NOT_BEFORE)
    return flags


def flags_from_deployment(deployment: Mapping[str, Any]) -> ControllerFlags:
    """Parse the controller container's args and literal env from a Deployment."""
    template = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    return flags_from_pod_spec(template)


def flags_from_pod_spec(pod_spec: Mapping[str, Any]) -> ControllerFlags:
    """Parse the controller container's args and literal env from a Pod's spec.

    A Pod keeps the template it was made from: during a rollout the old Pod's process
    runs with the old flags and the new Pod's with the new ones.
    """
    containers = pod_spec.get("containers") or []
    container = next(
        (c for c in containers if c.get("name") == CONTAINER_NAME),
        containers[0] if containers else {},
    )
    args = [str(a) for a in (container.get("command") or [])[1:]]
    args += [str(a) for a in container.get("args") or []]
    env = {
        str(e.get("name")): str(e.get("value", ""))
        for e in container.get("env") or []
        if isinstance(e, Mapping) and "value" in e
    }
    return parse_flags(args, env)
