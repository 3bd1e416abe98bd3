"""The read API over real HTTP: report contents, pagination, auth, errors, metrics, page."""

from __future__ import annotations

import base64
import stat

import aiohttp
import pytest
from apitesting import ADMIN_TOKEN, READ_TOKEN, Api, secret
from prometheus_client.parser import text_string_to_metric_families

from sealfleet.domain.keys import SealingKey, load_certificate
from sealfleet.domain.staleness import SecretState


async def test_staleness_report_reflects_the_inventory(api: Api) -> None:
    status, report, _ = await api.get("/api/v1/staleness")
    assert status == 200
    by_name = {c["name"]: c for c in report["clusters"]}
    assert list(by_name) == ["alpha", "beta", "gamma"]
    alpha, beta, gamma = by_name["alpha"], by_name["beta"], by_name["gamma"]
    assert alpha["sealing_key"]["fingerprint"] == api.fleet.new
    assert alpha["sealing_key"]["stale"] is False
    assert beta["sealing_key"]["fingerprint"] == api.fleet.old
    assert beta["sealing_key"]["stale"] is True
    assert beta["sealing_key"]["age_seconds"] == 90 * 86400
    assert (alpha["drift"], beta["drift"], gamma["drift"]) == (False, True, None)
    assert beta["drift_detail"]["missing"] == [api.fleet.new]
    assert gamma["reachable"] is False
    assert gamma["last_error"] == "connect <b>refused</b>"
    for name, states in api.fleet.states.items():
        counts = by_name[name]["sealed_secrets"]
        assert counts["total"] == sum(states.values())
        for state, n in states.items():
            assert counts[state] == n
    assert report["fleet"]["sealed_secrets"]["total"] == 6
    assert report["fleet"]["reachable"] == 2


async def test_report_is_cached_until_the_inventory_changes(api: Api) -> None:
    _, before, _ = await api.get("/api/v1/staleness")
    await api.store.inventory.upsert_sealed_secrets([
        secret("beta", "apps", "new", SecretState.STALE, [api.fleet.old])])
    _, cached, _ = await api.get("/api/v1/staleness")
    assert cached == before  # no change signalled: served from the cache
    api.bump()
    _, after, _ = await api.get("/api/v1/staleness")
    assert after["fleet"]["sealed_secrets"]["total"] == 7
    assert after["fleet"]["sealed_secrets"]["stale"] == 2


async def test_clusters_and_one_cluster(api: Api) -> None:
    status, body, _ = await api.get("/api/v1/clusters")
    assert status == 200
    assert [c["name"] for c in body["clusters"]] == ["alpha", "beta", "gamma"]
    assert body["clusters"][0]["server"] == "https://alpha.example:6443"
    status, alpha, _ = await api.get("/api/v1/clusters/alpha")
    assert (status, alpha["name"]) == (200, "alpha")
    status, error, _ = await api.get("/api/v1/clusters/nope")
    assert status == 404
    assert error["error"]["code"] == "not_found"


async def test_keys_list_public_facts_only(api: Api) -> None:
    status, body, _response = await api.get("/api/v1/keys")
    assert status == 200
    keys = {k["fingerprint"]: k for k in body["keys"]}
    assert set(keys) == {api.fleet.old, api.fleet.new, api.fleet.extra}
    old = keys[api.fleet.old]
    assert old["clusters"] == ["alpha", "beta"]
    assert old["has_private_key"] is False
    assert keys[api.fleet.extra]["has_private_key"] is True
    assert old["sealed_secrets"] == 3
    assert keys[api.fleet.new]["items"] == 3
    assert keys[api.fleet.extra]["clusters"] == []


async def test_no_response_contains_key_material(api: Api) -> None:
    for path in ("/api/v1/keys", "/api/v1/staleness", "/api/v1/clusters", "/",
                 "/api/v1/sealed-secrets?limit=1000", "/metrics"):
        status, body, _ = await api.get(path)
        raw = body if isinstance(body, bytes) else repr(body).encode()
        assert status == 200
        assert b"PRIVATE KEY" not in raw
        assert b"-----BEGIN" not in raw


