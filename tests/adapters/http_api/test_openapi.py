"""The served OpenAPI document describes what the endpoints really return."""

from __future__ import annotations

from typing import Any

import pytest
from apitesting import Api
from jsonschema import Draft202012Validator, FormatChecker


def schema_for(document: dict[str, Any], path: str, status: int) -> dict[str, Any]:
    response = document["paths"][path]["get"]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    # Validate in the context of the whole document so "#/components/..." refs resolve.
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": document["components"], **schema}


def validate(document: dict[str, Any], path: str, status: int, body: Any) -> None:
    validator = Draft202012Validator(schema_for(document, path, status),
                                     format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


CASES = [
    ("/healthz", "/healthz", 200),
    ("/readyz", "/readyz", 200),
    ("/api/v1/staleness", "/api/v1/staleness", 200),
    ("/api/v1/clusters", "/api/v1/clusters", 200),
    ("/api/v1/clusters/alpha", "/api/v1/clusters/{name}", 200),
    ("/api/v1/keys", "/api/v1/keys", 200),
    ("/api/v1/sealed-secrets?limit=2", "/api/v1/sealed-secrets", 200),
    ("/api/v1/sealed-secrets?limit=1000", "/api/v1/sealed-secrets", 200),
    ("/api/v1/sealed-secrets?state=nope", "/api/v1/sealed-secrets", 400),
    ("/api/v1/sealed-secrets?limit=1&limit=1", "/api/v1/sealed-secrets", 400),
    ("/api/v1/clusters/nope", "/api/v1/clusters/{name}", 404),
    ("/api/v1/keys?colour=blue", "/api/v1/keys", 400),
    ("/healthz?colour=blue", "/healthz", 400),
]


async def test_openapi_document_is_valid(api: Api) -> None:
    status, document, _ = await api.get("/api/v1/openapi.json")
    assert status == 200
    assert document["openapi"].startswith("3.")
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(("url", "path", "expected"), CASES)
async def test_responses_match_the_document(api: Api, url: str, path: str,
                                            expected: int) -> None:
    _, document, _ = await api.get("/api/v1/openapi.json")
    status, body, _ = await api.get(url)
    assert status == expected
    validate(document, path, status, body)


async def test_error_responses_match_the_document(api: Api) -> None:
    _, document, _ = await api.get("/api/v1/openapi.json")
    status, body, _ = await api.get("/api/v1/staleness", via="tcp")
    assert status == 401
    validate(document, "/api/v1/staleness", 401, body)
    api.ready["first_pass"] = False
    status, body, _ = await api.get("/readyz")
    validate(document, "/readyz", status, body)


async def test_the_validator_is_not_a_rubber_stamp(api: Api) -> None:
    _, document, _ = await api.get("/api/v1/openapi.json")
    _, report, _ = await api.get("/api/v1/staleness")
    del report["clusters"][0]["sealed_secrets"]["stale"]
    with pytest.raises(AssertionError):
        validate(document, "/api/v1/staleness", 200, report)
