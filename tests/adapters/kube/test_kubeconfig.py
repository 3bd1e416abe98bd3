"""Kubeconfig files through KubeClient.connect against emulated apiservers over HTTPS.

Each file is parsed once per version whatever the number of contexts in it, TLS contexts
are shared by content, nothing is left in the temp directory, and a bad file or context
gives one line naming both (and never a token).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.kube.kubeconfig import KubeconfigCache, KubeconfigError
from sealfleet.errors import PermanentError
from sealfleet.sandbox.apiserver import ApiServer
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.objects import ObjectStore
from sealfleet.sandbox.tls import CertificateAuthority

SECRETS = "/api/v1/namespaces/kube-system/secrets"  # admin may list, restricted may not


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create("other-sandbox-ca")


@pytest.fixture
async def servers(kube_ca: CertificateAuthority,
                  other_ca: CertificateAuthority) -> AsyncIterator[list[ApiServer]]:
    """Three apiservers: two under one CA, the third under another."""
    async with contextlib.AsyncExitStack() as stack:
        started = [await stack.enter_async_context(ApiServer(ObjectStore(), ca.issue_server()))
                   for ca in (kube_ca, kube_ca, other_ca)]
        yield started


def fleet_contexts(servers: Sequence[ApiServer], count: int) -> list[KubeconfigContext]:
    return [KubeconfigContext(f"ctx-{i:03d}", servers[i % len(servers)].url,
                              servers[i % len(servers)].ca_pem,
                              servers[i % len(servers)].tokens.admin)
            for i in range(count)]


def write_raw(path: Path, contexts: Sequence[dict[str, Any]]) -> Path:
    """A kubeconfig from (name, cluster, user) entries, for fields the sandbox writer lacks."""
    doc = {"apiVersion": "v1", "kind": "Config",
           "clusters": [{"name": c["name"], "cluster": c["cluster"]} for c in contexts],
           "users": [{"name": c["name"], "user": c["user"]} for c in contexts],
           "contexts": [{"name": c["name"], "context": {"cluster": c["name"], "user": c["name"]}}
                        for c in contexts],
           "current-context": contexts[0]["name"]}
    path.write_text(yaml.safe_dump(doc))
    return path


def chained(exc: BaseException | None) -> list[BaseException]:
    """The exception and what a traceback would show beside it (cause, context)."""
    seen: list[BaseException] = []
    while exc is not None:
        seen.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return seen


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def connect_and_list(path: Path, context: str, cache: KubeconfigCache) -> int:
    async with KubeClient.connect(str(path), context, cache=cache) as client:
        document = await client.get_json("/api/v1/namespaces")
    return len(document["items"])


async def test_fifty_contexts_in_one_file_are_parsed_once_and_again_on_reconnect_not_at_all(
        servers: list[ApiServer], tmp_path: Path) -> None:
    """Fifty connections made at once wait for one parse rather than each parsing."""
    path = write_kubeconfig(tmp_path / "fleet", fleet_contexts(servers, 50))
    cache = KubeconfigCache()
    names = [f"ctx-{i:03d}" for i in range(50)]
    await asyncio.gather(*(connect_and_list(path, name, cache) for name in names))
    assert cache.parses == 1
    await asyncio.gather(*(connect_and_list(path, name, cache) for name in names))
    assert cache.parses == 1


async def test_one_tls_context_per_distinct_ca_shared_by_every_cluster_using_it(
        servers: list[ApiServer], tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "fleet", fleet_contexts(servers, 50))
    cache = KubeconfigCache()
    for index in range(50):  # sequential: each connection closed before the next opens
        await connect_and_list(path, f"ctx-{index:03d}", cache)
    assert cache.tls_contexts_built == 2  # the three servers have two CAs between them


async def test_fifty_clusters_watching_at_once_hold_two_tls_contexts_between_them(
        servers: list[ApiServer], tmp_path: Path) -> None:
    """A fleet's connections are open together for as long as it runs (its watches):
    the contexts are shared by them all, not built per open connection."""
    path = write_kubeconfig(tmp_path / "fleet", fleet_contexts(servers, 50))
    cache = KubeconfigCache()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            KubeClient.connect(str(path), f"ctx-{index:03d}", cache=cache))
            for index in range(50)]
        watches = [await stack.enter_async_context(contextlib.aclosing(client.watch(
            "/api/v1/namespaces", resource_version="0", timeout_seconds=5)))
            for client in clients]
        events = [await anext(watch) for watch in watches]  # every watch is streaming
        assert all(event.type == "ADDED" for event in events)
        assert cache.tls_contexts_built == 2  # the three servers have two CAs between them
        assert cache.parses == 1


async def test_a_ca_is_not_shared_with_a_cluster_it_did_not_sign(
        servers: list[ApiServer], tmp_path: Path) -> None:
    """The server under the other CA, with the first CA's data: verification fails."""
    path = write_kubeconfig(tmp_path / "wrong-ca", [
        KubeconfigContext("right", servers[0].url, servers[0].ca_pem, servers[0].tokens.admin),
        KubeconfigContext("wrong", servers[2].url, servers[0].ca_pem, servers[2].tokens.admin),
    ])
    cache = KubeconfigCache()
    await connect_and_list(path, "right", cache)
    with pytest.raises(PermanentError, match="TLS verification failed"):
        await connect_and_list(path, "wrong", cache)