async def test_sealed_secrets_keyset_pagination_walks_everything_once(api: Api) -> None:
    seen: list[tuple[str, str, str]] = []
    cursor = None
    pages = 0
    while True:
        query = "/api/v1/sealed-secrets?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page, _ = await api.get(query)
        assert status == 200
        pages += 1
        seen += [(i["cluster"], i["namespace"], i["name"]) for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen)) == 6


@pytest.mark.parametrize(("query", "expected"), [
    ("cluster=beta", {("beta", "apps", "bad"), ("beta", "apps", "db")}),
    ("cluster=alpha&namespace=ops", {("alpha", "ops", "x"), ("alpha", "ops", "y")}),
    ("state=stale", {("alpha", "apps", "web")}),
    ("state=failing&cluster=alpha", set()),
])
async def test_sealed_secrets_filters(api: Api, query: str, expected: set[tuple[str, ...]]) -> None:
    status, page, _ = await api.get(f"/api/v1/sealed-secrets?{query}")
    assert status == 200
    assert {(i["cluster"], i["namespace"], i["name"]) for i in page["items"]} == expected


async def test_sealed_secret_entry_names_the_keys_per_item(api: Api) -> None:
    _, page, _ = await api.get("/api/v1/sealed-secrets?cluster=alpha&namespace=apps")
    db = page["items"][0]
    assert (db["name"], db["state"], db["scope"]) == ("db", "current", "strict")
    assert [i["fingerprint"] for i in db["items"]] == [api.fleet.new, api.fleet.new]


@pytest.mark.parametrize("query", [
    "limit=0", "limit=1001", "limit=abc", "limit=-1", "state=rotten", "cluster=",
    "colour=blue", "cursor=!!!notacursor"])
async def test_bad_query_parameters_get_400(api: Api, query: str) -> None:
    status, body, _ = await api.get(f"/api/v1/sealed-secrets?{query}")
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert body["error"]["message"]


async def test_unix_socket_needs_no_token_and_is_mode_0660(api: Api) -> None:
    assert stat.S_IMODE(api.socket_path.stat().st_mode) == 0o660
    status, _, _ = await api.get("/api/v1/staleness", via="unix")
    assert status == 200


async def test_tcp_requires_a_valid_bearer_token(api: Api) -> None:
    status, body, response = await api.get("/api/v1/staleness", via="tcp")
    assert status == 401
    assert body["error"]["code"] == "unauthorized"
    assert response.headers.getall("WWW-Authenticate") == ["Bearer", 'Basic realm="sealfleet"']
    status, _, _ = await api.get("/api/v1/staleness", via="tcp", token="wrong")
    assert status == 401
    status, _, _ = await api.get("/api/v1/staleness", via="tcp", token=READ_TOKEN[:-1])
    assert status == 401
    for token in (READ_TOKEN, ADMIN_TOKEN):
        status, report, _ = await api.get("/api/v1/staleness", via="tcp", token=token)
        assert status == 200
        assert report["fleet"]["clusters"] == 3


async def test_browsers_open_the_status_page_with_basic_auth_and_the_read_token(
        api: Api) -> None:
    """A browser answers the Basic challenge; the password is the token, the user ignored."""
    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    status, page, _ = await api.get("/", via="tcp", authorization=basic("me", READ_TOKEN))
    assert status == 200
    assert b"alpha" in page  # a cluster of the fixture fleet: the real page, not an error
    for wrong in (basic("me", "wrong"), basic(READ_TOKEN, ""), "Basic !!!", "Basic "):
        status, _, _ = await api.get("/", via="tcp", authorization=wrong)
        assert status == 401, wrong


async def test_mutations_over_tcp_need_the_admin_token(api: Api) -> None:
    status, body, _ = await api.get("/api/v1/staleness", via="tcp", token=READ_TOKEN,
                                    method="POST")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body, _ = await api.get("/api/v1/staleness", via="tcp", token=ADMIN_TOKEN,
                                    method="POST")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")


async def test_unknown_path_uses_the_error_shape(api: Api) -> None:
    status, body, _ = await api.get("/api/v2/nothing")
    assert status == 404
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}


async def test_health_and_readiness(api: Api) -> None:
    assert (await api.get("/healthz"))[:2] == (200, {"status": "ok"})
    status, body, _ = await api.get("/readyz")
    assert (status, body["ready"]) == (200, True)
    api.ready["first_pass"] = False
    status, body, _ = await api.get("/readyz")
    assert status == 503
    assert body["error"] == {"code": "not_ready", "message": "waiting for: first_pass"}


