"""Malformed kubeconfig files and contexts: one line naming the file, context and key."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sealfleet.adapters.kube import kubeconfig_document as document
from sealfleet.adapters.kube.client import KubeClient
from sealfleet.adapters.kube.kubeconfig import KubeconfigCache, KubeconfigError

P = "/etc/sealfleet/kubeconfig"
ONE = """
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t0ken}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
"""


def select(text: str, context: str | None) -> document.Selection:
    return document.select(document.parse_document(text.encode(), P), P, context,
                           base_dir="/etc/sealfleet")


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", "expected a mapping at the top level, not list"),
    ("contexts: {a: 1}\n", "contexts: expected a list, not dict"),
    ("users: [{name: u}, {user: {}}]\n", "users[1].name: expected a non-empty string"),
    ("clusters: [{name: 7}]\n", "clusters[0].name: expected a non-empty string"),
    ("current-context: [a]\n", "current-context: expected a string, not list"),
])
def test_a_malformed_file_names_the_key(text: str, message: str) -> None:
    with pytest.raises(KubeconfigError) as caught:
        document.parse_document(text.encode(), P)
    assert str(caught.value) == f"kubeconfig {P}: {message}"


@pytest.mark.parametrize(("text", "context", "message"), [
    ("", "x", "context 'x': no such context (it has none)"),
    (ONE + "current-context: gone\n", None, "context 'gone': no such context (it has 1: x)"),
    (ONE + "contexts: [{name: x, context: {cluster: c}}, {name: x, context: {cluster: c}}]",
     "x", "context 'x': contexts: the name is defined more than once"),
    (ONE.replace("{cluster: c, user: u}", "[c]"), "x",
     "context 'x': contexts[name=x].context: expected a mapping, not list"),
    (ONE.replace("{cluster: c, user: u}", "{user: u}"), "x",
     "context 'x': contexts[name=x].context.cluster: expected a cluster name"),
    (ONE.replace('{server: "https://127.0.0.1:1"}', "{}"), "x",
     "context 'x': clusters[name=c].cluster.server: expected a URL"),
    (ONE.replace("[{name: u, user: {token: t0ken}}]", "[{name: u, user: t0ken}]"), "x",
     "context 'x': users[name=u]: expected a mapping, not str"),
])
def test_a_context_that_cannot_be_used_names_the_key(text: str, context: str | None,
                                                     message: str) -> None:
    with pytest.raises(KubeconfigError) as caught:
        select(text, context)
    assert str(caught.value) == f"kubeconfig {P} {message}"
    assert "t0ken" not in str(caught.value)


def test_a_duplicated_name_nobody_uses_is_no_error() -> None:
    text = ONE + "clusters: [{name: c, cluster: {server: 'https://a'}}, {name: d}, {name: d}]"
    assert select(text, "x").cluster == {"server": "https://a"}


def test_current_context_is_used_when_no_context_is_given() -> None:
    selection = select(ONE + "current-context: x\n", None)
    assert (selection.name, selection.cluster_name, selection.user_name) == ("x", "c", "u")
    assert selection.where == f"kubeconfig {P} context 'x'"


def test_tls_material_prefers_data_to_files_and_refuses_bad_base64() -> None:
    text = ONE.replace('{server: "https://127.0.0.1:1"}',
                       '{server: "https://127.0.0.1:1", certificate-authority: /nonexistent, '
                       f'certificate-authority-data: {base64.b64encode(b"PEM").decode()}}}')
    material = document.static_material(select(text, "x"))
    assert material is not None
    assert material.ca == b"PEM"
    assert material.verify
    broken = text.replace(base64.b64encode(b"PEM").decode(), "not=base64!")
    with pytest.raises(KubeconfigError) as caught:
        document.static_material(select(broken, "x"))
    assert str(caught.value) == (f"kubeconfig {P} context 'x': clusters[name=c].cluster."
                                 "certificate-authority-data: not valid base64")


def test_plain_http_servers_have_no_tls_material() -> None:
    assert document.static_material(select(ONE.replace("https", "http"), "x")) is None


async def test_a_ca_that_is_no_certificate_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(ONE.replace('{server: "https://127.0.0.1:1"}',
                                '{server: "https://127.0.0.1:1", certificate-authority-data: '
                                f'{base64.b64encode(b"-----BEGIN CERTIFICATE-----").decode()}}}'))
    with pytest.raises(KubeconfigError) as caught:
        async with KubeClient.connect(str(path), "x", cache=KubeconfigCache()):
            pass
    assert str(caught.value) == (f"kubeconfig {path} context 'x': clusters[name=c].cluster."
                                 "certificate-authority: not a PEM or DER certificate")