async def test_client_certificates_share_a_context_only_when_identical(
        servers: list[ApiServer], tmp_path: Path, kube_ca: CertificateAuthority) -> None:
    first, second = kube_ca.issue_server("client-a"), kube_ca.issue_server("client-b")
    server = servers[0]
    cluster = {"server": server.url, "certificate-authority-data": b64(server.ca_pem)}

    def user(cert: Any) -> dict[str, str]:
        return {"token": server.tokens.admin, "client-certificate-data": b64(cert.cert_pem),
                "client-key-data": b64(cert.key_pem)}

    path = write_raw(tmp_path / "certs", [
        {"name": "a1", "cluster": cluster, "user": user(first)},
        {"name": "a2", "cluster": cluster, "user": user(first)},
        {"name": "b", "cluster": cluster, "user": user(second)},
        {"name": "none", "cluster": cluster, "user": {"token": server.tokens.admin}},
    ])
    cache = KubeconfigCache()
    for name in ("a1", "a2", "b", "none"):
        await connect_and_list(path, name, cache)
    assert cache.tls_contexts_built == 3


async def test_no_temp_file_is_left_behind_after_many_connections(
        servers: list[ApiServer], tmp_path: Path, kube_ca: CertificateAuthority,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """CA and client-certificate data, rebuilt every round: the temp dir stays empty."""
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))  # tempfile's documented default
    server = servers[0]
    certs = [kube_ca.issue_server(f"client-{i}") for i in range(2)]
    path = write_raw(tmp_path / "certs", [
        {"name": f"c{i}",
         "cluster": {"server": server.url, "certificate-authority-data": b64(server.ca_pem)},
         "user": {"token": server.tokens.admin, "client-certificate-data": b64(cert.cert_pem),
                  "client-key-data": b64(cert.key_pem)}}
        for i, cert in enumerate(certs)])
    cache = KubeconfigCache()
    for round_ in range(10):
        cache.invalidate()  # drop the held contexts: every round builds them again
        for name in ("c0", "c1"):
            async with KubeClient.connect(str(path), name, cache=cache) as client:
                await client.get_json("/api/v1/namespaces")
        assert cache.parses == round_ + 1
    assert cache.tls_contexts_built >= 2
    assert list(temp_dir.iterdir()) == []


