"""The status pages in a real browser: Debian's headless Chromium against the real server.

Chromium opens each page over TCP with the read token as the Basic-auth password (as a
person's browser would after its prompt), dumps the DOM it built and takes a
screenshot.  The DOM must hold what a person came for (the stale SealedSecret and the
key that sealed it, every key), every link a page offers must lead to a page (not to an
error), and the screenshot must be a real picture of the page.  In CI (``CI=true``) a
missing Chromium fails the test instead of skipping it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from apitesting import READ_TOKEN, Api

from sealfleet.adapters.http_api.pages.layout import key_anchor, short_fingerprint

CHROMIUM = Path("/usr/bin/chromium")
WINDOW = (1366, 900)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}")
RUN_LIMIT = 50.0   # seconds one Chromium run may take before the test gives up on it


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    return CHROMIUM


@dataclass
class Dom(HTMLParser):
    """What the tests read from a dumped DOM: links, element ids, titles, text."""

    links: list[tuple[str, str, str]] = field(default_factory=list)  # (href, title, text)
    ids: set[str] = field(default_factory=set)
    text: list[str] = field(default_factory=list)
    title: str = ""
    _open: list[tuple[str, str]] = field(default_factory=list)
    _link_text: list[str] = field(default_factory=list)
    _in_title: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if "id" in values:
            self.ids.add(values["id"])
        if tag == "a" and "href" in values:
            self._open.append((values["href"], values.get("title", "")))
            self._link_text = []
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._open:
            href, title = self._open.pop()
            self.links.append((href, title, "".join(self._link_text).strip()))
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        self._link_text.append(data)
        if self._in_title:
            self.title += data

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


@dataclass
class Browser:
    chromium: Path
    api: Api
    workdir: Path
    runs: int = 0

    def url(self, path: str) -> str:
        """The page's URL with the read token as the Basic-auth password."""
        port = self.api.server.tcp_port
        return f"http://sealfleet:{READ_TOKEN}@127.0.0.1:{port}{path}"

    async def _run(self, *args: str) -> bytes:
        self.runs += 1
        profile = self.workdir / f"profile-{self.runs}"
        process = await asyncio.create_subprocess_exec(
            str(self.chromium), *FLAGS, f"--user-data-dir={profile}", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(RUN_LIMIT):
                out, err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            pytest.fail(f"chromium took more than {RUN_LIMIT}s")
        # Chromium's stderr is noise about D-Bus; only its exit status matters (the URL,
        # with the token in it, is never echoed).
        assert process.returncode == 0, err.decode(errors="replace")[-2000:]
        return out

    async def open(self, path: str, name: str) -> tuple[Dom, Path]:
        """The DOM Chromium built for the page, and its screenshot (one run)."""
        png = self.workdir / f"{name}.png"
        out = await self._run(f"--screenshot={png}", "--dump-dom", self.url(path))
        dom = Dom()
        dom.feed(out.decode())
        return dom, png

    async def follow(self, page: str, dom: Dom) -> dict[str, Dom]:
        """Request every link of *page* (once per target) as the browser would resolve
        it, with the same credentials; each must be a page holding the link's #fragment.
        (Over plain HTTP: the pages have no script, so what is served is the DOM.)"""
        targets: dict[str, set[str]] = {}
        for href, _, _ in dom.links:
            parts = urlsplit(urljoin(f"http://sealfleet{page}", href))
            assert parts.netloc == "sealfleet", (page, href)   # no link leaves the daemon
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            targets.setdefault(target, set()).add(parts.fragment)
        basic = "Basic " + base64.b64encode(f"sealfleet:{READ_TOKEN}".encode()).decode()
        found = {}
        for target, fragments in sorted(targets.items()):
            status, body, response = await self.api.get(target, via="tcp",
                                                        authorization=basic)
            assert status == 200, (page, target, body)
            if target.startswith("/api/"):   # a link to a JSON document (a job's steps)
                assert response.headers["Content-Type"].startswith("application/json")
                found[target] = Dom()          # no DOM: the document is data
                continue
            assert response.headers["Content-Type"].startswith("text/html"), (page, target)
            found[target] = opened = Dom()
            opened.feed(body.decode())
            assert opened.title.startswith("sealfleet"), (page, target)
            assert fragments - {""} <= opened.ids, (page, target, fragments)
        return found


def assert_real_screenshot(png: Path) -> None:
    """A PNG of the window's size whose rows are not all the same (a page, not a blank)."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height) == WINDOW
    assert len(data) > 20_000, len(data)
    idat, offset = b"", 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind = data[offset + 4:offset + 8]
        if kind == b"IDAT":
            idat += data[offset + 8:offset + 8 + length]
        offset += length + 12
    raw = zlib.decompress(idat)
    channels = {2: 3, 6: 4}[colour] * depth // 8
    stride = width * channels + 1
    rows = {raw[i * stride + 1:(i + 1) * stride] for i in range(height)}
    assert len(rows) > 50, f"only {len(rows)} distinct pixel rows: a blank page?"


@pytest.fixture
def browser(chromium: Path, api: Api, tmp_path: Path) -> Browser:
    return Browser(chromium, api, tmp_path / "browser")


async def test_overview_links_every_cluster_and_the_keys_and_jobs_pages(
        browser: Browser) -> None:
    dom, png = await browser.open("/", "overview")
    hrefs = {href for href, _, _ in dom.links}
    assert {"clusters/alpha", "clusters/beta", "clusters/gamma", "keys", "jobs"} <= hrefs
    assert "clusters/alpha?state=stale" in hrefs   # alpha has one stale SealedSecret
    assert "connect <b>refused</b>" in dom.all_text    # shown as text, not markup
    opened = await browser.follow("/", dom)
    assert opened["/clusters/alpha?state=stale"].title == "sealfleet: alpha"
    assert_real_screenshot(png)


async def test_a_stale_sealed_secret_is_listed_on_its_cluster_page_with_its_key(
        browser: Browser) -> None:
    fleet = browser.api.fleet
    dom, png = await browser.open("/clusters/alpha?state=stale", "cluster-alpha-stale")
    text = dom.all_text
    assert "web" in text
    assert "apps" in text
    assert " db " not in f" {text} "   # current ones are not in the stale view
    old = [(href, title) for href, title, shown in dom.links
           if shown == short_fingerprint(fleet.old)]
    assert old, "the stale item's key is not shown"
    assert all(title == fleet.old for _, title in old)
    assert f"../keys#{key_anchor(fleet.old)}" in {href for href, _ in old}
    assert "older key" in text
    opened = await browser.follow("/clusters/alpha?state=stale", dom)
    assert key_anchor(fleet.old) in opened["/keys"].ids
    assert_real_screenshot(png)


async def test_the_keys_page_lists_every_key_with_where_it_is_held(browser: Browser) -> None:
    fleet = browser.api.fleet
    dom, png = await browser.open("/keys", "keys")
    for fingerprint in (fleet.old, fleet.new, fleet.extra):
        assert key_anchor(fingerprint) in dom.ids
        assert fingerprint in dom.all_text
    assert "sealfleet store" in dom.all_text     # the generated key's private half is held
    assert "not needed" in dom.all_text          # ... and nothing is sealed with it
    await browser.follow("/keys", dom)
    assert_real_screenshot(png)


async def test_the_jobs_page_shows_running_and_recent_jobs(browser: Browser) -> None:
    jobs = browser.api.store.jobs
    running = await jobs.create_job("key_sync", {"cluster": "alpha"}, ["alpha/k-new"])
    await jobs.set_job_state(running, "running")
    failed = await jobs.create_job("renewal", {}, ["beta"])
    await jobs.set_job_state(failed, "failed", error="controller <down>")
    dom, png = await browser.open("/jobs", "jobs")
    assert "key_sync" in dom.all_text
    assert "renewal" in dom.all_text
    assert "controller <down>" in dom.all_text
    opened = await browser.follow("/jobs", dom)
    assert f"/api/v1/jobs/{failed}" in opened
    assert_real_screenshot(png)
