"""Logging: JSON lines with context and UTC timestamps, and a redaction processor that holds."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import assume, given
from hypothesis import strategies as st

from sealfleet.app.logging import REDACTED, choose_format, configure_logging, redact

PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretsecretsecret\n"
       "-----END RSA PRIVATE KEY-----")
SECRET = "hunter2-very-secret"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(level="info", fmt="json", stream=stream)
    yield stream
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_level_utc_timestamp_and_context(lines: io.StringIO) -> None:
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(cluster="prod-eu"):
        log.info("cluster_scan_done", duration_ms=12)
    log.debug("too_chatty")
    (record,) = records(lines)
    assert record["event"] == "cluster_scan_done"
    assert record["cluster"] == "prod-eu"
    assert record["level"] == "info"
    assert record["duration_ms"] == 12
    assert record["timestamp"].endswith("Z")


@pytest.mark.parametrize("key", [
    "token", "read_token", "password", "private_key", "tls.key", "data", "stringData",
    "authorization", "Authorization", "kek", "admin-token"])
def test_values_of_secret_keys_are_redacted(lines: io.StringIO, key: str) -> None:
    structlog.get_logger().info("something", **{key: SECRET})
    assert SECRET not in lines.getvalue()
    assert records(lines)[0][key] == REDACTED


def test_nested_secret_keys_are_redacted(lines: io.StringIO) -> None:
    secret = {"kind": "Secret", "metadata": {"name": "db"},
              "data": {"password": SECRET}, "stringData": {"x": SECRET}}
    structlog.get_logger().info("object_seen", obj=secret, items=[{"token": SECRET}])
    assert SECRET not in lines.getvalue()
    record = records(lines)[0]
    assert record["obj"]["metadata"] == {"name": "db"}
    assert record["obj"]["data"] == REDACTED


def test_pem_blocks_and_bearer_tokens_are_masked_in_any_string(lines: io.StringIO) -> None:
    log = structlog.get_logger()
    log.info("request_sent", header=f"Authorization: Bearer {SECRET}", body=f"key:\n{PEM}\nend")
    log.info("weird", note=["x", f"bearer {SECRET}"])
    text = lines.getvalue()
    assert SECRET not in text
    assert "secretsecret" not in text
    first = records(lines)[0]
    assert first["body"].startswith("key:\n-----BEGIN RSA PRIVATE KEY----- [REDACTED]")
    assert first["body"].endswith("\nend")


def test_exceptions_are_structured_and_masked(lines: io.StringIO) -> None:
    log = structlog.get_logger()
    try:
        password = SECRET  # a local that must not be rendered
        raise ValueError(f"bad header Bearer {password}")
    except ValueError:
        log.exception("handler_failed")
    text = lines.getvalue()
    assert SECRET not in text
    record = records(lines)[0]
    assert record["exception"][0]["exc_type"] == "ValueError"


def test_plain_values_pass_through(lines: io.StringIO) -> None:
    structlog.get_logger().info("fine", fingerprint="SHA256:abc", secret_name="sealed-secrets-keyx")
    record = records(lines)[0]
    assert record["fingerprint"] == "SHA256:abc"
    assert record["secret_name"] == "sealed-secrets-keyx"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_format_is_console_on_a_tty_and_json_under_systemd() -> None:
    assert choose_format("auto", _Tty(), {}) == "console"
    assert choose_format("auto", _Tty(), {"INVOCATION_ID": "abc"}) == "json"
    assert choose_format("auto", io.StringIO(), {}) == "json"
    assert choose_format("console", io.StringIO(), {}) == "console"


def test_console_renderer_redacts_too() -> None:
    stream = io.StringIO()
    configure_logging(fmt="console", stream=stream)
    try:
        structlog.get_logger().info("console_line", token=SECRET, note=PEM)
    finally:
        structlog.reset_defaults()
    assert "console_line" in stream.getvalue()
    assert SECRET not in stream.getvalue()
    assert "secretsecret" not in stream.getvalue()


_SECRET_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/="


@given(secret=st.text(alphabet=_SECRET_CHARS, min_size=12, max_size=64),
       key=st.sampled_from(["token", "password", "private_key", "tls.key", "data",
                            "stringData", "authorization", "admin_token", "client-key-data"]),
       wrapper=st.sampled_from(["plain", "nested", "listed"]))
def test_redaction_never_lets_a_secret_through(secret: str, key: str, wrapper: str) -> None:
    def event_with(secret: str) -> dict[str, object]:
        pem = f"-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----"
        value: object = {"plain": secret, "nested": {"inner": {key: secret}},
                         "listed": [{key: secret}]}[wrapper]
        return {"event": "x", key: value, "note": f"Authorization: Bearer {secret}",
                "pem": f"before {pem} after", "obj": {"spec": {"x": pem}}}

    # A "secret" that is part of the fixed text (e.g. "Authorizatio", which hypothesis
    # draws from this file's constants) shows up legitimately: nothing to test there.
    scaffold = json.dumps(redact(None, "info", event_with("#")))
    assume(secret not in scaffold)
    out = json.dumps(redact(None, "info", event_with(secret)))
    assert secret not in out
