"""Pure pieces of the emulated apiserver: selectors, patches, kubeconfig and TLS files."""

from __future__ import annotations

import base64
import datetime
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from ruamel.yaml import YAML

from sealfleet.sandbox.apiserver import patching
from sealfleet.sandbox.apiserver.selectors import parse_label_selector
from sealfleet.sandbox.apiserver.tables import table
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.objects import ApiError
from sealfleet.sandbox.tls import CertificateAuthority


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("a=1", {"a": "1"}, True),
        ("a==1", {"a": "2"}, False),
        ("a!=1", {}, True),  # != also matches objects without the key
        ("a in (1, 2),b", {"a": "2", "b": ""}, True),
        ("a in (1,2),b", {"a": "2"}, False),
        ("a notin (1)", {"b": "x"}, True),
        ("!a", {"a": "1"}, False),
        ("example.com/role", {"example.com/role": "x"}, True),
        ("n>3", {"n": "4"}, True),
        ("n<3", {"n": "x"}, False),
    ],
)
def test_label_selector_semantics(selector: str, labels: dict[str, str], expected: bool) -> None:
    requirements = parse_label_selector(selector)
    assert all(r.matches(labels) for r in requirements) is expected


@pytest.mark.parametrize("bad", ["a=1,,b", "a in (1", "in=1=2", "-bad-=x", "a>x"])
def test_malformed_label_selectors_are_bad_requests(bad: str) -> None:
    with pytest.raises(ApiError) as error:
        parse_label_selector(bad)
    assert error.value.code == 400


def test_strategic_merge_follows_kubectl_directives() -> None:
    original = {
        "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
        "spec": {
            "containers": [
                {"name": "one", "image": "one:1", "args": ["--a"]},
                {"name": "two", "image": "two:1"},
            ],
            "tolerations": [{"key": "k"}],
        },
    }
    patch = {
        "metadata": {"labels": {"b": None, "c": "3"}, "finalizers": ["y"]},
        "spec": {
            "$setElementOrder/containers": [{"name": "two"}, {"name": "one"}],
            "containers": [
                {"name": "one", "args": ["--b"]},
                {"name": "two", "$patch": "delete"},
                {"name": "three", "image": "three:1"},
            ],
            "tolerations": [{"key": "other"}],
        },
    }
    merged = patching.strategic_merge(original, patch)
    assert merged["metadata"] == {"labels": {"a": "1", "c": "3"}, "finalizers": ["x", "y"]}
    assert merged["spec"]["containers"] == [
        {"name": "one", "image": "one:1", "args": ["--b"]},  # scalar lists are replaced
        {"name": "three", "image": "three:1"},
    ]
    assert merged["spec"]["tolerations"] == [{"key": "other"}]  # unkeyed lists are replaced
    replaced = patching.strategic_merge(original, {"spec": {"$patch": "replace", "x": 1}})
    assert replaced["spec"] == {"x": 1}


def test_json_patch_operations_and_failures() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    result = patching.json_patch(
        doc,
        [
            {"op": "add", "path": "/a/b/-", "value": 3},
            {"op": "replace", "path": "/a/b/0", "value": 0},
            {"op": "move", "from": "/c", "path": "/d"},
            {"op": "copy", "from": "/d", "path": "/e~1f"},
            {"op": "remove", "path": "/a/b/1"},
            {"op": "test", "path": "/d", "value": "x"},
        ],
    )
    assert result == {"a": {"b": [0, 3]}, "d": "x", "e/f": "x"}
    assert doc == {"a": {"b": [1, 2]}, "c": "x"}  # the input is untouched
    with pytest.raises(ApiError) as missing:
        patching.json_patch(doc, [{"op": "replace", "path": "/nope", "value": 1}])
    assert missing.value.code == 422


def test_merge_patch_deletes_with_null_and_replaces_lists() -> None:
    assert patching.merge_patch({"a": 1, "b": [1, 2], "c": {"d": 1}}, {"a": None, "b": [3]}) == {
        "b": [3],
        "c": {"d": 1},
    }


def test_kubeconfig_embeds_everything_and_is_private(tmp_path: Path) -> None:
    ca = CertificateAuthority.create()
    server = ca.issue_server()
    target = tmp_path / "kubeconfig"
    target.write_text("old")
    target.chmod(0o644)
    write_kubeconfig(
        target,
        [
            KubeconfigContext("sandbox-1", "https://127.0.0.1:1", server.ca_pem, "t1"),
            KubeconfigContext("sandbox-2", "https://127.0.0.1:2", server.ca_pem, "t2"),
        ],
    )
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    doc = YAML(typ="safe", pure=True).load(target.read_text())
    assert doc["current-context"] == "sandbox-1"
    assert [c["name"] for c in doc["contexts"]] == ["sandbox-1", "sandbox-2"]
    cluster = doc["clusters"][1]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:2"
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca.cert_pem
    assert doc["users"][1]["user"] == {"token": "t2"}


def test_server_certificate_is_signed_for_loopback() -> None:
    ca = CertificateAuthority.create()
    cert = x509.load_pem_x509_certificate(ca.issue_server().cert_pem)
    assert cert.issuer == ca.cert.subject
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    cert.verify_directly_issued_by(ca.cert)


# Replaced by "ten minutes before the test runs" in the test itself: a time taken at
# collection would age while a loaded machine gets round to the test.
TEN_MINUTES_AGO = "<ten minutes ago>"


def _pod(state: dict[str, object], *, restarts: int = 0, ready: bool = False,
         deleted: bool = False, finished: str | None = None) -> dict[str, object]:
    container: dict[str, object] = {"name": "c", "ready": ready, "restartCount": restarts,
                                    "state": state}
    if finished:
        container["lastState"] = {"terminated": {"exitCode": 2, "finishedAt": finished}}
    meta: dict[str, object] = {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"}
    if deleted:
        meta["deletionTimestamp"] = "2020-01-02T00:00:00Z"
    return {"metadata": meta, "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "containerStatuses": [container]}}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_pod({"running": {}}, ready=True), ["1/1", "Running", "0"]),
        (_pod({"waiting": {"reason": "CrashLoopBackOff"}}, restarts=3, finished=TEN_MINUTES_AGO),
         ["0/1", "CrashLoopBackOff", "3 (10m ago)"]),
        (_pod({"terminated": {"reason": "OOMKilled", "exitCode": 137}}), ["0/1", "OOMKilled", "0"]),
        (_pod({"terminated": {"exitCode": 3}}), ["0/1", "ExitCode:3", "0"]),
        (_pod({"terminated": {"exitCode": 0, "signal": 9}}), ["0/1", "Signal:9", "0"]),
        (_pod({"running": {}}, ready=True, deleted=True), ["1/1", "Terminating", "0"]),
    ],
)
def test_pod_rows_follow_the_real_printer(pod: dict[str, object], expected: list[str]) -> None:
    ten_minutes_ago = (datetime.datetime.now(datetime.UTC)
                       - datetime.timedelta(minutes=10, seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pod = json.loads(json.dumps(pod).replace(TEN_MINUTES_AGO, ten_minutes_ago))
    (row,) = table("pods", [pod])["rows"]
    assert row["cells"][1:4] == expected
