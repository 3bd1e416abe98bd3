"""kill -9 of the daemon in the middle of a reseal: the next start finishes the job with the
same result (every SealedSecret sealed with the new master key, Synced for its
generation), each object written at most once more than needed, nothing lost.

The real ``sealfleet run`` and the real CLI, against ``sealfleet sandbox`` in another
process; the kill is timed by what the job document says (a step running), then at
random points.  Also the CLI's exit codes and its dry run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import random
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lifecycle.test_key_crash import Daemon, job, sealfleet
from sealfleet.adapters.http_api.client import ApiClient
from sealfleet.adapters.kube import controller, fleet_keys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.app import config
from sealfleet.domain import hybrid, key_secrets, sealed_secrets
from sealfleet.domain.keys import SealingKey
from sealfleet.errors import FleetError
from sealfleet.sandbox.runner import SandboxProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PER_CLUSTER = 80


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("reseal-crash") / "sandbox"
    with SandboxProcess(directory, ["--clusters", "2", "--sealed-secrets", str(PER_CLUSTER),
                                    "--keys", "2", "--key-bits", "2048",
                                    "--controller-startup-delay", "0.3"]):
        config_file = directory / "sealfleet.toml"
        text = config_file.read_text().replace(
            "[fleet]\nmaster_keys = []", "[fleet]\nmaster = true\nkey_bits = 2048")
        config_file.write_text(text + '\n[service]\nshutdown_timeout = "5s"\n')
        yield config_file


async def cluster_objects(settings: config.Settings, fingerprint: str,
                          ) -> dict[str, tuple[int, bool, bool]]:
    """Per ``cluster/namespace/name``: generation, whether every item opens with the key
    *fingerprint* alone (read from the cluster's key Secrets), Synced for the generation."""
    seen = {}
    for cluster in settings.clusters:
        async with KubeClient.connect(str(cluster.kubeconfig), cluster.context,
                                      request_timeout=5) as client:
            secrets = await fleet_keys.read_key_secrets(client, cluster.controller_namespace)
            key: SealingKey | None = None
            for secret in secrets:
                found = key_secrets.read_key_secret(secret)
                if found.fingerprint == fingerprint and found.problem is None:
                    key = found.load()
            assert key is not None, (cluster.name, "does not hold the master key")
            listed = await client.get_json(controller.SEALED_SECRETS_PATH)
        for obj in listed["items"]:
            meta = obj["metadata"]
            label = sealed_secrets.identity_of(obj).label
            try:
                for item, value in sealed_secrets.encrypted_items(obj).items():
                    hybrid.decrypt_with_index([key.private_key],
                                              sealed_secrets.decode_item(item, value), label)
                opens = True
            except Exception:
                opens = False
            status = obj.get("status") or {}
            synced = any(c.get("type") == "Synced" and c.get("status") == "True"
                         for c in status.get("conditions") or []) \
                and status.get("observedGeneration") == meta["generation"]
            seen[f"{cluster.name}/{meta['namespace']}/{meta['name']}"] = (
                meta["generation"], opens, synced)
    return seen


def journal_rows(settings: config.Settings, job_id: str) -> list[tuple[str, str, str, str]]:
    """The job's cluster objects in the per-object journal (read-only)."""
    uri = f"{settings.store.database.as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return db.execute("SELECT step, ref, state, outcome FROM job_objects "
                          "WHERE job_id = ? AND step LIKE 'cluster:%'", (job_id,)).fetchall()


def on_a_terminal(*args: str) -> tuple[int, str]:
    """The CLI with its stdout and stderr on a pseudo-terminal: exit code, what it shows."""
    main, secondary = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "sealfleet", *args], stdin=secondary,
                               stdout=secondary, stderr=secondary, close_fds=True)
    os.close(secondary)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:          # EIO: the terminal's other end closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    return process.wait(timeout=120), shown.decode(errors="replace")


def cli_json(*args: str) -> tuple[int, Any]:
    done = sealfleet(*args)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        return done.returncode, done.stdout + done.stderr


