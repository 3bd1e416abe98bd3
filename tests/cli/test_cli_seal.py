"""``sealfleet seal`` through the real entry point, with kubeseal's flags."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sealfleet.domain import documents, hybrid, sealed_secrets
from sealfleet.domain.scopes import Scope, encryption_label

if TYPE_CHECKING:  # fixtures' types only; conftest modules are not importable
    from tests.cli.conftest import Cli, KeyFiles

SECRET_YAML = """\
apiVersion: v1
kind: Secret
metadata:
  name: db
  namespace: team-a
  labels: {app: db}
type: Opaque
stringData:
  password: correct horse
data:
  user: YWRtaW4=
"""
SECOND_YAML = """\
---
apiVersion: v1
kind: Secret
metadata: {name: api, namespace: team-a}
stringData: {token: t0ken}
"""


def _values(doc: dict[str, Any], key: KeyFiles) -> dict[str, bytes]:
    return sealed_secrets.decrypt_items(doc, [key.key.private_key])


def test_seal_from_stdin_prints_json_by_default(cli: Cli, key_files: list[KeyFiles]) -> None:
    run = cli("seal", "--cert", key_files[0].cert, stdin=SECRET_YAML)
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("{\n")
    assert run.stdout.endswith("}\n")
    sealed = json.loads(run.stdout)
    assert sealed["kind"] == "SealedSecret"
    assert sealed["metadata"] == {"name": "db", "namespace": "team-a",
                                  "creationTimestamp": None}
    assert _values(sealed, key_files[0]) == {"password": b"correct horse", "user": b"admin"}


UNORDERED_YAML = """\
stringData: {zeta: z, alpha: a}
type: Opaque
metadata:
  annotations: {team: a, app.kubernetes.io/owner: ops}
  labels: {tier: db, app: db}
  namespace: team-a
  name: db
