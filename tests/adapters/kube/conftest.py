"""One emulated apiserver over real HTTPS per test, reached through our own KubeClient."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sealfleet.adapters.kube.client import KubeClient
from sealfleet.sandbox.apiserver import ApiServer
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.objects import ObjectStore
from sealfleet.sandbox.tls import CertificateAuthority

SEALED = "sealedsecrets.bitnami.com"


@dataclasses.dataclass
class Cluster:
    server: ApiServer
    store: ObjectStore
    kubeconfig: Path

    def client(self, *, restricted: bool = False, request_timeout: float = 5.0) -> Any:
        return KubeClient.connect(str(self.kubeconfig), "restricted" if restricted else "admin",
                                  request_timeout=request_timeout)

    def add_sealed(self, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
        body = {"apiVersion": "bitnami.com/v1alpha1", "kind": "SealedSecret",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"encryptedData": {"k": "AAAA"}, **spec}}
        return self.store.create(SEALED, namespace, body)


@pytest.fixture(scope="session")
def kube_ca() -> CertificateAuthority:
    return CertificateAuthority.create()


@pytest.fixture
async def cluster(kube_ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[Cluster]:
    store = ObjectStore(history=100)
    for namespace in ("apps", "web"):
        store.create("namespaces", None, {"metadata": {"name": namespace}})
    async with ApiServer(store, kube_ca.issue_server(), bookmark_interval=0.2) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", [
            KubeconfigContext("admin", server.url, server.ca_pem, server.tokens.admin),
            KubeconfigContext("restricted", server.url, server.ca_pem, server.tokens.restricted),
        ], current="admin")
        yield Cluster(server, store, kubeconfig)
