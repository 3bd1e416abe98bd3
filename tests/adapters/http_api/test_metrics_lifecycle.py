"""The key-lifecycle metrics over real HTTP: key ages, job outcomes, controller, backup.

Each test scrapes ``/metrics`` from the real server and parses it with the Prometheus
client's own parser; ``promtool check metrics`` lints a whole scrape (in CI promtool
must be there: ``.ci/run`` installs Debian's prometheus package).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from apitesting import DAY, NOW, Api
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from sealfleet.adapters.http_api import ApiDeps, ApiServer, build_app
from sealfleet.adapters.http_api.metrics import newest_file_timestamp

PROMTOOL = Path("/usr/bin/promtool")
RULES = Path(__file__).resolve().parents[3] / "config" / "sealfleet.rules.yml"
CRASHING = "deployment kube-system/sealed-secrets-controller has no ready replicas"
NO_ENDPOINTS = ('GET /api/v1/namespaces/kube-system/services/http:sealed-secrets-controller:'
                'http/proxy/v1/cert.pem: HTTP 503: no endpoints available for service '
                '"sealed-secrets-controller"')
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: bytes) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


async def scrape(api: Api) -> Samples:
    status, text, _ = await api.get("/metrics")
    assert status == 200
    return parse(text)


async def test_every_fleet_key_has_its_age_and_state(api: Api) -> None:
    samples = await scrape(api)
    fleet = api.fleet
    old = (("fingerprint", fleet.old), ("state", "active"))
    new = (("fingerprint", fleet.new), ("state", "active"))
    assert samples[("sealfleet_key_age_seconds", old)] == 90 * 86400
    assert samples[("sealfleet_key_age_seconds", new)] == 2 * 86400
    assert samples[("sealfleet_key_not_before_timestamp_seconds", old)] == \
        (NOW - 90 * DAY).timestamp()
    ages = {labels for name, labels in samples if name == "sealfleet_key_age_seconds"}
    assert {dict(labels)["fingerprint"] for labels in ages} == {fleet.old, fleet.new,
                                                                fleet.extra}
    await api.store.keys.set_key_state(fleet.old, "compromised", actor="test")
    api.bump()
    samples = await scrape(api)
    assert samples[("sealfleet_key_age_seconds",
                    (("fingerprint", fleet.old), ("state", "compromised")))] == 90 * 86400
    assert ("sealfleet_key_age_seconds", old) not in samples


async def test_job_outcomes_and_the_last_successful_renewal_and_sync(api: Api) -> None:
    samples = await scrape(api)
    assert samples[("sealfleet_last_key_renewal_timestamp_seconds", ())] == 0
    assert samples[("sealfleet_last_key_sync_timestamp_seconds", ())] == 0
    assert not [name for name, _ in samples if name == "sealfleet_jobs_total"]
    jobs = api.store.jobs
    failed = await jobs.create_job("renewal", {}, ["alpha"])
    await jobs.set_job_state(failed, "failed", error="refused")
    renewed = await jobs.create_job("renewal", {}, ["alpha"])
    await jobs.set_job_state(renewed, "succeeded")
    syncing = await jobs.create_job("key_sync", {}, ["beta/k"])
    await jobs.set_job_state(syncing, "running")
    samples = await scrape(api)   # no bump: jobs are read per scrape, not from the snapshot
    renewal = await jobs.get_job(renewed)
    assert renewal is not None
    assert renewal.finished_at is not None
    assert samples[("sealfleet_last_key_renewal_timestamp_seconds", ())] == \
        renewal.finished_at.timestamp()
    assert samples[("sealfleet_last_key_sync_timestamp_seconds", ())] == 0
    total = {dict(labels)["kind"] + "/" + dict(labels)["state"]: value
             for (name, labels), value in samples.items() if name == "sealfleet_jobs_total"}
    assert total == {"renewal/succeeded": 1, "renewal/failed": 1, "renewal/cancelled": 0,
                     "key_sync/succeeded": 0, "key_sync/failed": 0, "key_sync/cancelled": 0}
    assert samples[("sealfleet_jobs_in_progress",
                    (("kind", "key_sync"), ("state", "running")))] == 1
    last_failed = samples[("sealfleet_last_job_timestamp_seconds",
                           (("kind", "renewal"), ("state", "failed")))]
    last_ok = samples[("sealfleet_last_job_timestamp_seconds",
                       (("kind", "renewal"), ("state", "succeeded")))]
    assert 0 < last_failed <= last_ok   # the failure was followed by a success
    await jobs.set_job_state(syncing, "succeeded")
    samples = await scrape(api)
    synced = await jobs.get_job(syncing)
    assert synced is not None
    assert synced.finished_at is not None
    assert samples[("sealfleet_last_key_sync_timestamp_seconds", ())] == \
        synced.finished_at.timestamp()


async def test_controller_problems_and_crash_loops_per_cluster(api: Api) -> None:
    """Both metrics follow the probe's structured controller_state, not the error's
    wording: a 503 text with replicas ready is a problem, not a crash loop; a crash loop
    worded like nothing known still counts."""
    inventory = api.store.inventory
    await inventory.record_cluster_status("alpha", reachable=True, controller_error=CRASHING,
                                          controller_state="no_ready_replicas")
    await inventory.record_cluster_status("beta", reachable=True,
                                          controller_error="service kube-system/x has no ports",
                                          controller_state="not_serving")
    await inventory.record_cluster_status("gamma", reachable=True, controller_state="serving")
    api.bump()
    samples = await scrape(api)

    def value(name: str, cluster: str) -> float:
        return samples[(name, (("cluster", cluster),))]

    assert [value("sealfleet_controller_error", c) for c in ("alpha", "beta", "gamma")] == \
        [1, 1, 0]
    assert [value("sealfleet_controller_crashlooping", c)
            for c in ("alpha", "beta", "gamma")] == [1, 0, 0]
    await inventory.record_cluster_status("beta", reachable=True, controller_error=NO_ENDPOINTS,
                                          controller_state="not_serving")
    await inventory.record_cluster_status("alpha", reachable=True, controller_state="serving")
    await inventory.record_cluster_status("gamma", reachable=True,
                                          controller_error="something new",
                                          controller_state="no_ready_replicas")
    api.bump()
    samples = await scrape(api)
    assert [value("sealfleet_controller_crashlooping", c)
            for c in ("alpha", "beta", "gamma")] == [0, 0, 1]
    assert [value("sealfleet_controller_error", c) for c in ("alpha", "beta", "gamma")] == \
        [0, 1, 1]
    status, body, _ = await api.get("/api/v1/staleness")
    assert status == 200
    states = {c["name"]: c["controller_state"] for c in body["clusters"]}
    assert states == {"alpha": "serving", "beta": "not_serving", "gamma": "no_ready_replicas"}


async def test_no_backup_metric_unless_backups_are_configured(api: Api) -> None:
    samples = await scrape(api)
    assert not [n for n, _ in samples if n == "sealfleet_last_backup_timestamp_seconds"]


@pytest.fixture
async def backed_up(api: Api, tmp_path: Path) -> AsyncIterator[tuple[Api, Path, Path]]:
    """The fixture's store and view served by a second server whose deps know a backup
    directory (as the service wires ``[backup] dir``)."""
    backups = tmp_path / "backups"
    socket_path = tmp_path / "backup-api.sock"
    deps = ApiDeps(view=api.view, store=api.store, last_backup=newest_file_timestamp(backups))
    async with ApiServer(build_app(deps), socket_path=socket_path, listen=None):
        yield api, backups, socket_path


async def scrape_socket(api: Api, socket_path: Path) -> Samples:
    served = Api(api.store, api.view, api.server, socket_path, api.base_url, api.fleet,
                 api.counter, api.ready)
    return await scrape(served)


async def test_last_backup_is_the_newest_file_in_the_backup_directory(
        backed_up: tuple[Api, Path, Path]) -> None:
    api, backups, socket_path = backed_up
    name = "sealfleet_last_backup_timestamp_seconds"
    assert (await scrape_socket(api, socket_path))[(name, ())] == 0   # no directory yet
    backups.mkdir()
    assert (await scrape_socket(api, socket_path))[(name, ())] == 0   # empty
    for file_name, when in (("a.db", NOW - 3 * DAY), ("b.db", NOW - DAY), ("c.db", NOW - 2 * DAY)):
        (backups / file_name).write_bytes(b"x")
        os.utime(backups / file_name, (when.timestamp(), when.timestamp()))
    (backups / "newer-dir").mkdir()   # not a backup file
    assert (await scrape_socket(api, socket_path))[(name, ())] == (NOW - DAY).timestamp()


async def test_an_unreadable_backup_directory_leaves_the_metric_out_and_logs_once(
        backed_up: tuple[Api, Path, Path]) -> None:
    api, backups, socket_path = backed_up
    backups.write_text("a file where the directory should be")
    with capture_logs() as logs:
        for _ in range(2):
            samples = await scrape_socket(api, socket_path)
            assert ("sealfleet_last_backup_timestamp_seconds", ()) not in samples
    warnings = [e for e in logs if e["event"] == "metrics_input_unavailable"]
    assert [w["source"] for w in warnings] == ["backup_dir"]
    backups.unlink()
    with capture_logs() as logs:
        samples = await scrape_socket(api, socket_path)
    assert samples[("sealfleet_last_backup_timestamp_seconds", ())] == 0
    assert [e["event"] for e in logs if e["event"].startswith("metrics_input")] == \
        ["metrics_input_recovered"]


@pytest.fixture
def promtool() -> Path:
    if not PROMTOOL.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PROMTOOL} is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return PROMTOOL


async def test_a_whole_scrape_passes_promtool_check_metrics(api: Api, promtool: Path) -> None:
    jobs = api.store.jobs
    await jobs.set_job_state(await jobs.create_job("renewal", {}, []), "succeeded")
    await api.store.inventory.record_cluster_status("alpha", reachable=True,
                                                    controller_error=CRASHING,
                                                    controller_state="no_ready_replicas")
    api.bump()
    status, text, _ = await api.get("/metrics")
    assert status == 200
    process = await asyncio.create_subprocess_exec(
        str(promtool), "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate(text)
    assert process.returncode == 0, out.decode()
    assert out.decode().strip() == "", out.decode()   # not even a lint warning


async def test_every_metric_the_alert_rules_use_is_exported(
        backed_up: tuple[Api, Path, Path]) -> None:
    """A rule over a name the daemon does not export would never fire."""
    api, _, socket_path = backed_up
    rules = yaml.safe_load(RULES.read_text())
    used = {name for group in rules["groups"] for rule in group["rules"]
            for name in re.findall(r"\bsealfleet_[a-z_]+", rule["expr"])}
    assert len(used) >= 8
    jobs = api.store.jobs
    await jobs.set_job_state(await jobs.create_job("renewal", {}, []), "failed")
    samples = await scrape_socket(api, socket_path)
    exported = {name for name, _ in samples}
    assert used <= exported, used - exported
