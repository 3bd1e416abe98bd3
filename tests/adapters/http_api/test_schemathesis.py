"""schemathesis against the served OpenAPI document: no 5xx, every response as documented.

The real server on a real TCP port, the document fetched from it, every check
schemathesis has (server errors, status codes, content types, response schemas, negative
data rejected, positive data accepted, unsupported methods, ignored auth, ...), all its
phases, a fixed seed and few examples per operation so it adds seconds, not minutes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import schemathesis
from apitesting import READ_TOKEN, Api
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

SEED = 20261101
MAX_EXAMPLES = 10


def run_schemathesis(base_url: str, *, token: str, only_path: str | None = None,
                     **settings: Any) -> tuple[list[str], int]:
    """Every failure and error schemathesis reports (one line each), and how many test
    cases it ran.  Blocking: schemathesis sends with requests; call it in a thread."""
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "workers": 1,
        "headers": {"Authorization": f"Bearer {token}"},
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
        "checks": {"enabled": True},
        "warnings": False,
        **settings,
    })
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json", config=config,
                                           headers={"Authorization": f"Bearer {token}"})
    if only_path is not None:
        schema = schema.include(path=only_path)
    problems: list[str] = []
    cases = 0
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            if event.status in (Status.FAILURE, Status.ERROR):
                for case_id, checks in event.recorder.checks.items():
                    for check in checks:
                        if check.status is Status.SUCCESS:
                            continue
                        case = event.recorder.cases[case_id].value
                        info = check.failure_info
                        detail = info.failure.title if info else "check crashed"
                        interaction = event.recorder.interactions.get(case_id)
                        answer = interaction.response if interaction else None
                        got = (f"{answer.status_code} {answer.content[:200]!r}"
                               if answer else "no response")
                        problems.append(f"{event.phase.value} {check.name}: {detail}: "
                                        f"{case.method} {case.formatted_path} "
                                        f"query={case.query} -> {got}")
                if not event.recorder.checks:
                    problems.append(f"{event.phase.value} {event.label}: {event.status}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            problems.append(f"{type(event).__name__}: {event}")
    return problems, cases


async def test_schemathesis_finds_no_5xx_and_no_undocumented_response(api: Api) -> None:
    """All checks, positive data acceptance included.  A cursor is opaque: only a
    next_cursor the server issued is valid, which no schema can express, so this run
    sends a genuine one (the next test fuzzes the cursor itself)."""
    _, page, _ = await api.get("/api/v1/sealed-secrets?limit=2")
    problems, cases = await asyncio.to_thread(
        run_schemathesis, api.base_url, token=READ_TOKEN,
        # A key fingerprint holds "/" and "+": random path segments are mostly filtered
        # out by the generator (a flaky health check), so the path gets a well-formed one.
        parameters={"query.cursor": page["next_cursor"],
                    "path.fingerprint": "SHA256:" + "A" * 43})
    assert not problems, "\n".join(problems)
    assert cases > 100  # it really exercised the API (about 190 cases at the time of writing)


async def test_schemathesis_fuzzing_the_cursor_finds_no_5xx(api: Api) -> None:
    """Random cursors: every answer a documented one (400 for a malformed cursor)."""
    problems, cases = await asyncio.to_thread(
        run_schemathesis, api.base_url, token=READ_TOKEN,
        only_path="/api/v1/sealed-secrets",
        checks={"enabled": True, "positive_data_acceptance": {"enabled": False}})
    assert not problems, "\n".join(problems)
    assert cases > 20
