"""Key handling as the real controller does it: loaded at start only, renewed on its own
schedule, picked up on a rollout restart, and a crash loop on an unparseable key."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from controller_harness import SandboxHarness, start_sandbox

from polling import eventually
from sealfleet.domain import key_secrets
from sealfleet.domain import keys as keys_domain
from sealfleet.domain.sealed_secrets import seal_secret
from sealfleet.sandbox.controller import ControllerFlags
from sealfleet.sandbox.controller.flags import (
    ORDER_BY_CREATION,
    FlagError,
    format_cutoff,
    parse_flags,
    parse_go_duration,
)
from sealfleet.sandbox.controller.keyring import KeyRegistry, key_secret_selected
from sealfleet.sandbox.controller.unsealing import unseal_attributed

DAY = dt.timedelta(days=1)


async def _cert_fingerprint(harness: SandboxHarness) -> str | None:
    status, body, _ = await harness.proxy("GET", "/v1/cert.pem")
    return keys_domain.load_certificate(body).fingerprint if status == 200 else None


def _key_manifest(key: keys_domain.SealingKey, name: str) -> str:
    return json.dumps(keys_domain.key_secret_manifest(key, name=name))


def _synced(obj: dict[str, Any]) -> str | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition["type"] == "Synced":
            return str(condition["status"])
    return None


# ---------------------------------------------------------------- pure parts


def test_go_durations_and_flags_parse_like_the_controller() -> None:
    assert parse_go_duration("720h") == dt.timedelta(hours=720)
    assert parse_go_duration("1h30m") == dt.timedelta(minutes=90)
    assert parse_go_duration("0") == dt.timedelta(0)
    with pytest.raises(FlagError):
        parse_go_duration("30d")  # Go has no day unit
    flags = parse_flags(["--key-renew-period=0", "--key-order-priority",
                         "SecretCreationTimestamp"],
                        {"SEALED_SECRETS_KEY_RENEW_PERIOD": "1h",
                         "SEALED_SECRETS_KEY_SIZE": "3072"})
    assert flags.key_renew_period == dt.timedelta(0)  # the command line beats the env
    assert flags.key_size == 3072
    assert flags.key_order_priority == ORDER_BY_CREATION
    assert parse_flags(["--key-order-priority=Bogus"]).key_order_priority == "CertNotBefore"
    with pytest.raises(FlagError, match="unknown flag"):
        parse_flags(["--no-such-flag"])


def test_renewal_schedule_is_period_minus_age_of_newest_key(
        rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    now = dt.datetime.now(dt.UTC)
    registry = KeyRegistry(ControllerFlags())
    assert registry.needs_key_at_start(now)
    registry.register(rsa2048_keys[0], now - 5 * DAY, "old")
    registry.register(rsa2048_keys[1], now - 40 * DAY, "older")
    assert registry.most_recent is not None
    assert registry.most_recent.secret_name == "old"  # strictly later wins, not last seen
    assert registry.first_renewal_delay(now) == 25 * DAY
    assert not registry.needs_key_at_start(now)
    cutoff = KeyRegistry(ControllerFlags(key_cutoff_time=now - DAY,
                                         key_renew_period=dt.timedelta(0)))
    cutoff.register(rsa2048_keys[0], now - 5 * DAY, "old")
    assert cutoff.needs_key_at_start(now)
    assert cutoff.first_renewal_delay(now) is None  # 0 disables renewal
    stale = KeyRegistry(ControllerFlags(key_renew_period=dt.timedelta(hours=72)))
    stale.register(rsa2048_keys[0], now - 5 * DAY, "old")
    assert stale.first_renewal_delay(now) == dt.timedelta(0)


def test_unseal_tries_the_last_opener_then_the_newest_and_opens_mixed_items(
        rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    """Upstream tries keys in Go map order (random): any order is faithful.  The
    emulation's spares failed decrypts; every item still opens, whatever sealed it."""
    now = dt.datetime.now(dt.UTC)
    oldest, middle, newest = rsa2048_keys
    registry = KeyRegistry(ControllerFlags())
    registry.register(middle, now - 5 * DAY, "middle")
    registry.register(newest, now - DAY, "newest")
    registry.register(oldest, now - 9 * DAY, "oldest")
    fingerprints = [k.fingerprint for k in registry.likeliest_first(None)]
    assert fingerprints == [newest.fingerprint, middle.fingerprint, oldest.fingerprint]
    hinted = [k.fingerprint for k in registry.likeliest_first(oldest.fingerprint)]
    assert hinted == [oldest.fingerprint, newest.fingerprint, middle.fingerprint]
    assert [k.fingerprint for k in registry.likeliest_first("unknown")] == fingerprints
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "app", "namespace": "team"},
              "data": {"a": "YQ==", "b": "Yg==", "c": "Yw=="}}
    by_old = seal_secret(secret, oldest.public_key)
    by_new = seal_secret(secret, newest.public_key)
    mixed = {**by_old, "spec": {**by_old["spec"], "encryptedData": {
        "a": by_old["spec"]["encryptedData"]["a"], "b": by_new["spec"]["encryptedData"]["b"],
        "c": by_old["spec"]["encryptedData"]["c"]}}}
    mixed["metadata"] = {**mixed["metadata"], "uid": "u-1"}
    result = unseal_attributed(mixed, registry.likeliest_first(middle.fingerprint))
    assert result.secret["data"] == secret["data"]
    assert result.fingerprints == {oldest.fingerprint, newest.fingerprint}