kind: Secret
apiVersion: v1
"""


def test_json_output_follows_kubeseals_go_struct_order(cli: Cli,
                                                       key_files: list[KeyFiles]) -> None:
    run = cli("seal", "--cert", key_files[0].cert, stdin=UNORDERED_YAML)
    assert run.code == 0, run.stderr
    sealed = json.loads(run.stdout)  # keeps the order of the text
    assert list(sealed) == ["kind", "apiVersion", "metadata", "spec"]
    assert list(sealed["metadata"]) == ["name", "namespace", "creationTimestamp"]
    assert sealed["metadata"]["creationTimestamp"] is None
    assert list(sealed["spec"]) == ["template", "encryptedData"]
    template = sealed["spec"]["template"]
    assert list(template) == ["metadata", "type"]
    assert list(template["metadata"]) == ["name", "namespace", "creationTimestamp", "labels",
                                          "annotations"]
    assert template["metadata"]["creationTimestamp"] is None
    assert list(template["metadata"]["labels"]) == ["app", "tier"]  # Go maps: sorted
    assert list(template["metadata"]["annotations"]) == ["app.kubernetes.io/owner", "team"]
    assert list(sealed["spec"]["encryptedData"]) == ["alpha", "zeta"]
    assert run.stdout.startswith('{\n  "kind": "SealedSecret",\n')
    assert run.stdout.endswith("\n}\n")


def test_yaml_output_is_a_sorted_document_with_null_timestamps(
        cli: Cli, key_files: list[KeyFiles]) -> None:
    run = cli("seal", "--cert", key_files[0].cert, "-o", "yaml", stdin=UNORDERED_YAML)
    assert run.code == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "---"
    top = [line.split(":")[0] for line in lines[1:] if not line.startswith(" ")]
    assert top == ["apiVersion", "kind", "metadata", "spec"]
    assert lines.count("  creationTimestamp: null") == 1        # top-level metadata
    assert lines.count("      creationTimestamp: null") == 1    # template metadata
    spec = [line.strip().split(":")[0] for line in lines if line.startswith("  ")
            and not line.startswith("   ")]
    assert spec == ["creationTimestamp", "name", "namespace", "encryptedData", "template"]
    alpha, zeta = (next(i for i, line in enumerate(lines) if line.startswith(f"    {item}: "))
                   for item in ("alpha", "zeta"))
    assert lines.index("  encryptedData:") < alpha < zeta
    (doc,) = documents.parse_documents(run.stdout)
    assert _values(doc, key_files[0]) == {"alpha": b"a", "zeta": b"z"}


def test_seal_multi_document_file_to_yaml(cli: Cli, key_files: list[KeyFiles],
                                          tmp_path: Path) -> None:
    source = tmp_path / "secrets.yaml"
    source.write_text(SECRET_YAML + SECOND_YAML)
    run = cli("seal", "--cert", key_files[0].cert, "-f", source, "-o", "yaml")
    assert run.code == 0, run.stderr
    assert run.stdout.startswith("---\n")
    docs = documents.parse_documents(run.stdout)
    assert [d["metadata"]["name"] for d in docs] == ["db", "api"]
    assert _values(docs[1], key_files[0]) == {"token": b"t0ken"}


def test_seal_reads_json_input(cli: Cli, key_files: list[KeyFiles]) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "j", "namespace": "n"},
              "data": {"k": base64.b64encode(b"\x00\xff binary").decode()}}
    run = cli("seal", "--cert", key_files[0].cert, stdin=json.dumps(secret))
    assert run.code == 0, run.stderr
    assert _values(json.loads(run.stdout), key_files[0]) == {"k": b"\x00\xff binary"}


@pytest.mark.parametrize(("name", "expect"), [("out.yaml", "yaml"), ("out.yml", "yaml"),
                                              ("out.json", "json")])
def test_write_flag_writes_atomically_and_yaml_extension_forces_yaml(
        cli: Cli, key_files: list[KeyFiles], tmp_path: Path, name: str, expect: str) -> None:
    target = tmp_path / name
    run = cli("seal", "--cert", key_files[0].cert, "-w", target, "-o", "json", stdin=SECRET_YAML)
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    text = target.read_text()
    assert text.startswith("---\n" if expect == "yaml" else "{")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left
    assert _values(documents.parse_documents(text)[0], key_files[0])["user"] == b"admin"


def test_failed_seal_leaves_the_output_file_alone(cli: Cli, key_files: list[KeyFiles],
                                                  tmp_path: Path) -> None:
    target = tmp_path / "out.yaml"
    target.write_text("previous\n")
    run = cli("seal", "--cert", key_files[0].cert, "-w", target,
              stdin=SECRET_YAML + "---\nkind: Secret\nmetadata: {name: x}\nstringData: {a: b}\n")
    assert run.code == 2
    assert target.read_text() == "previous\n"


@pytest.mark.parametrize("scope", list(Scope))
def test_scope_flag(cli: Cli, key_files: list[KeyFiles], scope: Scope) -> None:
    run = cli("seal", "--cert", key_files[0].cert, "--scope", scope.cli_name, stdin=SECRET_YAML)
    assert run.code == 0, run.stderr
    sealed = json.loads(run.stdout)
    assert sealed_secrets.identity_of(sealed).scope is scope
    assert _values(sealed, key_files[0])["user"] == b"admin"


def test_namespace_and_name_flags(cli: Cli, key_files: list[KeyFiles]) -> None:
    bare = "kind: Secret\napiVersion: v1\nmetadata: {name: db}\nstringData: {a: b}\n"
    run = cli("seal", "--cert", key_files[0].cert, "-n", "prod", "--name", "renamed",
              stdin=bare)
    assert run.code == 0, run.stderr
    sealed = json.loads(run.stdout)
    assert (sealed["metadata"]["namespace"], sealed["metadata"]["name"]) == ("prod", "renamed")
    assert _values(sealed, key_files[0]) == {"a": b"b"}
    mismatch = cli("seal", "--cert", key_files[0].cert, "-n", "prod", stdin=SECRET_YAML)
    assert mismatch.code == 2
    assert "document 0 (team-a/db): namespace mismatch" in mismatch.stderr
    missing = cli("seal", "--cert", key_files[0].cert, stdin=bare)
    assert missing.code == 2
    assert "has no namespace" in missing.stderr


def test_allow_empty_data(cli: Cli, key_files: list[KeyFiles]) -> None:
    empty = "kind: Secret\nmetadata: {name: e, namespace: n}\n"
    refused = cli("seal", "--cert", key_files[0].cert, stdin=empty)
    assert refused.code == 2
    assert "--allow-empty-data" in refused.stderr
    allowed = cli("seal", "--cert", key_files[0].cert, "--allow-empty-data", stdin=empty)
    assert allowed.code == 0, allowed.stderr
    assert json.loads(allowed.stdout)["spec"]["encryptedData"] == {}


def test_raw_from_file_prints_bare_base64(cli: Cli, key_files: list[KeyFiles],
                                          tmp_path: Path) -> None:
    value = tmp_path / "value.bin"
    value.write_bytes(b"raw \x00 value")
    run = cli("seal", "--raw", "--cert", key_files[0].cert, "-n", "ns", "--name", "app",
              "--from-file", f"anykey={value}")
    assert run.code == 0, run.stderr
    assert not run.stdout.endswith("\n")
    sealed = base64.b64decode(run.stdout, validate=True)
    label = encryption_label(Scope.STRICT, "ns", "app")
    assert hybrid.decrypt([key_files[0].key.private_key], sealed, label) == b"raw \x00 value"


def test_raw_from_stdin_with_each_scope(cli: Cli, key_files: list[KeyFiles]) -> None:
    run = cli("seal", "--raw", "--scope", "cluster-wide", "--cert", key_files[0].cert,
              stdin=b"stdin value")
    assert run.code == 0, run.stderr
    assert hybrid.decrypt([key_files[0].key.private_key], base64.b64decode(run.stdout),
                          b"") == b"stdin value"
    wide = cli("seal", "--raw", "--scope", "namespace-wide", "-n", "ns",
               "--cert", key_files[0].cert, stdin=b"v")
    assert hybrid.decrypt([key_files[0].key.private_key], base64.b64decode(wide.stdout),
                          b"ns") == b"v"
    strict = cli("seal", "--raw", "-n", "ns", "--cert", key_files[0].cert, stdin=b"v")
    assert strict.code == 2
    assert "--raw with strict scope needs --namespace and --name" in strict.stderr
    two = cli("seal", "--raw", "--scope", "cluster-wide", "--cert", key_files[0].cert,
              "--from-file", "a=x", "--from-file", "b=y")
    assert two.code == 2
    assert "--raw takes exactly one --from-file" in two.stderr
    no_raw = cli("seal", "--from-file", "x", "--cert", key_files[0].cert, stdin=b"v")
    assert no_raw.code == 2
    assert "--from-file is only valid with --raw" in no_raw.stderr


def test_merge_into_adds_items_in_place(cli: Cli, key_files: list[KeyFiles],
                                        tmp_path: Path) -> None:
    target = tmp_path / "sealed.yaml"
    first = cli("seal", "--cert", key_files[0].cert, "--scope", "namespace-wide",
                "-w", target, stdin=SECRET_YAML)
    assert first.code == 0, first.stderr
    update = ("kind: Secret\nmetadata: {name: ignored, namespace: team-a, "
              "labels: {tier: backend}}\nstringData: {password: new, extra: added}\n")
    run = cli("seal", "--cert", key_files[0].cert, "--merge-into", target, stdin=update)
    assert run.code == 0, run.stderr
    text = target.read_text()
    assert text.startswith("---\n")  # the file keeps its format
    (merged,) = documents.parse_documents(text)
    assert merged["metadata"]["name"] == "db"
    assert merged["spec"]["template"]["metadata"]["labels"] == {"app": "db", "tier": "backend"}
    assert _values(merged, key_files[0]) == {"password": b"new", "user": b"admin",
                                             "extra": b"added"}
    assert merged["spec"]["template"]["type"] == "Opaque"  # the file's template is kept
    conflicting = cli("seal", "--cert", key_files[0].cert, "--scope", "cluster-wide",
                      "--merge-into", target, stdin=update)
    assert conflicting.code == 2
    assert "scope mismatch" in conflicting.stderr
    assert documents.parse_documents(target.read_text()) == [merged]


def test_merge_into_a_json_file_merges_annotations_and_template_data(
        cli: Cli, key_files: list[KeyFiles], tmp_path: Path) -> None:
    target = tmp_path / "sealed.json"
    existing = sealed_secrets.seal_secret(documents.parse_documents(SECRET_YAML)[0],
                                          key_files[0].key.public_key)
    existing["spec"]["template"]["metadata"]["annotations"] = {"keep": "1", "change": "old"}
    existing["spec"]["template"]["data"] = {"config.yaml": "mode: a"}
    target.write_text(documents.dump_json(existing))
    update = ("kind: Secret\nmetadata: {name: db, namespace: team-a, annotations: "
              "{change: new}}\ndata: {extra: " + base64.b64encode(b"more").decode() + "}\n")
    run = cli("seal", "--cert", key_files[0].cert, "--merge-into", target, stdin=update)
    assert run.code == 0, run.stderr
    assert run.stdout == ""
    text = target.read_text()
    assert text.startswith("{")  # a JSON file stays JSON
    (merged,) = documents.parse_documents(text)
    template = merged["spec"]["template"]
    assert template["metadata"]["annotations"] == {"keep": "1", "change": "new"}
    assert template["data"] == {"config.yaml": "mode: a"}
    assert list(merged["spec"]["encryptedData"]) == ["extra", "password", "user"]
    assert _values(merged, key_files[0]) == {"password": b"correct horse", "user": b"admin",
                                             "extra": b"more"}
    two_docs = cli("seal", "--cert", key_files[0].cert, "--merge-into", target,
                   stdin=SECRET_YAML + SECOND_YAML)
    assert two_docs.code == 2
    assert "--merge-into takes a single Secret, the input holds 2 documents" in two_docs.stderr
    assert target.read_text() == text


def test_expired_certificate_is_refused(cli: Cli, expired_cert: Path) -> None:
    run = cli("seal", "--cert", expired_cert, stdin=SECRET_YAML)
    assert run.code == 2
    assert "failed to encrypt using an expired certificate on 2016-01-01" in run.stderr
    assert run.stdout == ""


def test_certificate_from_env_and_file_url(cli: Cli, key_files: list[KeyFiles]) -> None:
    from_env = cli("seal", stdin=SECRET_YAML,
                   extra_env={"SEALED_SECRETS_CERT": str(key_files[1].cert)})
    assert from_env.code == 0, from_env.stderr
    assert _values(json.loads(from_env.stdout), key_files[1])["user"] == b"admin"
    from_url = cli("seal", "--cert", key_files[1].cert.as_uri(), stdin=SECRET_YAML)
    assert from_url.code == 0, from_url.stderr
    missing = cli("seal", stdin=SECRET_YAML)
    assert missing.code == 2
    assert "no certificate: pass --cert" in missing.stderr


@pytest.fixture
def cert_server(key_files: list[KeyFiles]) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(key_files[2].cert.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="cert-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_certificate_from_http_url(cli: Cli, key_files: list[KeyFiles], cert_server: str) -> None:
    run = cli("seal", "--cert", f"{cert_server}/{key_files[2].cert.name}", stdin=SECRET_YAML)
    assert run.code == 0, run.stderr
    assert _values(json.loads(run.stdout), key_files[2])["user"] == b"admin"
    missing = cli("seal", "--cert", f"{cert_server}/nope.pem", stdin=SECRET_YAML)
    assert missing.code == 2
    assert "cannot fetch certificate: HTTP 404" in missing.stderr
