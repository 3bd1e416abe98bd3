"""The API's Git parts on the real server: ``source=git`` pages, provenance and GitOps
management of in-cluster objects, ``POST /api/v1/check``; every answer validated
against the served OpenAPI document."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import aiohttp
from apitesting import ADMIN_TOKEN, NOW, READ_TOKEN, Api, secret
from jsonschema import Draft202012Validator, FormatChecker

from sealfleet.adapters.store.git_pending import PendingReseal
from sealfleet.adapters.store.records import (
    GitFileRecord,
    GitSealedSecretRecord,
    ItemFact,
)
from sealfleet.domain import documents
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.observed import ManagedBy
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.domain.staleness import SecretState


def validate(document: dict[str, Any], schema: dict[str, Any], body: Any) -> None:
    validator = Draft202012Validator({"$schema": "https://json-schema.org/draft/2020-12/schema",
                                      "components": document["components"], **schema},
                                     format_checker=FormatChecker())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, errors


def response_schema(document: dict[str, Any], path: str, method: str,
                    status: int) -> dict[str, Any]:
    response = document["paths"][path][method]["responses"][str(status)]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


async def post(api: Api, body: Any, *, via: str = "unix", token: str | None = None,
               raw: bytes | None = None) -> tuple[int, Any]:
    if via == "unix":
        connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(api.socket_path))
        url = "http://sealfleet/api/v1/check"
    else:
        connector = aiohttp.TCPConnector()
        url = api.base_url + "/api/v1/check"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.post(url, data=data, headers=headers) as response:
        return response.status, await response.json()


async def test_git_documents_are_listed_with_source_git_and_linked_objects_show_it(
        api: Api) -> None:
    store = api.store
    linked = secret("alpha", "apps", "db", SecretState.CURRENT, [api.fleet.new])
    await store.inventory.upsert_sealed_secrets([dataclasses.replace(
        linked, managed_by=ManagedBy("argocd", "payments"))])
    await store.git.upsert_repo("gitops", path="/srv/gitops")
    doc = GitSealedSecretRecord(
        repo="gitops", path="apps/db.yaml", document=1, namespace="apps", name="db",
        scope=Scope.STRICT, ciphertext_fingerprint=linked.ciphertext_fingerprint,
        items=(ItemFact("k0", "h-git-0", api.fleet.old),), clusters=("alpha",),
        state=SecretState.STALE, observed_at=NOW)
    await store.git.apply_scan("gitops", files=[
        GitFileRecord("gitops", "apps/db.yaml", "sig", 2, None, NOW),
        GitFileRecord("gitops", "apps/bad.yaml", "sig", 0, "invalid YAML at line 2", NOW)],
        documents=[doc])
    _, document, _ = await api.get("/api/v1/openapi.json")
    page_schema = response_schema(document, "/api/v1/sealed-secrets", "get", 200)

    status, page, _ = await api.get("/api/v1/sealed-secrets?source=git&cluster=alpha")
    assert status == 200
    validate(document, page_schema, page)
    (entry,) = page["items"]
    assert entry == {
        "source": "git", "repo": "gitops", "path": "apps/db.yaml", "document": 1,
        "namespace": "apps", "name": "db", "scope": "strict", "state": "stale",
        "clusters": ["alpha"], "observed_at": entry["observed_at"], "malformed_reason": None,
        "ciphertext_fingerprint": linked.ciphertext_fingerprint,
        "items": [{"item": "k0", "fingerprint": api.fleet.old}], "pending_branch": None}
    status, none, _ = await api.get("/api/v1/sealed-secrets?source=git&cluster=beta")
    assert none["items"] == []

    status, page, _ = await api.get("/api/v1/sealed-secrets?cluster=alpha&namespace=apps")
    validate(document, page_schema, page)
    by_name = {e["name"]: e for e in page["items"]}
    assert by_name["db"]["git"] == {"repo": "gitops", "path": "apps/db.yaml", "document": 1}
    assert by_name["db"]["managed_by"] == {"tool": "argocd", "name": "payments", "hint": False}
    assert by_name["web"]["git"] is None
    assert all(e["source"] == "cluster" for e in page["items"])

    api.bump()
    status, report, _ = await api.get("/api/v1/staleness")
    validate(document, response_schema(document, "/api/v1/staleness", "get", 200), report)
    (repo,) = report["repos"]
    assert repo["unparseable_files"] == [{"path": "apps/bad.yaml",
                                          "reason": "invalid YAML at line 2"}]
    assert repo["sealed_secrets"]["stale"] == 1
    assert report["fleet"]["git_sealed_secrets"]["total"] == 1


async def test_a_document_stale_on_the_base_names_its_pending_reseal_branch(
        api: Api) -> None:
    store = api.store
    await store.git.upsert_repo("gitops", path="/srv/gitops")
    docs = [GitSealedSecretRecord(
        repo="gitops", path="apps/db.yaml", document=i, namespace="apps", name=name,
        scope=Scope.STRICT, ciphertext_fingerprint=f"ct{i}",
        items=(ItemFact("k0", f"h{i}", api.fleet.old),), clusters=("alpha",), state=state,
        observed_at=NOW)
        for i, (name, state) in enumerate([("db", SecretState.STALE),
                                           ("moved", SecretState.STALE),
                                           ("done", SecretState.CURRENT),
                                           ("plain", SecretState.STALE)])]
    await store.git.apply_scan("gitops", files=[], documents=docs)
    branch = "sealfleet/reseal-20260102-3f2a9c1e"
    await store.git_pending.record("gitops", [
        PendingReseal("gitops", "apps/db.yaml", 0, "apps", "db", branch, "c" * 40,
                      api.fleet.new, "job"),
        # Document 1 is another object on the base now: the row says nothing about it.
        PendingReseal("gitops", "apps/db.yaml", 1, "apps", "elsewhere", branch, "c" * 40,
                      api.fleet.new, "job"),
        PendingReseal("gitops", "apps/db.yaml", 2, "apps", "done", branch, "c" * 40,
                      api.fleet.new, "job")], pending=[branch])
    _, document, _ = await api.get("/api/v1/openapi.json")
    status, page, _ = await api.get("/api/v1/sealed-secrets?source=git")
    assert status == 200
    validate(document, response_schema(document, "/api/v1/sealed-secrets", "get", 200), page)
    assert {e["name"]: e["pending_branch"] for e in page["items"]} == {
        "db": branch, "moved": None, "done": None, "plain": None}
    api.bump()
    _, report, _ = await api.get("/api/v1/staleness")
    validate(document, response_schema(document, "/api/v1/staleness", "get", 200), report)
    (repo,) = report["repos"]
    assert repo["pending_branches"] == [{"name": branch, "documents": 1}]
    # The branch merged (no longer pending): its rows go with the next record.
    await store.git_pending.record("gitops", [], pending=[])
    _, page, _ = await api.get("/api/v1/sealed-secrets?source=git")
    assert all(e["pending_branch"] is None for e in page["items"])


async def test_git_pages_follow_their_cursor(api: Api) -> None:
    await api.store.git.upsert_repo("gitops", path="/srv/gitops")
    docs = [GitSealedSecretRecord(
        repo="gitops", path=f"f{i // 2}.yaml", document=i % 2, namespace="ns", name=f"s{i}",
        scope=Scope.STRICT, ciphertext_fingerprint=f"ct{i}", items=(), clusters=("alpha",),
        state=SecretState.CURRENT, observed_at=NOW) for i in range(5)]
    await api.store.git.apply_scan("gitops", files=[], documents=docs)
    seen, cursor = [], None
    while True:
        suffix = f"&cursor={cursor}" if cursor else ""
        _, page, _ = await api.get(f"/api/v1/sealed-secrets?source=git&limit=2{suffix}")
        seen += [e["name"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"s{i}" for i in range(5)]


async def test_check_answers_per_document_and_cluster_with_the_read_token(
        api: Api, rsa2048_keys: list[SealingKey]) -> None:
    extra = rsa2048_keys[2]    # the one key whose private half the store holds
    sealed = seal_secret({"metadata": {"name": "db", "namespace": "apps"},
                          "stringData": {"password": "s3cret-value"}}, extra.public_key)
    text = documents.dump_all([{"kind": "Secret", "apiVersion": "v1",
                                "stringData": {"x": "plain"}}, sealed], "yaml")
    body = {"documents": [{"source": "db.yaml", "content": text},
                          {"source": "db.json", "document": 3, "object": sealed}],
            "clusters": ["alpha"]}
    _, document, _ = await api.get("/api/v1/openapi.json")
    status, answer = await post(api, body, via="tcp", token=READ_TOKEN)
    assert status == 200, answer
    validate(document, response_schema(document, "/api/v1/check", "post", 200), answer)
    assert [(d["source"], d["document"]) for d in answer["documents"]] == [
        ("db.json", 3), ("db.yaml", 1)]
    assert answer["ignored_documents"] == 1
    for entry in answer["documents"]:
        assert entry["items"] == [{"item": "password", "fingerprint": extra.fingerprint}]
        (verdict,) = entry["clusters"]
        # alpha holds the old and new keys, not this one: it cannot unseal it.
        assert (verdict["cluster"], verdict["decryptable"], verdict["state"]) == (
            "alpha", False, "failing")
        assert entry["ok"] is False
    assert answer["ok"] is False
    assert "s3cret" not in json.dumps(answer)
    assert "plain" not in json.dumps(answer)


async def test_check_refuses_what_is_not_a_check_request(api: Api) -> None:
    _, document, _ = await api.get("/api/v1/openapi.json")
    for body, expected in [
            ({"documents": [{"object": {}, "content": ""}]}, 400),
            ({"documents": "x"}, 400), ({}, 400), ([], 400),
            ({"documents": [], "clusters": ["nope"]}, 404),
            ({"documents": [], "require_current": "yes"}, 400)]:
        status, answer = await post(api, body)
        assert status == expected, body
        validate(document, response_schema(document, "/api/v1/check", "post", expected), answer)
    status, answer = await post(api, None, raw=b"{not json")
    assert status == 400
    assert answer["error"]["message"] == "the body is not JSON"
    status, answer = await post(api, {"documents": [{"content": "a: [\n"}]})
    assert status == 200
    assert answer["ok"] is False
    assert answer["errors"][0]["error"].startswith("document 0: invalid YAML")


async def test_check_over_tcp_needs_a_token_and_takes_no_query(api: Api) -> None:
    status, _ = await post(api, {"documents": []}, via="tcp")
    assert status == 401
    status, answer = await post(api, {"documents": []}, via="tcp", token=ADMIN_TOKEN)
    assert status == 200
    assert answer == {"ok": True, "clusters": ["alpha", "beta", "gamma"],
                      "require_current": False, "documents": [], "ignored_documents": 0,
                      "errors": []}
    connector = aiohttp.UnixConnector(path=str(api.socket_path))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.post("http://sealfleet/api/v1/check?x=1", json={"documents": []}) as response:
        assert response.status == 400
