"""The emulated controller against the real tools: seal with its certificate, unseal in the
cluster; re-encrypt through ``/v1/rotate``, unseal offline with the backed-up keys."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from controller_harness import SandboxHarness

from polling import eventually
from sealfleet.domain import attribution, key_secrets, keyfiles
from sealfleet.domain import keys as keys_domain
from sealfleet.domain.scopes import Scope
from sealfleet.domain.sealed_secrets import identity_of, seal_secret
from sealfleet.sandbox.controller.http_api import GcraLimiter

SECRET = """\
apiVersion: v1
kind: Secret
metadata:
  name: db-credentials
  namespace: {namespace}
  labels: {{app: shop}}
type: Opaque
stringData:
  password: s3cr3t-value
  username: shop
"""


async def _condition(harness: SandboxHarness, namespace: str, name: str) -> dict[str, Any]:
    result = await harness.kubectl("get", "sealedsecret", "-n", namespace, name, "-o", "json")
    if result.returncode != 0:
        return {}
    status = json.loads(result.stdout).get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if c.get("type") == "Synced"]
    return {**conditions[0], "observedGeneration": status.get("observedGeneration")} \
        if conditions else {}


async def test_certificate_through_the_proxy_is_the_newest_key(sandbox: SandboxHarness) -> None:
    raw = await sandbox.kubectl("get", "--raw", "/api/v1/namespaces/kube-system/services/"
                                "http:sealed-secrets-controller:/proxy/v1/cert.pem")
    assert raw.returncode == 0, raw.stderr
    status, body, headers = await sandbox.proxy("GET", "/v1/cert.pem")
    assert status == 200
    assert headers["Content-Type"] == "application/x-pem-file"
    assert body.decode() == raw.stdout
    sealing = sandbox.seed["clusters"]["sandbox-1"]["sealing_key"]
    assert keys_domain.load_certificate(body).fingerprint == sealing
    health = await sandbox.proxy("GET", "/healthz")
    assert health[:2] == (200, b"ok\n")


async def test_installed_as_the_static_manifest(sandbox: SandboxHarness) -> None:
    service = await sandbox.kubectl_json("get", "service", "-n", "kube-system",
                                         "sealed-secrets-controller")
    # One unnamed port, as in controller.yaml: kubeseal proxies to "http:NAME:" (no port).
    assert service["spec"]["ports"] == [{"port": 8080, "targetPort": 8080, "protocol": "TCP"}]
    deployment = await sandbox.kubectl_json("get", "deployment", "-n", "kube-system",
                                            "sealed-secrets-controller")
    assert deployment["status"]["readyReplicas"] == 1
    table = await sandbox.kubectl("get", "pods", "-n", "kube-system",
                                  "-l", "name=sealed-secrets-controller", "--no-headers")
    assert table.returncode == 0, table.stderr
    (row,) = table.stdout.splitlines()
    assert row.split()[0].startswith("sealed-secrets-controller-")
    assert row.split()[1:4] == ["1/1", "Running", "0"]
    wide = await sandbox.kubectl("get", "pods", "-n", "kube-system", "-o", "wide")
    assert wide.stdout.split("\n", 1)[0].split() == [
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE",
        "READINESS", "GATES"]
    assert wide.stdout.splitlines()[1].split()[5:] == ["10.244.0.10", "sandbox-node",
                                                       "<none>", "<none>"]


async def test_sealfleet_seal_with_fetched_cert_unseals_in_cluster(
        sandbox: SandboxHarness, tmp_path: Path) -> None:
    cert = await sandbox.kubectl("get", "--raw", "/api/v1/namespaces/kube-system/services/"
                                 "http:sealed-secrets-controller:/proxy/v1/cert.pem")
    cert_file = tmp_path / "cert.pem"
    cert_file.write_text(cert.stdout)
    sealed = await sandbox.sealfleet("seal", "--cert", str(cert_file), "-o", "yaml",
                                     stdin=SECRET.format(namespace="default"))
    assert sealed.returncode == 0, sealed.stderr
    assert "s3cr3t-value" not in sealed.stdout
    applied = await sandbox.kubectl("apply", "-f", "-", stdin=sealed.stdout)
    assert applied.returncode == 0, applied.stderr

    async def secret() -> dict[str, Any] | None:
        result = await sandbox.kubectl("get", "secret", "-n", "default", "db-credentials",
                                       "-o", "json")
        return json.loads(result.stdout) if result.returncode == 0 else None

    produced = await eventually(secret)
    assert base64.b64decode(produced["data"]["password"]) == b"s3cr3t-value"
    assert produced["metadata"]["labels"] == {"app": "shop"}
    (owner,) = produced["metadata"]["ownerReferences"]
    assert owner["kind"] == "SealedSecret"
    assert owner["controller"] is True
    assert "blockOwnerDeletion" not in owner
    condition = await eventually(lambda: _condition(sandbox, "default", "db-credentials"))
    assert condition["status"] == "True"
    assert condition["observedGeneration"] == 1
    events = await sandbox.kubectl_json("get", "events", "-n", "default")
    unsealed = [e for e in events["items"] if e["involvedObject"]["name"] == "db-credentials"]
    assert [(e["type"], e["reason"], e["message"], e["source"]["component"])
            for e in unsealed] == [("Normal", "Unsealed", "SealedSecret unsealed successfully",
                                    "sealed-secrets")]


async def test_rotate_reseals_with_newest_key_and_recovery_unseal_opens_it(
        sandbox: SandboxHarness, tmp_path: Path) -> None:
    cluster = sandbox.seed["clusters"]["sandbox-1"]
    newest = cluster["sealing_key"]
    # A seeded SealedSecret whose items were sealed with the older key only.
    entry = next(e for e in sandbox.seed["sealed_secrets"]
                 if all(i["key"] != newest for i in e["items"]) and e["scope"] != "strict")
    original = await sandbox.kubectl_json("get", "sealedsecret", "-n", entry["namespace"],
                                          entry["name"])
    status, body, _ = await sandbox.proxy("POST", "/v1/rotate", original)
    assert status == 200, body
    rotated = json.loads(body)
    assert "apiVersion" not in rotated  # as the Go handler answers
    assert "kind" not in rotated
    assert body == json.dumps(rotated, separators=(",", ":")).encode()  # compact
    assert set(rotated["metadata"]) <= {"name", "namespace", "annotations", "creationTimestamp"}
    assert rotated["metadata"].get("annotations") == original["metadata"]["annotations"]
    # The template gets the top-level labels too (v0.36 behaviour).
    assert rotated["spec"]["template"]["metadata"]["labels"] == original["metadata"]["labels"]

    backup = await sandbox.kubectl("get", "secret", "-n", "kube-system", "-l",
                                   "sealedsecrets.bitnami.com/sealed-secrets-key", "-o", "yaml")
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(backup.stdout)
    cluster_keys = keyfiles.keys_from_bytes(backup.stdout.encode(), source="backup")
    rotated_file = tmp_path / "rotated.json"
    rotated_file.write_text(json.dumps({"apiVersion": "bitnami.com/v1alpha1",
                                        "kind": "SealedSecret", **rotated}))
    unsealed = await sandbox.sealfleet("unseal", "--recovery-private-key", str(keys_file),
                                       "-f", str(rotated_file))
    assert unsealed.returncode == 0, unsealed.stderr
    secret = json.loads(unsealed.stdout)
    digests = {name: hashlib.sha256(base64.b64decode(value)).hexdigest()
               for name, value in secret["data"].items()}
    assert digests == {i["name"]: i["sha256"] for i in entry["items"]}
    label = identity_of(rotated).label
    for value in rotated["spec"]["encryptedData"].values():
        found = attribution.attribute_item(value, label, cluster_keys)
        assert found.fingerprint == newest


async def test_verify_answers_200_409_429_and_500(sandbox: SandboxHarness) -> None:
    entry = sandbox.seed["sealed_secrets"][0]
    good = await sandbox.kubectl_json("get", "sealedsecret", "-n", entry["namespace"],
                                      entry["name"])
    status, _, _ = await sandbox.proxy("POST", "/v1/verify", good)
    assert status == 200
    renamed = json.loads(json.dumps(good))
    renamed["metadata"]["name"] = "another-name"  # strict scope breaks, others may not
    renamed["metadata"]["annotations"] = {}
    status, _, _ = await sandbox.proxy("POST", "/v1/verify", renamed)
    assert status == 409
    status, _, _ = await sandbox.proxy("POST", "/v1/verify", {"kind": "Secret"})
    assert status == 500
    burst = await sandbox.proxy_many("POST", "/v1/verify", good, count=12)
    statuses = {status for status, _, _ in burst}
    # 2/s with burst 2 (GCRA lets 3 through at once): twelve at once are throttled.
    assert statuses <= {200, 429}
    assert 429 in statuses
    throttled = next(headers for status, _, headers in burst if status == 429)
    assert int(throttled["Retry-After"]) >= 1


async def test_metrics_use_the_real_names(sandbox: SandboxHarness) -> None:
    await sandbox.proxy("GET", "/v1/cert.pem")
    result = await sandbox.kubectl("get", "--raw", "/api/v1/namespaces/kube-system/services/"
                                   "http:sealed-secrets-controller-metrics:/proxy/metrics")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    entry = sandbox.seed["sealed_secrets"][0]
    assert 'sealed_secrets_controller_build_info{revision=' in text
    assert "sealed_secrets_controller_unseal_requests_total" in text
    assert ('sealed_secrets_controller_http_requests_total{code="200",method="get",'
            'path="/v1/cert.pem"} 1.0') in text
    assert "sealed_secrets_controller_http_request_duration_seconds_bucket" in text
    assert (f'sealed_secrets_controller_condition_info{{condition="Synced",name="{entry["name"]}",'
            f'namespace="{entry["namespace"]}",ss_app_kubernetes_io_instance=""}} 1.0'
            ) in text  # the seed sets no app.kubernetes.io/instance label: empty, as real
    assert "_created" not in text


def test_gcra_limits_like_throttled() -> None:
    limiter = GcraLimiter(rate=2.0, burst=2)
    assert [limiter.allow("/v1/verify\0a", 0.0)[0] for _ in range(4)] == \
        [True, True, True, False]
    assert limiter.allow("/v1/verify\0b", 0.0)[0]  # keyed per path + X-Forwarded-For
    assert not limiter.allow("/v1/verify\0a", 0.4)[0]
    assert limiter.allow("/v1/verify\0a", 0.5)[0]  # one emission interval later
    assert not limiter.allow("/v1/verify\0a", 0.5)[0]


async def test_every_scope_unseals_with_an_older_key(sandbox: SandboxHarness) -> None:
    """Not only the sealing key: the controller tries every key it loaded, per scope."""
    older = next(k for k in sandbox.seed["clusters"]["sandbox-1"]["keys"] if not k["sealing"])
    key_secret = await sandbox.kubectl_json("get", "secret", "-n", "kube-system", older["secret"])
    public_key = key_secrets.load_key_secret(key_secret).public_key
    for scope in Scope:
        name = f"old-key-{scope.cli_name}"
        sealed = seal_secret({"metadata": {"name": name, "namespace": "default"},
                              "stringData": {"value": f"plain-{scope.cli_name}"}},
                             public_key, scope=scope)
        applied = await sandbox.kubectl("apply", "-f", "-", stdin=json.dumps(sealed))
        assert applied.returncode == 0, applied.stderr
    for scope in Scope:
        name = f"old-key-{scope.cli_name}"
        condition = await eventually(lambda n=name: _condition(sandbox, "default", n))
        assert condition["status"] == "True", condition
        secret = await sandbox.kubectl_json("get", "secret", "-n", "default", name)
        assert base64.b64decode(secret["data"]["value"]) == f"plain-{scope.cli_name}".encode()
