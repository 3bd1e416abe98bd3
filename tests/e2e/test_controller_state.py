"""A crash-looping controller as the daemon reports it: the real service against the
sandbox, read over its API socket (report and /metrics).

The sandbox's controller crash-loops on an unparseable active key Secret; its Pod is
deleted, so the Deployment has no ready replica and the service proxy answers 503 "no
endpoints".  The probe must report the cause (no ready replicas), structured, and not
the 503 that follows from it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from polling import eventually
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.systemd import Notifier
from sealfleet.app.config import load_settings
from sealfleet.app.service import Service
from sealfleet.sandbox import Sandbox, SeedSpec

SPEC = SeedSpec(namespaces=1, sealed_secrets=2, keys=1, seed=3, key_bits=2048)
BROKEN = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
          "metadata": {"name": "broken-key", "namespace": "kube-system",
                       "labels": {"sealedsecrets.bitnami.com/sealed-secrets-key": "active"}},
          "data": {"tls.key": "bm90IGEga2V5", "tls.crt": "bm90IGEgY2VydA=="}}


async def get(socket_path: Path, path: str) -> tuple[int, str]:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    async with aiohttp.ClientSession(connector=connector) as http, \
            http.get("http://sealfleet" + path) as response:
        return response.status, await response.text()


def metric(text: str, name: str, cluster: str | None = None) -> float | None:
    """A sample's value: the cluster's, or the one of a metric without labels."""
    prefix = f'{name}{{cluster="{cluster}"}} ' if cluster is not None else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_a_crash_looping_controller_is_reported_by_its_cause(tmp_path: Path) -> None:
    async with Sandbox(tmp_path, clusters=2, seed=SPEC, seed_processes=0,
                       crash_backoff=(0.1, 0.5), startup_delay=0.1) as sandbox:
        settings = load_settings(sandbox.config)
        broken = next(c for c in settings.clusters if c.name == "sandbox-1")
        async with KubeClient.connect(str(broken.kubeconfig), broken.context,
                                      request_timeout=5) as client:
            await client.request("POST", "/api/v1/namespaces/kube-system/secrets",
                                 body=BROKEN)
            await client.delete("/api/v1/namespaces/kube-system/pods?labelSelector="
                                "name%3Dsealed-secrets-controller")

        async def crash_looping() -> bool:
            pods, _ = sandbox.cluster("sandbox-1").store.list("pods", "kube-system")
            statuses = [s for p in pods
                        for s in (p.get("status") or {}).get("containerStatuses") or []]
            return any(((s.get("state") or {}).get("waiting") or {}).get("reason")
                       == "CrashLoopBackOff" for s in statuses)

        await eventually(crash_looping)
        service = Service(settings, notifier=Notifier({}))
        task = asyncio.create_task(service.run())
        try:
            await asyncio.wait_for(service.ready.wait(), 60)
            socket_path = settings.api.socket
            assert socket_path is not None

            async def reported() -> dict[str, Any] | None:
                status, _ = await get(socket_path, "/api/v1/staleness")
                assert status == 200
                assert service.view is not None
                report = (await service.view.rebuild()).report
                return report if all(c["controller_state"] for c in report["clusters"]) \
                    else None

            report = await eventually(reported)
            clusters = {c["name"]: c for c in report["clusters"]}
            assert clusters["sandbox-1"]["controller_state"] == "no_ready_replicas"
            assert "has no ready replicas" in clusters["sandbox-1"]["controller_error"]
            assert clusters["sandbox-2"]["controller_state"] == "serving"
            assert clusters["sandbox-2"]["controller_error"] is None
            status, text = await get(socket_path, "/metrics")
            assert status == 200
            assert metric(text, "sealfleet_controller_crashlooping", "sandbox-1") == 1
            assert metric(text, "sealfleet_controller_crashlooping", "sandbox-2") == 0
            assert metric(text, "sealfleet_controller_error", "sandbox-1") == 1
            # A fresh daemon (no attribution cache) decrypts each item at least once.
            decrypts = metric(text, "sealfleet_rsa_decrypts_total")
            assert decrypts is not None
            assert decrypts >= report["fleet"]["sealed_secrets"]["total"] > 0
            # The RSA workers' time in those jobs: CPU, and at least as much wall time.
            cpu = metric(text, "sealfleet_rsa_cpu_seconds_total")
            busy = metric(text, "sealfleet_rsa_busy_seconds_total")
            assert cpu is not None
            assert busy is not None
            assert busy >= cpu > 0
            assert metric(text, "sealfleet_rsa_worker_deaths_total") == 0
        finally:
            service.request_stop()
            await asyncio.wait_for(task, 30)