async def test_a_replaced_file_is_read_again_and_its_new_content_used(
        servers: list[ApiServer], tmp_path: Path) -> None:
    server = servers[0]
    path = write_kubeconfig(tmp_path / "kubeconfig", [
        KubeconfigContext("c", server.url, server.ca_pem, server.tokens.admin)])
    cache = KubeconfigCache()
    async with KubeClient.connect(str(path), "c", cache=cache) as client:
        await client.get_json(SECRETS)
    write_kubeconfig(path, [  # atomically replaced: a new inode
        KubeconfigContext("c", server.url, server.ca_pem, server.tokens.restricted)])
    async with KubeClient.connect(str(path), "c", cache=cache) as client:
        with pytest.raises(PermanentError, match="403"):
            await client.get_json(SECRETS)
    assert cache.parses == 2


async def test_a_file_rewritten_in_place_is_read_again(
        servers: list[ApiServer], tmp_path: Path) -> None:
    server = servers[0]
    path = write_kubeconfig(tmp_path / "kubeconfig", [
        KubeconfigContext("c", server.url, server.ca_pem, server.tokens.restricted)])
    cache = KubeconfigCache()
    async with KubeClient.connect(str(path), "c", cache=cache) as client:
        with pytest.raises(PermanentError, match="403"):
            await client.get_json(SECRETS)
    text = path.read_text().replace(server.tokens.restricted, server.tokens.admin)
    with path.open("r+") as f:  # same inode, new size
        f.write(text + "# edited\n")
    async with KubeClient.connect(str(path), "c", cache=cache) as client:
        await client.get_json(SECRETS)
    assert cache.parses == 2