async def test_metrics_agree_with_the_report(api: Api) -> None:
    _, report, _ = await api.get("/api/v1/staleness")
    status, text, response = await api.get("/metrics")
    assert status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text.decode())
               for s in family.samples}
    by_name = {c["name"]: c for c in report["clusters"]}
    for name, cluster in by_name.items():
        assert samples[("sealfleet_cluster_reachable", (("cluster", name),))] == \
            (1 if cluster["reachable"] else 0)
        for state in ("current", "stale", "compromised", "unknown", "failing"):
            key = ("sealfleet_sealed_secrets", (("cluster", name), ("state", state)))
            assert samples[key] == cluster["sealed_secrets"][state]
    beta = by_name["beta"]
    age_key = ("sealfleet_sealing_key_age_seconds",
               (("cluster", "beta"), ("fingerprint", beta["sealing_key"]["fingerprint"])))
    assert samples[age_key] == beta["sealing_key"]["age_seconds"]
    assert samples[("sealfleet_sealing_key_stale", (("cluster", "beta"),))] == 1
    assert samples[("sealfleet_cluster_drift", (("cluster", "beta"),))] == 1
    assert samples[("sealfleet_scan_duration_seconds", (("cluster", "alpha"),))] == 1.5
    assert samples[("sealfleet_attribution_backlog", ())] == 7
    assert samples[("sealfleet_rsa_decrypts_total", ())] == 11
    assert samples[("sealfleet_rsa_cpu_seconds_total", ())] == 0.25
    assert samples[("sealfleet_rsa_busy_seconds_total", ())] == 0.75
    assert samples[("sealfleet_rsa_worker_deaths_total", ())] == 2
    # The fixture's writes, as the store counted them when the scrape was made.
    writes, transactions = api.store.write_groups
    assert samples[("sealfleet_store_writes_total", ())] == writes > 0
    assert 0 < samples[("sealfleet_store_write_transactions_total", ())] == transactions
    assert ("sealfleet_sealing_key_stale", (("cluster", "gamma"),)) not in samples


async def test_status_page_shows_the_fleet_and_escapes(api: Api) -> None:
    status, page, response = await api.get("/")
    assert status == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    html = page.decode()
    for name in ("alpha", "beta", "gamma"):
        assert f"\">{name}</a> " in html  # each card's title links to its cluster page
    assert "connect &lt;b&gt;refused&lt;/b&gt;" in html
    assert "<b>refused</b>" not in html
    assert "stale: older than renew period" in html
    assert "drift" in html
    assert "width:100.0%" in html  # beta's key is 90 days old against a 30-day policy


async def test_cli_client_over_tcp_with_the_read_token(api: Api) -> None:
    from sealfleet.adapters.http_api.client import ApiClient
    from sealfleet.errors import FleetError

    client = ApiClient(base_url=api.base_url, token=READ_TOKEN)
    report = await client.get_json("/api/v1/staleness")
    assert report["fleet"]["clusters"] == 3
    with pytest.raises(FleetError, match="HTTP 401 unauthorized"):
        await ApiClient(base_url=api.base_url, token="nope").get_json("/api/v1/staleness")
    via_socket = ApiClient(socket_path=api.socket_path, base_url=api.base_url)
    assert via_socket.where == f"unix:{api.socket_path}"
    assert (await via_socket.get_json("/api/v1/clusters/beta"))["name"] == "beta"


async def test_the_fleet_certificate_needs_no_token_and_a_cluster_gets_its_own(
        api: Api, rsa2048_keys: list[SealingKey]) -> None:
    """kubeseal --cert URL cannot send a token: the certificate is public."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api.base_url}/api/v1/cert.pem") as response:
            assert response.status == 200
            served = await response.read()
        async with http.get(f"{api.base_url}/api/v1/cert.pem?cluster=nope") as response:
            assert response.status == 404
        async with http.get(f"{api.base_url}/api/v1/jobs") as response:
            assert response.status == 401     # everything else still needs the token
    # The master set is {old, new}: the newest of them seals (the controller's rule).
    assert load_certificate(served).fingerprint == rsa2048_keys[1].fingerprint
