"""What the controller does to Secrets: ownership, the managed and patch annotations,
garbage collection with its SealedSecret, re-creation of a deleted Secret; and that
``seed.json`` describes exactly what is in the clusters."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from controller_harness import SMALL_SEED, SandboxHarness, start_sandbox

from polling import eventually
from sealfleet.app.config import load_settings
from sealfleet.domain import attribution, keyfiles
from sealfleet.domain import keys as keys_domain
from sealfleet.domain.scopes import scope_from_annotations
from sealfleet.domain.sealed_secrets import identity_of, seal_secret
from sealfleet.sandbox import SeedSpec
from sealfleet.sandbox.seeding import namespace_names


async def _seal_and_apply(harness: SandboxHarness, name: str, values: dict[str, str]) -> None:
    status, pem, _ = await harness.proxy("GET", "/v1/cert.pem")
    assert status == 200
    sealed = seal_secret({"metadata": {"name": name, "namespace": "default"},
                          "stringData": values}, keys_domain.load_certificate(pem).public_key)
    applied = await harness.kubectl("apply", "-f", "-", stdin=json.dumps(sealed))
    assert applied.returncode == 0, applied.stderr


async def _get(harness: SandboxHarness, kind: str, name: str) -> dict[str, Any] | None:
    result = await harness.kubectl("get", kind, "-n", "default", name, "-o", "json")
    return json.loads(result.stdout) if result.returncode == 0 else None


async def _synced(harness: SandboxHarness, name: str) -> dict[str, Any] | None:
    obj = await _get(harness, "sealedsecret", name)
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return conditions[0] if conditions else None


def _plain(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


async def _existing_secret(harness: SandboxHarness, name: str,
                           annotations: dict[str, str]) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                           "labels": {"origin": "manual"}},
              "stringData": {"kept": "old", "shared": "old"}}
    created = await harness.kubectl("create", "-f", "-", stdin=json.dumps(secret))
    assert created.returncode == 0, created.stderr


async def test_unmanaged_existing_secret_is_left_alone(sandbox: SandboxHarness) -> None:
    await _existing_secret(sandbox, "taken", {})
    await _seal_and_apply(sandbox, "taken", {"shared": "new"})
    condition = await eventually(lambda: _synced(sandbox, "taken"))
    assert condition["status"] == "False"
    assert condition["message"] == ('failed update: Resource "taken" already exists and is '
                                    "not managed by SealedSecret")
    secret = await _get(sandbox, "secret", "taken")
    assert secret is not None
    assert _plain(secret) == {"kept": "old", "shared": "old"}
    events = await sandbox.kubectl_json("get", "events", "-n", "default")
    assert [(e["type"], e["reason"]) for e in events["items"]
            if e["involvedObject"]["name"] == "taken"] == [("Warning", "ErrUpdateFailed")]


async def test_managed_annotation_hands_the_secret_over(sandbox: SandboxHarness) -> None:
    await _existing_secret(sandbox, "handed", {"sealedsecrets.bitnami.com/managed": "true"})
    await _seal_and_apply(sandbox, "handed", {"shared": "new"})
    condition = await eventually(lambda: _synced(sandbox, "handed"))
    assert condition["status"] == "True"
    secret = await _get(sandbox, "secret", "handed")
    assert secret is not None
    assert _plain(secret) == {"shared": "new"}  # replaced, not merged
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "SealedSecret"
    assert owner["name"] == "handed"


async def test_patch_annotation_merges_without_taking_ownership(
        sandbox: SandboxHarness) -> None:
    await _existing_secret(sandbox, "merged", {"sealedsecrets.bitnami.com/patch": "true"})
    await _seal_and_apply(sandbox, "merged", {"shared": "new", "added": "new"})
    condition = await eventually(lambda: _synced(sandbox, "merged"))
    assert condition["status"] == "True"
    secret = await _get(sandbox, "secret", "merged")
    assert secret is not None
    assert _plain(secret) == {"kept": "old", "shared": "new", "added": "new"}
    assert secret["metadata"]["labels"] == {"origin": "manual"}
    assert "ownerReferences" not in secret["metadata"]


async def test_secret_follows_its_sealed_secret(sandbox: SandboxHarness) -> None:
    await _seal_and_apply(sandbox, "lifecycle", {"k": "v1"})
    first = await eventually(lambda: _get(sandbox, "secret", "lifecycle"))
    deleted = await sandbox.kubectl("delete", "secret", "-n", "default", "lifecycle")
    assert deleted.returncode == 0, deleted.stderr

    async def recreated() -> dict[str, Any] | None:
        secret = await _get(sandbox, "secret", "lifecycle")
        if secret and secret["metadata"]["uid"] != first["metadata"]["uid"]:
            return secret
        return None

    assert _plain(await eventually(recreated)) == {"k": "v1"}
    removed = await sandbox.kubectl("delete", "sealedsecret", "-n", "default", "lifecycle")
    assert removed.returncode == 0, removed.stderr

    async def gone() -> bool:
        return await _get(sandbox, "secret", "lifecycle") is None

    assert await eventually(gone) is True


async def test_changed_sealed_secret_is_unsealed_again(sandbox: SandboxHarness) -> None:
    await _seal_and_apply(sandbox, "changing", {"k": "v1"})
    await eventually(lambda: _get(sandbox, "secret", "changing"))
    await _seal_and_apply(sandbox, "changing", {"k": "v2"})

    async def updated() -> dict[str, Any] | None:
        secret = await _get(sandbox, "secret", "changing")
        return secret if secret and _plain(secret) == {"k": "v2"} else None

    await eventually(updated)
    obj = await _get(sandbox, "sealedsecret", "changing")
    assert obj is not None
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2


async def test_seed_json_matches_the_clusters(tmp_path: Path) -> None:
    spec = SeedSpec(namespaces=3, sealed_secrets=12, keys=3, seed=11, key_bits=2048,
                    shared_key=True, malformed=2)
    async with start_sandbox(tmp_path, clusters=2, seed=spec) as sandbox:
        seed_text = sandbox.seed_file.read_text()
        record = json.loads(seed_text)
        assert record == sandbox.seed_record
        shared = {c["sealing_key"] for c in record["clusters"].values()}
        assert len(shared) == 1  # --shared-key: one identical sealing key everywhere
        settings = load_settings(sandbox.config)
        assert [c.name for c in settings.clusters] == ["sandbox-1", "sandbox-2"]
        assert list(settings.fleet.master_keys) == sorted(shared)
        for name in ("kek", "read-token", "admin-token", "kubeconfig"):
            assert (sandbox.state_dir / name).stat().st_mode & 0o777 == 0o600
        for cluster_name, cluster in record["clusters"].items():
            harness = SandboxHarness(sandbox, cluster_name)
            key_secrets = await harness.key_secrets()
            cluster_keys = keyfiles.keys_from_bytes(json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": key_secrets}).encode(),
                source=cluster_name)
            assert sorted(k.fingerprint for k in cluster_keys) == \
                sorted(k["fingerprint"] for k in cluster["keys"])
            # Backdated as --keys R promises: NotBefore 65, 35 and 5 days ago, read from
            # the certificates in the key Secrets themselves (the newest seals).
            now = dt.datetime.now(dt.UTC)
            ages = sorted(round((now - k.not_before) / dt.timedelta(days=1))
                          for k in cluster_keys)
            assert ages == [5, 35, 65]
            assert keys_domain.most_recent_key(cluster_keys).fingerprint == cluster["sealing_key"]
            _, pem, _ = await harness.proxy("GET", "/v1/cert.pem")
            assert keys_domain.load_certificate(pem).fingerprint == cluster["sealing_key"]
            namespaces = await harness.kubectl("get", "namespaces", "-o", "name")
            assert {f"namespace/{n}" for n in namespace_names(spec.namespaces)} <= \
                set(namespaces.stdout.split())
            listed = await harness.kubectl_json("get", "sealedsecrets", "-A")
            in_cluster = {(o["metadata"]["namespace"], o["metadata"]["name"]): o
                          for o in listed["items"]}
            seeded = [e for e in record["sealed_secrets"] if e["cluster"] == cluster_name]
            assert set(in_cluster) == {(e["namespace"], e["name"]) for e in seeded}
            assert len(seeded) == spec.sealed_secrets + spec.malformed
            not_befores = sorted(dt.datetime.fromisoformat(k["not_before"])
                                 for k in cluster["keys"])
            for entry in seeded:
                obj = in_cluster[(entry["namespace"], entry["name"])]
                # Created while the key that sealed its first item was the newest one.
                created = dt.datetime.fromisoformat(obj["metadata"]["creationTimestamp"])
                first = next((i["key"] for i in entry["items"] if i["key"]),
                             cluster["sealing_key"])
                since = dt.datetime.fromisoformat(
                    next(k["not_before"] for k in cluster["keys"] if k["fingerprint"] == first))
                until = min((n for n in not_befores if n > since), default=now)
                assert since <= created <= until
                assert scope_from_annotations(obj["metadata"].get("annotations")).cli_name \
                    == entry["scope"]
                label = identity_of(obj).label
                for item in entry["items"]:
                    found = attribution.attribute_item(obj["spec"]["encryptedData"][item["name"]],
                                                       label, cluster_keys)
                    assert found.fingerprint == item["key"]
                if entry["broken"]:
                    continue
                secret = await harness.kubectl_json("get", "secret", "-n", entry["namespace"],
                                                    entry["name"])
                assert secret["metadata"]["creationTimestamp"] == \
                    obj["metadata"]["creationTimestamp"]
                for value in secret["data"].values():  # seed.json never holds plaintext
                    assert base64.b64decode(value).decode() not in seed_text
                assert {k: hashlib.sha256(base64.b64decode(v)).hexdigest()
                        for k, v in secret["data"].items()} == \
                    {i["name"]: i["sha256"] for i in entry["items"]}
            keys_used = {i["key"] for e in seeded for i in e["items"] if i["key"]}
            assert len(keys_used) > 1  # a mix of current and old keys
        # --shared-key shares the sealing key only: the older keys are each cluster's own.
        older = [{k["fingerprint"] for k in c["keys"] if not k["sealing"]}
                 for c in record["clusters"].values()]
        assert not older[0] & older[1]
        # Faults are per cluster, set over HTTP with the cluster's own kubeconfig token.
        async with SandboxHarness(sandbox, "sandbox-2").api_client() as api:
            response = await api.call_api(
                "/_sandbox/faults", "POST", body={"error_rate": 1.0, "error_code": 503},
                auth_settings=["BearerToken"], _preload_content=False)
            assert response.status == 200
            response.release()
        failing = await SandboxHarness(sandbox, "sandbox-2").kubectl("get", "namespaces")
        assert failing.returncode != 0
        assert "(ServiceUnavailable)" in failing.stderr
        healthy = await SandboxHarness(sandbox, "sandbox-1").kubectl("get", "namespaces")
        assert healthy.returncode == 0, healthy.stderr


async def test_seeding_is_deterministic(tmp_path: Path) -> None:
    async with start_sandbox(tmp_path / "a", seed=SMALL_SEED) as first:
        one = first.seed_record
    async with start_sandbox(tmp_path / "b", seed=SMALL_SEED) as second:
        two = second.seed_record
    assert one is not None
    assert two is not None

    def shape(record: dict[str, Any]) -> list[Any]:
        return [(e["namespace"], e["name"], e["scope"],
                 [(i["name"], i["sha256"]) for i in e["items"]])
                for e in record["sealed_secrets"]]

    assert shape(one) == shape(two)
    # The seed fixes the secrets, never the keys: those are fresh random RSA keys.
    assert {k["fingerprint"] for k in one["clusters"]["sandbox-1"]["keys"]}.isdisjoint(
        k["fingerprint"] for k in two["clusters"]["sandbox-1"]["keys"])