async def test_invalidate_rereads_an_unchanged_file(
        servers: list[ApiServer], tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", fleet_contexts(servers, 3))
    cache = KubeconfigCache()
    await connect_and_list(path, "ctx-000", cache)
    cache.invalidate(str(path))
    await connect_and_list(path, "ctx-001", cache)
    cache.invalidate()
    await connect_and_list(path, "ctx-002", cache)
    assert cache.parses == 3


async def test_a_missing_file_is_one_line_naming_the_file_and_the_context(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    """Nothing reaches stderr or stdlib logging (the old path warned 'Config not found')."""
    caplog.set_level(logging.WARNING)
    path = tmp_path / "absent"
    with pytest.raises(KubeconfigError) as caught:
        async with KubeClient.connect(str(path), "prod-eu", cache=KubeconfigCache()):
            pass
    assert str(caught.value) == f"kubeconfig {path} context 'prod-eu': file not found"
    assert isinstance(caught.value, PermanentError)
    assert caplog.records == []
    assert capfd.readouterr() == ("", "")


async def test_a_missing_context_is_one_line_naming_the_file_and_the_context(
        servers: list[ApiServer], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    path = write_kubeconfig(tmp_path / "fleet", fleet_contexts(servers, 8))
    with pytest.raises(KubeconfigError) as caught:
        await connect_and_list(path, "prod-eu", KubeconfigCache())
    assert str(caught.value) == (
        f"kubeconfig {path} context 'prod-eu': no such context "
        "(it has 8: ctx-000, ctx-001, ctx-002, ctx-003, ctx-004, and 3 more)")
    assert caplog.records == []


async def test_no_context_and_no_current_context_says_so(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\ncontexts: []\n")
    with pytest.raises(KubeconfigError) as caught:
        await connect_and_list(path, None, KubeconfigCache())  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"kubeconfig {path}: no context given and no current-context set")


async def test_a_context_naming_a_missing_cluster_or_user_names_the_key(
        servers: list[ApiServer], tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", fleet_contexts(servers, 1))
    doc = yaml.safe_load(path.read_text())
    doc["contexts"].append({"name": "lost", "context": {"cluster": "gone", "user": "ctx-000"}})
    doc["contexts"].append({"name": "anon", "context": {"cluster": "ctx-000", "user": "nobody"}})
    path.write_text(yaml.safe_dump(doc))
    cache = KubeconfigCache()
    with pytest.raises(KubeconfigError) as caught:
        await connect_and_list(path, "lost", cache)
    assert str(caught.value) == (f"kubeconfig {path} context 'lost': "
                                 "contexts[name=lost].context.cluster: 'gone' is not in clusters")
    with pytest.raises(KubeconfigError, match=r"context.user: 'nobody' is not in users"):
        await connect_and_list(path, "anon", cache)


async def test_broken_yaml_names_the_line_and_never_quotes_the_token(tmp_path: Path) -> None:
    """A YAML error's own text quotes the document; ours gives a position, unchained."""
    token = "s3cr3t-t0ken-value"
    path = tmp_path / "kubeconfig"
    path.write_text(f"apiVersion: v1\nusers:\n- name: u\n  user: {{token: {token}\n")
    cache = KubeconfigCache()
    for _ in range(3):
        with pytest.raises(KubeconfigError) as caught:
            await connect_and_list(path, "u", cache)
        message = str(caught.value)
        assert message.startswith(f"kubeconfig {path}: not valid YAML at line ")
        assert token not in message
        assert "\n" not in message
        # The pure-Python parser's error text quotes the line, token included: not chained.
        assert not any(isinstance(e, yaml.YAMLError) or token in str(e)
                       for e in chained(caught.value))
    assert cache.parses == 1  # a broken file, too, is parsed once per version


async def test_a_string_insecure_skip_tls_verify_is_refused(
        servers: list[ApiServer], tmp_path: Path) -> None:
    """``"false"`` is truthy: taken as it is, it would turn verification off."""
    server = servers[0]
    path = write_raw(tmp_path / "kubeconfig", [
        {"name": "c", "cluster": {"server": server.url, "insecure-skip-tls-verify": "false"},
         "user": {"token": server.tokens.admin}}])
    with pytest.raises(KubeconfigError) as caught:
        await connect_and_list(path, "c", KubeconfigCache())
    assert str(caught.value) == (f"kubeconfig {path} context 'c': clusters[name=c].cluster."
                                 "insecure-skip-tls-verify: expected true or false")


async def test_insecure_skip_tls_verify_connects_without_a_ca(
        servers: list[ApiServer], tmp_path: Path) -> None:
    server = servers[0]
    path = write_raw(tmp_path / "kubeconfig", [
        {"name": "c", "cluster": {"server": server.url, "insecure-skip-tls-verify": True},
         "user": {"token": server.tokens.admin}}])
    assert await connect_and_list(path, "c", KubeconfigCache()) >= 0


async def test_relative_ca_and_token_files_are_read_beside_the_kubeconfig(
        servers: list[ApiServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = servers[2]
    (tmp_path / "ca.crt").write_bytes(server.ca_pem)
    (tmp_path / "token").write_text(server.tokens.admin)
    path = write_raw(tmp_path / "kubeconfig", [
        {"name": "c", "cluster": {"server": server.url, "certificate-authority": "ca.crt"},
         "user": {"tokenFile": "token"}}])
    monkeypatch.chdir(tmp_path.parent)  # relative to the file, not to the working directory
    async with KubeClient.connect(str(path), "c", cache=KubeconfigCache()) as client:
        await client.get_json(SECRETS)
    os.remove(tmp_path / "ca.crt")
    with pytest.raises(KubeconfigError) as caught:
        await connect_and_list(path, "c", KubeconfigCache())
    assert str(caught.value) == (
        f"kubeconfig {path} context 'c': clusters[name=c].cluster.certificate-authority: "
        f"cannot read {tmp_path / 'ca.crt'}: No such file or directory")


async def test_a_missing_token_file_is_permanent_and_names_the_context(
        servers: list[ApiServer], tmp_path: Path) -> None:
    server = servers[0]
    path = write_raw(tmp_path / "kubeconfig", [
        {"name": "c", "cluster": {"server": server.url,
                                  "certificate-authority-data": b64(server.ca_pem)},
         "user": {"tokenFile": "absent-token"}}])
    with pytest.raises(KubeconfigError, match=rf"^kubeconfig {path} context 'c': .*absent-token"):
        await connect_and_list(path, "c", KubeconfigCache())


async def test_the_default_cache_serves_callers_that_pass_none(
        servers: list[ApiServer], tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", fleet_contexts(servers, 2),
                            current="ctx-001")
    async with KubeClient.connect(str(path), None) as client:
        assert client.server == servers[1].url
        await client.get_json(SECRETS)


def exec_plugin(tmp_path: Path, status: dict[str, str], *, exit_code: int = 0) -> dict[str, Any]:
    """A real exec credential plugin (a Python script) answering with *status*."""
    script = tmp_path / "plugin.py"
    response = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                "status": status}
    script.write_text("import json, sys\n"
                      f"print(json.dumps({response!r}))\n"
                      "print('plugin diagnostics', file=sys.stderr)\n"
                      f"sys.exit({exit_code})\n")
    return {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                     "command": sys.executable, "args": [str(script)]}}


async def test_an_exec_plugin_token_authenticates(
        servers: list[ApiServer], tmp_path: Path) -> None:
    server = servers[0]
    path = write_raw(tmp_path / "kubeconfig", [
        {"name": "c", "cluster": {"server": server.url,
                                  "certificate-authority-data": b64(server.ca_pem)},
         "user": exec_plugin(tmp_path, {"token": server.tokens.admin})}])
    async with KubeClient.connect(str(path), "c", cache=KubeconfigCache()) as client:
        await client.get_json(SECRETS)


async def test_an_exec_plugin_client_certificate_gets_its_own_tls_context(
        servers: list[ApiServer], tmp_path: Path, kube_ca: CertificateAuthority,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake presents it (the sandbox wants a token, hence the 401 after it)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the library's own temp files
    server, cert = servers[0], kube_ca.issue_server("plugin-client")
    path = write_raw(tmp_path / "kubeconfig", [
        {"name": "c", "cluster": {"server": server.url,
                                  "certificate-authority-data": b64(server.ca_pem)},
         "user": exec_plugin(tmp_path, {"clientCertificateData": cert.cert_pem.decode(),
                                        "clientKeyData": cert.key_pem.decode()})}])
    cache = KubeconfigCache()
    async with KubeClient.connect(str(path), "c", cache=cache) as client:
        with pytest.raises(PermanentError, match="401"):
            await client.get_json(SECRETS)
    assert cache.tls_contexts_built == 2  # the kubeconfig's CA alone, then with the cert


NOTHING_BUT_OUR_ERRORS = """
import asyncio, sys
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.errors import PermanentError

async def main():
    for path, context in [(sys.argv[1], "prod-eu"), (sys.argv[2], "c")]:
        try:
            async with KubeClient.connect(path, context):
                pass
        except PermanentError as exc:
            print(exc)

asyncio.run(main())
"""


def test_failures_print_nothing_outside_our_errors(
        tmp_path: Path, kube_ca: CertificateAuthority) -> None:
    """In a process of its own: pytest's log capture would hide the last-resort handler."""
    path = write_raw(tmp_path / "kubeconfig", [
        {"name": "c", "cluster": {"server": "https://127.0.0.1:1",
                                  "certificate-authority-data": b64(kube_ca.issue_server().ca_pem)},
         "user": exec_plugin(tmp_path, {}, exit_code=3)}])
    result = subprocess.run(
        [sys.executable, "-c", NOTHING_BUT_OUR_ERRORS, str(tmp_path / "absent"), str(path)],
        capture_output=True, text=True, timeout=60, check=True)
    assert result.stderr == ""
    assert result.stdout.splitlines() == [
        f"kubeconfig {tmp_path / 'absent'} context 'prod-eu': file not found",
        f"kubeconfig {path} context 'c': ConfigException: exec: process returned 3. "
        "plugin diagnostics"]
