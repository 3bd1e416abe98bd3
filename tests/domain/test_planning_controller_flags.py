"""The controller's key flags and Go durations, parsed as the controller parses them."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealfleet.domain.planning.controller_flags import (
    ControllerFlags,
    FlagsError,
    KeyOrder,
    parse_controller_flags,
    parse_go_duration,
)

HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(("text", "expected"), [
    ("720h", 720 * HOUR), ("1h30m", 1.5 * HOUR), ("0", dt.timedelta(0)),
    ("-0", dt.timedelta(0)), ("+5m", dt.timedelta(minutes=5)), ("1.5h", 1.5 * HOUR),
    (".5s", dt.timedelta(milliseconds=500)), ("1.s", dt.timedelta(seconds=1)),
    ("250ms", dt.timedelta(milliseconds=250)), ("3\u00b5s", dt.timedelta(microseconds=3)),
    ("3\u03bcs", dt.timedelta(microseconds=3)), ("1000ns", dt.timedelta(microseconds=1)),
    ("-1h", -HOUR), ("2562047h", 2562047 * HOUR), ("1h1h", 2 * HOUR),
])
def test_go_durations_that_parse(text: str, expected: dt.timedelta) -> None:
    assert parse_go_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", "+", "-", "30d", "1", "00", ".s", ".", "1h 30m", " 1h", "1h ", "h", "1e3s",
    "2562048h", "99999999999999999999s", "\u0661h",  # an Arabic-Indic digit one
])
def test_go_durations_the_controller_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="time: "):
        parse_go_duration(text)


@given(hours=st.integers(0, 10**5), minutes=st.integers(0, 59), seconds=st.integers(0, 59),
       millis=st.integers(0, 999))
def test_go_style_spellings_round_trip(hours: int, minutes: int, seconds: int,
                                       millis: int) -> None:
    expected = dt.timedelta(hours=hours, minutes=minutes, seconds=seconds,
                            milliseconds=millis)
    assert parse_go_duration(f"{hours}h{minutes}m{seconds}.{millis:03d}s") == expected
    assert parse_go_duration(f"{hours}h{minutes}m{seconds}s{millis}ms") == expected


def test_the_defaults_are_upstreams() -> None:
    flags = parse_controller_flags([], {})
    assert flags == ControllerFlags()
    assert flags.key_renew_period == 720 * HOUR
    assert flags.self_renewal
    assert not flags.watch_for_secrets
    assert flags.key_prefix == "sealed-secrets-key"
    assert flags.key_order is KeyOrder.CERT_NOT_BEFORE


def test_the_command_line_beats_the_env_and_the_alias_counts() -> None:
    env = {"SEALED_SECRETS_KEY_RENEW_PERIOD": "1h", "SEALED_SECRETS_WATCH_FOR_SECRETS": "true",
           "SEALED_SECRETS_KEY_PREFIX": "from-env"}
    flags = parse_controller_flags(["--rotate-period=0", "--key-prefix", "mykeys"], env)
    assert flags.key_renew_period == dt.timedelta(0)
    assert not flags.self_renewal
    assert flags.watch_for_secrets  # only the env says so
    assert flags.key_prefix == "mykeys"
    # Between two env vars the current name beats the deprecated alias.
    assert parse_controller_flags([], {"SEALED_SECRETS_ROTATE_PERIOD": "2h",
                                       "SEALED_SECRETS_KEY_RENEW_PERIOD": "3h"}
                                  ).key_renew_period == 3 * HOUR
    # On the command line the later one wins, as pflag sets the same variable twice.
    assert parse_controller_flags(["--key-renew-period=1h", "--rotate-period=2h"], {}
                                  ).key_renew_period == 2 * HOUR


def test_boolean_flags_take_no_separate_value_and_other_flags_do() -> None:
    flags = parse_controller_flags(
        ["--update-status", "--watch-for-secrets", "positional", "--key-renew-period", "0",
         "--log-level", "debug"], {})
    assert flags.watch_for_secrets
    assert flags.key_renew_period == dt.timedelta(0)
    assert not parse_controller_flags(["--watch-for-secrets=false"], {}).watch_for_secrets
    assert parse_controller_flags(["--", "--watch-for-secrets"], {}) == ControllerFlags()


def test_an_unknown_key_order_falls_back_to_not_before_as_upstream() -> None:
    assert parse_controller_flags(["--key-order-priority=SecretCreationTimestamp"], {}
                                  ).key_order is KeyOrder.SECRET_CREATION
    assert parse_controller_flags(["--key-order-priority=Bogus"], {}
                                  ).key_order is KeyOrder.CERT_NOT_BEFORE


@pytest.mark.parametrize(("args", "env", "flag"), [
    (["--key-renew-period=30d"], {}, "--key-renew-period"),
    ([], {"SEALED_SECRETS_KEY_RENEW_PERIOD": "1 hour"}, "--key-renew-period"),
    (["--watch-for-secrets=yes"], {}, "--watch-for-secrets"),
    (["--key-prefix=Has_Upper"], {}, "--key-prefix"),
    (["--key-renew-period"], {}, "--key-renew-period"),
])
def test_values_the_controller_refuses_name_the_flag(args: list[str], env: dict[str, str],
                                                     flag: str) -> None:
    with pytest.raises(FlagsError, match=flag):
        parse_controller_flags(args, env)