def test_secret_creation_order_can_override_not_before(
        rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    """--key-order-priority=SecretCreationTimestamp (issue #1639): a Secret created later
    wins even when its certificate is older."""
    now = dt.datetime.now(dt.UTC)
    older_cert, newer_cert = (
        keys_domain.SealingKey(key.private_key, keys_domain.self_signed_certificate(
            key.private_key, now=now - age))
        for key, age in ((rsa2048_keys[0], 30 * DAY), (rsa2048_keys[1], DAY)))
    imported = keys_domain.key_secret_manifest(older_cert, name="imported")
    imported["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    generated = keys_domain.key_secret_manifest(newer_cert, name="generated")
    generated["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    by_creation = KeyRegistry(ControllerFlags(key_order_priority=ORDER_BY_CREATION))
    by_not_before = KeyRegistry(ControllerFlags())
    for registry in (by_creation, by_not_before):
        registry.register_secret(generated)
        registry.register_secret(imported)
    assert by_creation.most_recent is not None
    assert by_creation.most_recent.secret_name == "imported"
    assert by_not_before.most_recent is not None
    assert by_not_before.most_recent.secret_name == "generated"


def test_only_active_keys_and_the_legacy_name_are_loaded(
        rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    key = rsa2048_keys[0]
    active = keys_domain.key_secret_manifest(key, name="sealed-secrets-keyabcde")
    retired = keys_domain.key_secret_manifest(key, name="sealed-secrets-keyfghij",
                                              label_value="compromised")
    legacy = keys_domain.key_secret_manifest(key, name="sealed-secrets-key",
                                             label_value="compromised")
    assert key_secret_selected(active, "sealed-secrets-key")
    assert not key_secret_selected(retired, "sealed-secrets-key")
    assert key_secret_selected(legacy, "sealed-secrets-key")  # whatever its labels say


# ------------------------------------------------------------- in the cluster


async def test_overdue_renewal_writes_a_key_secret_like_the_controller(tmp_path: Path) -> None:
    flags = ControllerFlags(key_size=2048, key_renew_period=dt.timedelta(hours=72))
    async with start_sandbox(tmp_path, flags=flags) as sandbox:
        harness = SandboxHarness(sandbox)
        seeded = {k["fingerprint"] for k in harness.seed["clusters"]["sandbox-1"]["keys"]}

        async def renewed() -> list[dict[str, Any]]:
            return [s for s in await harness.key_secrets()
                    if key_secrets.load_key_secret(s).fingerprint not in seeded]

        (new,) = await eventually(renewed)
        assert new["type"] == "kubernetes.io/tls"
        assert new["metadata"]["name"].startswith("sealed-secrets-key")
        assert len(new["metadata"]["name"]) == len("sealed-secrets-key") + 5
        assert new["metadata"]["labels"] == {
            "sealedsecrets.bitnami.com/sealed-secrets-key": "active"}
        fingerprint = key_secrets.load_key_secret(new).fingerprint
        assert await eventually(lambda: _is(harness, fingerprint)) is True


async def _is(harness: SandboxHarness, fingerprint: str) -> bool:
    return await _cert_fingerprint(harness) == fingerprint


async def test_new_key_secret_is_used_only_after_rollout_restart(
        sandbox: SandboxHarness, rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    new_key = rsa2048_keys[2]  # NotBefore now: newer than every seeded key
    before = await _cert_fingerprint(sandbox)
    created = await sandbox.kubectl("apply", "-f", "-",
                                    stdin=_key_manifest(new_key, "imported-key"))
    assert created.returncode == 0, created.stderr
    sealed = seal_secret({"metadata": {"name": "late", "namespace": "default"},
                          "stringData": {"k": "v"}}, new_key.public_key)
    applied = await sandbox.kubectl("apply", "-f", "-", stdin=json.dumps(sealed))
    assert applied.returncode == 0, applied.stderr
    # The running controller has not seen the key: the SealedSecret fails to unseal.
    failing = await eventually(lambda: _status_is(sandbox, "late", "False"))
    assert "no key could decrypt" in failing["status"]["conditions"][0]["message"]
    assert await _cert_fingerprint(sandbox) == before
    old_pods = await sandbox.kubectl_json("get", "pods", "-n", "kube-system")

    restarted = await sandbox.kubectl("rollout", "restart", "-n", "kube-system",
                                      "deployment/sealed-secrets-controller")
    assert restarted.returncode == 0, restarted.stderr
    assert await eventually(lambda: _is(sandbox, new_key.fingerprint)) is True
    await eventually(lambda: _status_is(sandbox, "late", "True"))
    pods = await sandbox.kubectl_json("get", "pods", "-n", "kube-system")
    assert [p["metadata"]["name"] for p in pods["items"]] != \
        [p["metadata"]["name"] for p in old_pods["items"]]
    deployment = await sandbox.kubectl_json("get", "deployment", "-n", "kube-system",
                                            "sealed-secrets-controller")
    assert "kubectl.kubernetes.io/restartedAt" in \
        deployment["spec"]["template"]["metadata"]["annotations"]


async def _status_is(harness: SandboxHarness, name: str, wanted: str) -> dict[str, Any] | None:
    result = await harness.kubectl("get", "sealedsecret", "-n", "default", name, "-o", "json")
    if result.returncode != 0:
        return None
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj if _synced(obj) == wanted else None


async def test_watch_for_secrets_adds_keys_without_restart(
        tmp_path: Path, rsa2048_keys: list[keys_domain.SealingKey]) -> None:
    flags = ControllerFlags(key_size=2048, watch_for_secrets=True)
    async with start_sandbox(tmp_path, flags=flags) as sandbox:
        harness = SandboxHarness(sandbox)
        starts = harness.cluster.workload.starts
        new_key = rsa2048_keys[2]
        created = await harness.kubectl("apply", "-f", "-",
                                        stdin=_key_manifest(new_key, "watched-key"))
        assert created.returncode == 0, created.stderr
        assert await eventually(lambda: _is(harness, new_key.fingerprint)) is True
        # Watching adds keys only: once loaded, a key stays even if its Secret goes.
        removed = await harness.kubectl("delete", "secret", "-n", "kube-system", "watched-key")
        assert removed.returncode == 0, removed.stderr
        sealed = seal_secret({"metadata": {"name": "after", "namespace": "default"},
                              "stringData": {"k": "v"}}, new_key.public_key)
        applied = await harness.kubectl("apply", "-f", "-", stdin=json.dumps(sealed))
        assert applied.returncode == 0, applied.stderr
        await eventually(lambda: _status_is(harness, "after", "True"))
        assert await _is(harness, new_key.fingerprint)
        assert harness.cluster.workload.starts == starts  # no restart happened


async def test_cutoff_time_set_through_the_deployment_env_generates_a_key(
        sandbox: SandboxHarness) -> None:
    before = await _cert_fingerprint(sandbox)
    cutoff = format_cutoff(dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
    result = await sandbox.kubectl("set", "env", "-n", "kube-system",
                                   "deployment/sealed-secrets-controller",
                                   f"SEALED_SECRETS_KEY_CUTOFF_TIME={cutoff}")
    assert result.returncode == 0, result.stderr

    async def changed() -> str | None:
        fingerprint = await _cert_fingerprint(sandbox)
        return fingerprint if fingerprint not in (None, before) else None

    new = await eventually(changed)
    assert new in {key_secrets.load_key_secret(s).fingerprint
                   for s in await sandbox.key_secrets()}


async def test_unparseable_active_key_crash_loops_until_removed(sandbox: SandboxHarness) -> None:
    bad = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": "broken-key", "namespace": "kube-system",
                        "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
           "data": {"tls.key": "bm90IGEga2V5", "tls.crt": "bm90IGEgY2VydA=="}}
    created = await sandbox.kubectl("apply", "-f", "-", stdin=json.dumps(bad))
    assert created.returncode == 0, created.stderr
    deleted = await sandbox.kubectl("delete", "pod", "-n", "kube-system", "-l",
                                    "name=sealed-secrets-controller")
    assert deleted.returncode == 0, deleted.stderr

    async def crash_looping() -> dict[str, Any] | None:
        pods = await sandbox.kubectl_json("get", "pods", "-n", "kube-system")
        (container,) = pods["items"][0]["status"].get("containerStatuses") or [{}]
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff" and container["restartCount"] >= 2:
            return dict(container)
        return None

    container = await eventually(crash_looping)
    assert container["ready"] is False
    assert container["lastState"]["terminated"]["reason"] == "Error"
    # kubectl's table comes from the server-side printer: STATUS is the waiting reason,
    # RESTARTS the count with the time of the last termination, as on a real cluster.
    # Between two back-offs the kubelet restarts the container, which runs (0/1 Running)
    # until it crashes again, so a later read may catch that window: wait for the table
    # to show the back-off itself.
    async def table_backing_off() -> re.Match[str] | None:
        table = await sandbox.kubectl("get", "pods", "-n", "kube-system")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        return re.fullmatch(r"(\S+)\s+0/1\s+CrashLoopBackOff\s+(\d+) \((\S+) ago\)\s+\S+",
                            row)

    shown = await eventually(table_backing_off)
    assert int(shown.group(2)) >= container["restartCount"]
    proxied = await sandbox.kubectl("get", "--raw", "/api/v1/namespaces/kube-system/services/"
                                    "http:sealed-secrets-controller:/proxy/v1/cert.pem")
    assert proxied.returncode != 0
    assert "ServiceUnavailable" in proxied.stderr or "503" in proxied.stderr
    status, body, _ = await sandbox.proxy("GET", "/v1/cert.pem")
    assert status == 503
    assert json.loads(body)["reason"] == "ServiceUnavailable"

    removed = await sandbox.kubectl("delete", "secret", "-n", "kube-system", "broken-key")
    assert removed.returncode == 0, removed.stderr
    assert await eventually(lambda: _cert_fingerprint(sandbox)) is not None
    table = await sandbox.kubectl("get", "pods", "-n", "kube-system", "--no-headers")
    assert table.stdout.split()[1:3] == ["1/1", "Running"], table.stdout


async def test_removing_a_key_in_use_breaks_its_secrets_after_restart(
        sandbox: SandboxHarness) -> None:
    cluster = sandbox.seed["clusters"]["sandbox-1"]
    old = next(k for k in cluster["keys"] if not k["sealing"])
    victims = [e for e in sandbox.seed["sealed_secrets"]
               if any(i["key"] == old["fingerprint"] for i in e["items"])]
    survivors = [e for e in sandbox.seed["sealed_secrets"]
                 if all(i["key"] != old["fingerprint"] for i in e["items"])]
    assert victims
    assert survivors
    deleted = await sandbox.kubectl("delete", "secret", "-n", "kube-system", old["secret"])
    assert deleted.returncode == 0, deleted.stderr
    restarted = await sandbox.kubectl("rollout", "restart", "-n", "kube-system",
                                      "deployment/sealed-secrets-controller")
    assert restarted.returncode == 0, restarted.stderr

    async def states() -> dict[str, str] | None:
        listed = await sandbox.kubectl_json("get", "sealedsecrets", "-A")
        found = {o["metadata"]["name"]: _synced(o) or "" for o in listed["items"]}
        if all(found[v["name"]] == "False" for v in victims):
            return found
        return None

    found = await eventually(states)
    assert all(found[s["name"]] == "True" for s in survivors)
    victim = victims[0]
    events = await sandbox.kubectl_json("get", "events", "-n", victim["namespace"])
    assert ("Warning", "ErrUnsealFailed") in {
        (e["type"], e["reason"]) for e in events["items"]
        if e["involvedObject"]["name"] == victim["name"]}
    # Its Secret stays: the controller never deletes what it cannot refresh.
    secret = await sandbox.kubectl("get", "secret", "-n", victim["namespace"], victim["name"])
    assert secret.returncode == 0, secret.stderr
