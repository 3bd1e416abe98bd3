"""Hostile requests over a raw socket: every answer is the JSON error shape, never a 500,
and nothing the client sent reaches a log or comes back in a response (issue 11)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
import structlog
from apitesting import READ_TOKEN, Api, get_request
from jsonschema import Draft202012Validator

from sealfleet.adapters.http_api import openapi

AUTH = f"Authorization: Bearer {READ_TOKEN}".encode()


def assert_error_shape(body: Any, code: str) -> None:
    schema = {"components": openapi.SCHEMAS, **openapi.SCHEMAS["Error"]}
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(body)]
    assert not errors, errors
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code, body


async def test_an_oversized_header_is_a_json_400_and_its_token_is_logged_nowhere(
        api: Api, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """The tester's finding: the bearer token and 17,000 spaces after it."""
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        response = await api.raw(get_request("/api/v1/staleness", AUTH + b" " * 17000))
    assert response.status == 400
    body = response.json()
    assert_error_shape(body, "bad_request")
    assert body["error"]["message"] == "request line or header field too long"
    assert READ_TOKEN.encode() not in response.body
    out, err = capfd.readouterr()
    assert READ_TOKEN not in out + err
    assert READ_TOKEN not in caplog.text
    assert READ_TOKEN not in repr(events)
    rejected = [e for e in events if e["event"] == "api_request_rejected"]
    assert [(e["status"], e["error"]) for e in rejected] == [(400, "LineTooLong")]
    # The server is unharmed: the same token on a sane request still works.
    again = await api.raw(get_request("/api/v1/staleness", AUTH))
    assert again.status == 200


@pytest.mark.parametrize("request_bytes", [
    pytest.param(get_request("/" + "a" * 9000), id="request-line-too-long"),
    pytest.param(b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", id="bad-method"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: " + READ_TOKEN.encode()
                 + b"\r\n\r\n", id="space-in-header-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: " + READ_TOKEN.encode()
                 + b"\r\n\r\n", id="content-length-not-a-number"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
                 id="tls-client-hello"),
])
async def test_requests_the_parser_rejects_get_the_json_error_shape(
        api: Api, request_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        response = await api.raw(request_bytes)
    assert response.status == 400
    assert_error_shape(response.json(), "bad_request")
    assert READ_TOKEN.encode() not in response.body
    assert READ_TOKEN not in caplog.text + repr(events)


@pytest.mark.parametrize("authorization", [
    pytest.param(b"Bearer t\xf6k\xe9n", id="latin-1"),
    pytest.param(b"Bearer \xff\xfe\x80", id="not-utf-8"),
    pytest.param(b"Bearer " + READ_TOKEN.encode() + b"\xe9", id="valid-token-then-latin-1"),
    pytest.param("Bearer tökén".encode(), id="utf-8-non-ascii"),
    pytest.param(b"Basic \xe9\xe9\xe9", id="basic-latin-1"),
])
async def test_an_undecodable_authorization_header_is_a_401_not_a_500(
        api: Api, authorization: bytes) -> None:
    response = await api.raw(get_request("/api/v1/staleness", b"Authorization: " + authorization))
    assert response.status == 401
    assert_error_shape(response.json(), "unauthorized")


@pytest.mark.parametrize("limit", [
    pytest.param("%C2%B2", id="superscript-two"),
    pytest.param("%EF%BC%95", id="fullwidth-five"),
    pytest.param("%D9%A5", id="arabic-indic-five"),
    pytest.param("1" * 5000, id="more-digits-than-int-parses"),
    pytest.param("+5", id="plus-sign"),
    pytest.param("%205", id="leading-space"),
    pytest.param("5.0", id="decimal"),
    pytest.param("", id="empty"),
])
async def test_limit_takes_ascii_digits_only(api: Api, limit: str) -> None:
    response = await api.raw(get_request(f"/api/v1/sealed-secrets?limit={limit}"),
                             via="unix")
    assert response.status == 400
    body = response.json()
    assert_error_shape(body, "bad_request")
    assert body["error"]["message"] == "limit must be an integer from 1 to 1000"


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("cursor", [
    pytest.param(cursor_of(b'["\\ud800","apps","db"]'), id="lone-surrogate"),
    pytest.param(cursor_of(b'["alpha","\\udfff","db"]'), id="lone-low-surrogate"),
    pytest.param(cursor_of(b"\xff\xfe not utf-8"), id="not-utf-8"),
    pytest.param(cursor_of(b'["alpha","apps"]'), id="two-parts"),
])
async def test_a_malformed_cursor_is_a_400(api: Api, cursor: str) -> None:
    response = await api.raw(get_request(f"/api/v1/sealed-secrets?cursor={cursor}"),
                             via="unix")
    assert response.status == 400
    assert_error_shape(response.json(), "bad_request")


async def test_non_utf8_bytes_in_the_request_target_are_a_400(api: Api) -> None:
    """The parser refuses them, so no handler ever sees a lone surrogate from the URL."""
    for target in (b"/api/v1/sealed-secrets?cluster=\xff\xfe", b"/api/v1/clusters/\xe9t\xe9"):
        response = await api.raw(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                 b"Connection: close\r\n\r\n", via="unix")
        assert response.status == 400, target
        body = response.json()
        assert_error_shape(body, "bad_request")
        assert body["error"]["message"] == "malformed request target"


async def concrete_paths(api: Api) -> list[str]:
    """Every GET path of the document, with its path parameters filled in."""
    _, document, _ = await api.get("/api/v1/openapi.json")
    job_id = await api.store.jobs.create_job("key_sync", {}, ["cluster:alpha"])
    return [path.replace("{name}", "alpha").replace("{id}", job_id)
            for path, item in document["paths"].items() if "get" in item]


async def test_every_endpoint_rejects_an_unknown_query_parameter_the_same_way(
        api: Api) -> None:
    paths = await concrete_paths(api)
    assert len(paths) == 14
    for path in paths:
        for query in ("colour=blue", "colour", "=blue"):
            status, body, _ = await api.get(f"{path}?{query}")
            assert status == 400, (path, query)
            assert_error_shape(body, "bad_request")
            assert body["error"]["message"].startswith("unknown query parameter"), body
        status, _, _ = await api.get(f"{path}?")
        assert status == 200, path  # an empty query string is no parameter at all


@pytest.mark.parametrize("query", [
    "limit=1&limit=2", "cluster=alpha&cluster=beta", "cursor=x&cursor=x", "state=stale&state="])
async def test_a_repeated_query_parameter_is_a_400(api: Api, query: str) -> None:
    status, body, _ = await api.get(f"/api/v1/sealed-secrets?{query}")
    assert status == 400
    assert_error_shape(body, "bad_request")
    assert "given more than once" in body["error"]["message"]


async def test_a_query_parameter_of_another_endpoint_is_unknown_here(api: Api) -> None:
    status, body, _ = await api.get("/api/v1/clusters?limit=1")
    assert status == 400
    assert body["error"]["message"] == ("unknown query parameter 'limit'; "
                                        "this endpoint takes none")


async def test_query_checks_come_after_auth_on_tcp(api: Api) -> None:
    """An unauthenticated client learns nothing about the parameters an endpoint takes."""
    status, body, _ = await api.get("/api/v1/sealed-secrets?colour=blue", via="tcp")
    assert (status, body["error"]["code"]) == (401, "unauthorized")


async def test_method_not_allowed_keeps_its_allow_header(api: Api) -> None:
    status, body, response = await api.get("/api/v1/keys", method="DELETE")
    assert status == 405
    assert_error_shape(body, "method_not_allowed")
    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
