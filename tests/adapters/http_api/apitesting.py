"""A populated temp-file store and the real API served on a unix socket and TCP."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sealfleet.adapters.http_api import ApiDeps, ApiServer, InventoryView, build_app, status_page
from sealfleet.adapters.store import KeyEncryptionKey, Store, generate_kek_file
from sealfleet.adapters.store.records import (
    ItemFact,
    KeyHolding,
    KeyMaterial,
    KeyRecord,
    SealedSecretRecord,
)
from sealfleet.app.attributing import Attributor
from sealfleet.app.checking import Checker
from sealfleet.app.config import ClusterSettings
from sealfleet.app.keystore import Keystore
from sealfleet.domain.attribution import RsaWork
from sealfleet.domain.keys import SealingKey
from sealfleet.domain.scopes import Scope
from sealfleet.domain.staleness import SecretState, StalenessPolicy

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)
READ_TOKEN = "read-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
POLICY = StalenessPolicy(key_renew_period=30 * DAY, cert_expiry_warning=30 * DAY)


@dataclass
class Fleet:
    """The truth the store was populated with."""

    old: str
    new: str
    extra: str
    states: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class Api:
    store: Store
    view: InventoryView
    server: ApiServer
    socket_path: Path
    base_url: str
    fleet: Fleet
    counter: list[int]
    ready: dict[str, bool]

    def bump(self) -> None:
        self.counter[0] += 1

    async def get(self, path: str, *, token: str | None = None, via: str = "unix",
                  method: str = "GET", authorization: str | None = None,
                  ) -> tuple[int, Any, aiohttp.ClientResponse]:
        if via == "unix":
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=str(self.socket_path))
            url = "http://sealfleet" + path
        else:
            connector = aiohttp.TCPConnector()
            url = self.base_url + path
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if authorization is not None:
            headers = {"Authorization": authorization}
        async with aiohttp.ClientSession(connector=connector) as http, \
                http.request(method, url, headers=headers) as response:
            body = await response.read()
        content_type = response.headers.get("Content-Type", "")
        parsed: Any = body
        if content_type.startswith("application/json"):
            parsed = json.loads(body)
        return response.status, parsed, response

    async def raw(self, request: bytes, *, via: str = "tcp") -> RawResponse:
        """Send *request* bytes as they are (no client library to tidy them up) and read
        the answer until the server closes the connection."""
        if via == "unix":
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        else:
            port = self.server.tcp_port
            assert port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        return RawResponse.parse(data)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @classmethod
    def parse(cls, data: bytes) -> RawResponse:
        """A whole HTTP/1.1 answer as read until the server closed the connection."""
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return cls(int(status_line.split()[1]), headers, body)

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json"), \
            (self.headers, self.body[:200])
        return json.loads(self.body)


def get_request(target: str, *headers: bytes) -> bytes:
    """A raw HTTP/1.1 GET of *target* with extra header lines, closing the connection."""
    lines = [f"GET {target} HTTP/1.1".encode(), b"Host: sealfleet", b"Connection: close",
             *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def secret(cluster: str, ns: str, name: str, state: SecretState,
           fingerprints: list[str | None]) -> SealedSecretRecord:
    return SealedSecretRecord(
        cluster=cluster, namespace=ns, name=name, uid=f"uid-{cluster}-{ns}-{name}",
        resource_version="1", generation=1, scope=Scope.STRICT,
        ciphertext_fingerprint=f"ct-{cluster}-{ns}-{name}",
        items=tuple(ItemFact(item=f"k{i}", item_hash=f"h-{cluster}-{ns}-{name}-{i}",
                             fingerprint=fp) for i, fp in enumerate(fingerprints)),
        state=state, synced=state is not SecretState.FAILING,
        synced_message=None, observed_at=NOW)


async def populate(store: Store, keys: list[SealingKey]) -> Fleet:
    old, new, extra = (k.fingerprint for k in keys)
    fleet = Fleet(old=old, new=new, extra=extra)
    await store.keys.upsert_keys([
        KeyRecord(old, NOW - 90 * DAY, NOW + 3000 * DAY, source="cluster",
                  certificate_pem=keys[0].certificate.pem.decode()),
        KeyRecord(new, NOW - 2 * DAY, NOW + 3000 * DAY, source="cluster",
                  certificate_pem=keys[1].certificate.pem.decode()),
        KeyRecord(extra, NOW - 5 * DAY, NOW + 3000 * DAY, source="generated"),
    ])
    await store.keys.store_key_material([KeyMaterial(keys[2], source="generated")])
    for name in ("alpha", "beta"):
        await store.inventory.upsert_cluster(name, server=f"https://{name}.example:6443")
    await store.inventory.upsert_cluster("gamma", server="https://gamma.example:6443")
    await store.inventory.record_cluster_status("alpha", reachable=True, last_scan_at=NOW,
                                                scan_duration_ms=1500, sealing_key=new,
                                                sealing_key_source="cert.pem")
    await store.inventory.record_cluster_status("beta", reachable=True, last_scan_at=NOW,
                                                scan_duration_ms=800, sealing_key=old,
                                                sealing_key_source="cert.pem")
    await store.inventory.record_cluster_status("gamma", reachable=False,
                                                last_error="connect <b>refused</b>")

    def holding(fp: str, name: str) -> KeyHolding:
        return KeyHolding(fingerprint=fp, secret_name=name, label_value="active",
                          resource_version="1", creation_timestamp=NOW, observed_at=NOW)

    await store.inventory.replace_cluster_keys("alpha", [holding(old, "k-old"),
                                                         holding(new, "k-new")])
    await store.inventory.replace_cluster_keys("beta", [holding(old, "k-old")])
    records = [
        secret("alpha", "apps", "db", SecretState.CURRENT, [new, new]),
        secret("alpha", "apps", "web", SecretState.STALE, [old]),
        secret("alpha", "ops", "x", SecretState.UNKNOWN, [None]),
        secret("alpha", "ops", "y", SecretState.CURRENT, [new]),
        secret("beta", "apps", "db", SecretState.CURRENT, [old]),
        secret("beta", "apps", "bad", SecretState.FAILING, [old]),
    ]
    await store.inventory.upsert_sealed_secrets(records)
    for r in records:
        fleet.states.setdefault(r.cluster, {}).setdefault(str(r.state), 0)
        fleet.states[r.cluster][str(r.state)] += 1
    return fleet


@pytest.fixture
async def api(tmp_path: Path, rsa2048_keys: list[SealingKey]) -> AsyncIterator[Api]:
    kek = KeyEncryptionKey.from_file(generate_kek_file(tmp_path / "kek"))
    async with Store.open(tmp_path / "inventory.db", kek=kek) as store:
        fleet = await populate(store, rsa2048_keys)
        counter = [0]
        ready = {"migrations": True, "first_pass": True}
        await store.keys.set_fleet_master([fleet.old, fleet.new])
        view = InventoryView(store, policy=POLICY,
                             changes=lambda: counter[0], render_status_page=status_page.render,
                             max_age=3600, clock=lambda: NOW)
        # POST /api/v1/check runs on the daemon's own checker, with the stored keys.
        keystore = Keystore(store)
        await keystore.refresh()
        executor = ThreadPoolExecutor(2)
        checker = Checker(store, keystore, Attributor(store, executor, keystore),
                          lambda: [ClusterSettings(name=n, kubeconfig=tmp_path / "kubeconfig")
                                   for n in ("alpha", "beta", "gamma")])
        deps = ApiDeps(view=view, store=store, readiness=lambda: ready,
                       read_token=READ_TOKEN.encode(), admin_token=ADMIN_TOKEN.encode(),
                       attribution_backlog=lambda: 7, rsa_work=lambda: RsaWork(11, 0.25, 0.75, 2),
                       check=checker)
        socket_path = tmp_path / "api.sock"
        async with ApiServer(build_app(deps), socket_path=socket_path,
                             listen=("127.0.0.1", 0)) as server:
            try:
                yield Api(store, view, server, socket_path,
                          f"http://127.0.0.1:{server.tcp_port}", fleet, counter, ready)
            finally:
                executor.shutdown(wait=True)
