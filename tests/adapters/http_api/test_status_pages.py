"""The status pages over real HTTP: what each shows, paging, escaping, errors, auth.

(What a browser makes of them is in test_status_pages_browser.py.)
"""

from __future__ import annotations

import base64
import dataclasses
import re
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from apitesting import NOW, READ_TOKEN, Api, secret

from sealfleet.adapters.http_api.pages.layout import key_anchor, short_fingerprint
from sealfleet.adapters.store.records import KeyHolding, MalformedKeySecret
from sealfleet.domain.staleness import SecretState

CRASHING = "deployment kube-system/sealed-secrets-controller has no ready replicas"


class Rows(HTMLParser):
    """The text of each table row of a page, cell by cell."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def rows_of(html: str) -> list[list[str]]:
    parser = Rows()
    parser.feed(html)
    return [row for row in parser.rows if row]


async def page(api: Api, path: str) -> str:
    status, body, response = await api.get(path)
    assert status == 200, body
    assert response.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    return bytes(body).decode()


def next_link(html: str) -> str | None:
    found = re.search(r'<a rel="next" href="([^"]+)"', html)
    return found.group(1).replace("&amp;", "&") if found else None


async def test_overview_cards_link_to_cluster_pages_and_show_controller_problems(
        api: Api) -> None:
    await api.store.inventory.record_cluster_status("alpha", reachable=True,
                                                    controller_error=CRASHING + " <now>",
                                                    controller_state="no_ready_replicas")
    holding = KeyHolding(fingerprint=api.fleet.old, secret_name="k-old", label_value="active",
                         resource_version="1", creation_timestamp=NOW, observed_at=NOW)
    await api.store.inventory.replace_cluster_keys(
        "beta", [holding], [MalformedKeySecret("mixed<up>", "tls.crt is <another> key", NOW)])
    api.bump()
    html = await page(api, "/")
    for name in ("alpha", "beta", "gamma"):
        assert f'<a href="clusters/{name}">{name}</a>' in html
    assert 'href="clusters/alpha?state=stale"' in html
    assert 'href="clusters/alpha?state=compromised"' not in html  # no count, no link
    assert "<b>Controller no ready replicas:</b> " + CRASHING + " &lt;now&gt;" in html
    assert "<code>mixed&lt;up&gt;</code>: tls.crt is &lt;another&gt; key" in html
    assert "<now>" not in html
    assert "<another>" not in html
    assert 'href="keys"' in html
    assert 'href="jobs"' in html


async def test_cluster_page_lists_sealed_secrets_with_the_key_of_each_item(api: Api) -> None:
    fleet = api.fleet
    html = await page(api, "/clusters/alpha")
    rows = {row[1].split()[0]: row for row in rows_of(html) if row[0] in ("apps", "ops")}
    assert set(rows) == {"db", "web", "x", "y"}
    assert rows["web"][2] == "stale"
    assert rows["web"][3] == f"k0 → {short_fingerprint(fleet.old)} older key"
    assert rows["db"][3] == f"k0 , k1 → {short_fingerprint(fleet.new)} sealing key"
    assert rows["x"][3] == "k0 → no known key"
    assert f'href="../keys#{key_anchor(fleet.old)}" title="{fleet.old}"' in html
    assert "https://alpha.example:6443" in html
    # the tabs: every state with its count, linking to the filtered view
    assert '<a href="../clusters/alpha?state=stale">stale <b>1</b></a>' in html


@pytest.mark.parametrize(("state", "names"), [
    ("stale", {"web"}), ("current", {"db", "y"}), ("unknown", {"x"}), ("failing", set())])
async def test_cluster_page_filters_by_state(api: Api, state: str, names: set[str]) -> None:
    html = await page(api, f"/clusters/alpha?state={state}")
    listed = {row[1].split()[0] for row in rows_of(html) if row[0] in ("apps", "ops")}
    assert listed == names
    if not names:
        assert f"No SealedSecrets ({state}) on this page." in html


async def test_cluster_page_pages_with_the_store_cursor(api: Api) -> None:
    await api.store.inventory.upsert_sealed_secrets([
        secret("alpha", "apps", f"many-{i:02}", SecretState.STALE, [api.fleet.old])
        for i in range(7)])
    api.bump()
    seen: list[str] = []
    path: str | None = "/clusters/alpha?state=stale&limit=3"
    pages = 0
    while path is not None:
        html = await page(api, path)
        pages += 1
        seen += [row[1].split()[0] for row in rows_of(html) if row[0] == "apps"]
        if pages > 1:
            assert "first page</a>" in html
        link = next_link(html)
        assert link is None or link.startswith("../clusters/alpha?")
        assert link is None or ("limit=3" in link and "state=stale" in link)
        path = None if link is None else urljoin(f"http://sealfleet{path}", link)[16:]
    assert seen == [*sorted(f"many-{i:02}" for i in range(7)), "web"]
    assert pages == 3


@pytest.mark.parametrize("query", [
    "state=nope", "state=", "limit=0", "limit=501", "limit=%C2%B2", "cursor=garbage!",
    "colour=blue", "state=stale&state=current"])
async def test_cluster_page_refuses_bad_queries_in_the_error_shape(api: Api,
                                                                   query: str) -> None:
    status, body, _ = await api.get(f"/clusters/alpha?{query}")
    assert status == 400, body
    assert body["error"]["code"] == "bad_request"


async def test_unknown_cluster_page_is_a_404_in_the_error_shape(api: Api) -> None:
    status, body, _ = await api.get("/clusters/%3Cnope%3E")
    assert status == 404
    assert body["error"] == {"code": "not_found", "message": "no cluster named '<nope>'"}


async def test_cluster_page_escapes_what_the_cluster_says(api: Api) -> None:
    broken = secret("alpha", "apps", "zz", SecretState.FAILING, [api.fleet.new])
    await api.store.inventory.upsert_sealed_secrets([dataclasses.replace(
        broken, synced_message="<script>x()</script>",
        malformed_reason="item <k0>: not base64")])
    api.bump()
    html = await page(api, "/clusters/alpha?state=failing")
    assert "&lt;script&gt;x()&lt;/script&gt;" in html
    assert "malformed: item &lt;k0&gt;: not base64" in html
    assert "<script>" not in html
    assert "<k0>" not in html


async def test_keys_page_shows_every_key_where_it_is_held_and_whether_it_is_needed(
        api: Api) -> None:
    fleet = api.fleet
    html = await page(api, "/keys")
    rows = {row[0]: row for row in rows_of(html)}
    assert set(rows) == {fleet.old, fleet.new, fleet.extra}
    # newest NotBefore first: extra (its stored certificate's, made just now), new
    # (2 d old), old (90 d)
    order = [row[0] for row in rows_of(html)]
    assert order == [fleet.extra, fleet.new, fleet.old]
    old, new, extra = rows[fleet.old], rows[fleet.new], rows[fleet.extra]
    assert "age 90.0 d" in old[1]
    assert old[5] == "master"
    assert extra[5] == "no"
    assert old[6] == "alpha beta (sealing)"
    assert new[6] == "alpha (sealing)"
    assert extra[6] == "sealfleet store (private key)"
    assert (old[7], old[8]) == ("3", "3")       # alpha/apps/web, beta/apps/db, beta/apps/bad
    assert (new[7], new[8]) == ("3", "2")       # alpha/apps/db (2 items), alpha/ops/y
    assert (extra[7], extra[8]) == ("0", "0")
    assert old[9] == "needed 3 SealedSecrets still sealed with it; sealing key of beta"
    assert extra[9] == "not needed nothing inventoried uses it"
    assert f'id="{key_anchor(fleet.old)}"' in html
    assert "BEGIN" not in html        # no certificate, no private key: public facts only


async def test_jobs_page_renders_empty_and_then_running_and_recent_jobs(api: Api) -> None:
    html = await page(api, "/jobs")
    assert "No job is running or pending." in html
    assert "No jobs have run yet." in html
    jobs = api.store.jobs
    done = await jobs.create_job("renewal", {"cluster": "<beta>"}, ["beta/a", "beta/b"])
    await jobs.update_job_items(done, [("beta/a", "done", None), ("beta/b", "failed", "x")])
    await jobs.set_job_state(done, "failed", error="beta: <refused>")
    running = await jobs.create_job("key_sync", {}, ["alpha/k"])
    await jobs.set_job_state(running, "running")
    html = await page(api, "/jobs")
    in_progress, recent = html.split("<h2>Recent")
    assert running in in_progress
    assert done not in in_progress
    assert done in recent
    assert running not in recent
    assert "2 of 2" in recent
    assert "1 done, 1 failed" in recent
    assert "beta: &lt;refused&gt;" in recent
    assert "&quot;&lt;beta&gt;&quot;" in recent
    assert "<refused>" not in html
    assert "<beta>" not in html


@pytest.mark.parametrize("path", ["/clusters/alpha", "/keys", "/jobs"])
async def test_pages_over_tcp_take_the_read_token_like_the_overview(api: Api,
                                                                    path: str) -> None:
    status, body, response = await api.get(path, via="tcp")
    assert status == 401
    assert 'Basic realm="sealfleet"' in response.headers.getall("WWW-Authenticate")
    basic = "Basic " + base64.b64encode(f"me:{READ_TOKEN}".encode()).decode()
    status, body, _ = await api.get(path, via="tcp", authorization=basic)
    assert status == 200
    assert b"<title>sealfleet" in body