def test_a_reseal_killed_at_any_point_finishes_with_the_same_result(sandbox: Path) -> None:
    settings = config.load_settings(sandbox)
    conf = ("-c", str(sandbox))
    daemon = Daemon(sandbox)
    daemon.start()
    try:
        code, synced = cli_json("keys", "sync", "--wait", "-o", "json", *conf)
        assert code == 0, synced
        # Refused (exit 2): a cluster that is not configured.
        refused = sealfleet("reseal", "--cluster", "nope", "--wait", *conf)
        assert refused.returncode == 2, refused.stderr
        assert "no cluster named nope" in refused.stderr
        # A malformed selection is a 400 naming the field; nothing is journaled.
        assert settings.api.socket is not None
        api = ApiClient(socket_path=settings.api.socket)
        with pytest.raises(FleetError, match=r"HTTP 400 bad_request: states: 'nope'"):
            asyncio.run(api.request_json("POST", "/api/v1/reseal", {"states": ["nope"]}))
        with pytest.raises(FleetError, match="HTTP 400 bad_request: unknown field 'colour'"):
            asyncio.run(api.request_json("POST", "/api/v1/reseal", {"colour": "red"}))
        rng = random.Random(3)
        # Killed once the first cluster step runs: at once, then at random moments of it.
        kill_points = [0.0, rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2)]
        interrupted = []
        for point in kill_points:
            code, renewal = cli_json("keys", "renew", "--wait", "-o", "json", *conf)
            assert code == 0, renewal
            master = renewal["params"]["new_key"]
            deadline = time.monotonic() + 60
            while True:      # until the inventory has attributed what the renewal left
                code, plan = cli_json("reseal", "--dry-run", "-o",
                                      "json", *conf)
                assert code == 0, plan
                if plan["planned"] == 2 * PER_CLUSTER:
                    break
                assert time.monotonic() < deadline, plan
                time.sleep(0.3)
            assert plan["dry_run"] is True
            assert plan["by_cluster"] == {
                "sandbox-1": PER_CLUSTER, "sandbox-2": PER_CLUSTER}
            listed = json.loads(sealfleet("jobs", "list", "-o", "json", *conf).stdout)
            reseals_before = [j for j in listed["jobs"] if j["kind"] == "reseal"]
            before = asyncio.run(cluster_objects(settings, master))
            code, asked = cli_json("reseal", "-o", "json", *conf)
            assert code == 0, asked
            job_id = asked["id"]
            deadline = time.monotonic() + 60
            while True:
                document = job(settings, job_id)
                # Counts in the job document, from the per-object journal, while it runs.
                assert document["progress"]["total"]["planned"] == 2 * PER_CLUSTER
                assert set(document["progress"]["clusters"]) == {"sandbox-1", "sandbox-2"}
                if any(s["ref"].startswith("cluster:") and s["state"] != "pending"
                       for s in document["steps"]):
                    break
                assert time.monotonic() < deadline, "no cluster step ever ran"
                time.sleep(0.02)
            time.sleep(point)
            interrupted.append(job(settings, job_id)["state"] == "running")
            daemon.kill9()
            daemon.start()
            code, finished = cli_json("jobs", "wait", job_id, "-o", "json", *conf)
            assert code == 0, finished
            after = asyncio.run(cluster_objects(settings, master))
            assert set(after) == set(before), point           # nothing lost
            for ref, (generation, opens, synced) in after.items():
                assert opens, (point, ref)
                assert synced, (point, ref)
                # Written once, at most once more after the kill (never again and again).
                assert before[ref][0] < generation <= before[ref][0] + 2, (point, ref)
            totals = finished["result"]["totals"]
            assert totals["failed"] == 0
            assert totals["resealed"] + totals["skipped"] >= 2 * PER_CLUSTER
            # The per-object journal after the replays: every object marked once, final.
            progress = finished["progress"]["total"]
            assert (progress["remaining"], progress["failed"]) == (0, 0), progress
            assert progress["done"] + progress["skipped"] == 2 * PER_CLUSTER
            rows = journal_rows(settings, job_id)
            assert sorted(f"{step[len('cluster:'):]}/{ref}" for step, ref, _, _ in rows) \
                == sorted(after), point
            assert {(state, outcome) for _, _, state, outcome in rows} <= {
                ("done", "resealed"), ("skipped", "already_target")}, point
            for cluster in ("sandbox-1", "sandbox-2"):
                assert finished["result"]["clusters"][cluster]["objects"]["remaining"] == 0
            listed = json.loads(sealfleet("jobs", "list", "-o", "json", *conf).stdout)
            assert len([j for j in listed["jobs"] if j["kind"] == "reseal"]) \
                == len(reseals_before) + 1                        # no second job
        assert any(interrupted), "every kill came after its job had finished"
        # On a terminal, --wait shows the objects' progress and ends with the final state.
        code, renewal = cli_json("keys", "renew", "--wait", "-o", "json", *conf)
        assert code == 0, renewal
        deadline = time.monotonic() + 60
        while cli_json("reseal", "--dry-run", "-o", "json", *conf)[1]["planned"] \
                != 2 * PER_CLUSTER:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        code, shown = on_a_terminal("reseal", "--wait", *conf)
        assert code == 0, shown
        lines = [line for line in shown.replace("\r", "\n").splitlines() if line.strip()]
        assert any(re.search(r"reseal \w{8} \w+ \[[#.]{24}\] \d+/160 objects", line)
                   for line in lines), shown
        final = next(line for line in reversed(lines) if "objects" in line)
        assert "succeeded" in final, shown
        assert "160/160 objects" in final, shown
        assert "  reseal succeeded" in shown, shown    # then the plain final document
        # Everything is current now: a reseal has nothing to do and succeeds (exit 0).
        done = sealfleet("reseal", "--wait", *conf)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        daemon.stop()
