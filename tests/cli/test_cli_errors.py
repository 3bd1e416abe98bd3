"""Bad input gets one line naming input, document and item; never a value or a key.

A Secret with a distinctive value is sealed, then every error path the CLI has is
triggered with it nearby; neither the value (plain or base64) nor any line of private
key material may appear in stdout or stderr.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sealfleet.domain import documents, sealed_secrets

if TYPE_CHECKING:  # fixtures' types only; conftest modules are not importable
    from tests.cli.conftest import Cli, KeyFiles, Run

SENTINEL = "Sentinel-Plaintext-9f3c1a77"
SENTINEL_B64 = base64.b64encode(SENTINEL.encode()).decode()


@pytest.fixture
def files(tmp_path: Path, key_files: list[KeyFiles]) -> dict[str, Path]:
    key = key_files[0].key
    plain: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "db", "namespace": "team-a"},
                             "stringData": {"password": SENTINEL},
                             "data": {"copy": SENTINEL_B64}}
    sealed = sealed_secrets.seal_secret(plain, key.public_key)
    renamed = json.loads(json.dumps(sealed))
    renamed["metadata"]["name"] = "other"
    templated = json.loads(json.dumps(sealed))
    templated["spec"]["template"]["data"] = {"conf": "{{ index . \"password\" }}" + SENTINEL}
    paths = {
        "plain": (tmp_path / "plain.yaml", documents.dump_yaml(plain)),
        "sealed": (tmp_path / "sealed.yaml", documents.dump_yaml(sealed)),
        "renamed": (tmp_path / "renamed.json", documents.dump_json(renamed)),
        "templated": (tmp_path / "templated.json", documents.dump_json(templated)),
        "bad_base64": (tmp_path / "bad64.yaml", documents.dump_yaml(plain) + "---\n"
                       "kind: Secret\nmetadata: {name: b, namespace: n}\n"
                       f"data: {{k: '{SENTINEL}!'}}\n"),
        "dup_key": (tmp_path / "dup.yaml",
                    f"kind: Secret\nstringData:\n  a: {SENTINEL}\n  a: {SENTINEL}x\n"),
        "bad_json": (tmp_path / "bad.json",
                     f'{{"kind": "Secret", "stringData": {{"a": "{SENTINEL}'),
        "mismatch": (tmp_path / "mismatch.yaml", documents.dump_yaml(
            {**sealed, "metadata": {**sealed["metadata"], "annotations": {
                "sealedsecrets.bitnami.com/cluster-wide": "true"}}})),
    }
    for path, text in paths.values():
        path.write_text(text)
    return {name: path for name, (path, _) in paths.items()}


def _key_lines(key_files: list[KeyFiles]) -> list[str]:
    lines = []
    for key in key_files:
        body = key.private_key.read_text().splitlines()[1:-1]
        lines += [line for line in body if len(line) > 20]
        lines.append(base64.b64encode(key.private_key.read_bytes()).decode()[:40])
    return lines


def _assert_clean(run: Run, key_files: list[KeyFiles], code: int) -> None:
    output = run.stdout + run.stderr
    assert run.code == code, run.stderr
    assert SENTINEL not in output
    assert SENTINEL_B64 not in output
    for line in _key_lines(key_files):
        assert line not in output
    lines = run.stderr.strip().splitlines()
    assert lines, "an error must be reported"
    assert all(line.startswith("sealfleet") for line in lines)


def test_no_error_path_leaks_values_or_keys(cli: Cli, files: dict[str, Path],
                                            key_files: list[KeyFiles]) -> None:
    cert0, key0, key1 = key_files[0].cert, key_files[0].private_key, key_files[1].private_key
    cases: list[tuple[tuple[Any, ...], int, str]] = [
        (("unseal", "--recovery-private-key", key1, "-f", files["sealed"]), 1,
         "document 0 (team-a/db): no key could decrypt item(s) 'copy', 'password'"),
        (("validate", "--recovery-private-key", key1, "-f", files["sealed"]), 1,
         "item 'password': no key could decrypt it"),
        (("unseal", "--recovery-private-key", key0, "-f", files["renamed"]), 1,
         "no key could decrypt"),
        (("reencrypt", "--cert", cert0, "--recovery-private-key", key1, "-f", files["sealed"]),
         1, "no key could decrypt"),
        (("unseal", "--recovery-private-key", key0, "-f", files["plain"]), 2,
         "document 0 (team-a/db): expected kind SealedSecret, got 'Secret'"),
        (("unseal", "--recovery-private-key", key0, "-f", files["templated"]), 2,
         "template data 'conf' uses Go templates"),
        (("unseal", "--recovery-private-key", key0, "-f", files["mismatch"]), 1,
         "no key could decrypt"),
        (("seal", "--cert", cert0, "-n", "prod", "-f", files["plain"]), 2, "namespace mismatch"),
        (("seal", "--cert", cert0, "-f", files["bad_base64"]), 2,
         "bad64.yaml: document 1 (n/b): item 'k': data value is not valid base64"),
        (("seal", "--cert", cert0, "-f", files["dup_key"]), 2, "dup.yaml: invalid YAML at line"),
        (("seal", "--cert", cert0, "-f", files["bad_json"]), 2,
         "bad.json: document 0: invalid JSON"),
        (("seal", "--cert", files["plain"], "-f", files["plain"]), 2,
         "plain.yaml: no PEM certificate found"),
        (("seal", "--cert", key0, "-f", files["plain"]), 2, "no PEM certificate found"),
        (("seal", "--cert", cert0, "-f", key0), 2, "expected a mapping"),
        (("seal", "--cert", cert0, "--merge-into", files["sealed"], "--scope", "cluster-wide",
          "-f", files["plain"]), 2, "scope mismatch"),
        (("unseal", "--recovery-private-key", files["plain"], "-f", files["sealed"]), 2,
         "plain.yaml: document 0 (team-a/db): Secret has no data['tls.key']"),
        (("unseal", "--recovery-private-key", files["sealed"], "-f", files["sealed"]), 2,
         "document 0: expected a Secret, a List or a PEM key, got kind 'SealedSecret'"),
        (("keys", "fingerprint", files["plain"]), 2, "Secret has no data['tls.key']"),
        (("seal", "--raw", "--cert", cert0, "-n", "x"), 2, "needs --namespace and --name"),
    ]
    for args, code, message in cases:
        stdin = SENTINEL if args[:2] == ("seal", "--raw") else b""
        run = cli(*args, stdin=stdin)
        _assert_clean(run, key_files, code)
        assert message in run.stderr, (args, run.stderr)
        if code == 2 or args[0] == "unseal":
            assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_debug_traceback_is_opt_in_only(cli: Cli, files: dict[str, Path],
                                        key_files: list[KeyFiles]) -> None:
    """Expected errors never print a traceback, even with SEALFLEET_DEBUG=1."""
    run = cli("unseal", "--recovery-private-key", key_files[1].private_key, "-f", files["sealed"],
              extra_env={"SEALFLEET_DEBUG": "1"})
    _assert_clean(run, key_files, 1)


@pytest.mark.parametrize(("args", "message"), [
    (("seal", "--bogus"), "unrecognized arguments: --bogus"),
    (("seal", "-o", "xml"), "invalid choice: 'xml'"),
    (("seal", "--scope", "global"), "invalid choice: 'global'"),
    (("unseal",), "the following arguments are required: --recovery-private-key"),
    (("validate", "-f", "x"), "the following arguments are required: --recovery-private-key"),
    (("keys", "generate", "--key-out", "k"), "required: --cert-out"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
])
def test_usage_errors_exit_2_in_one_line(cli: Cli, args: tuple[str, ...], message: str) -> None:
    run = cli(*args)
    assert run.code == 2
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_missing_and_empty_inputs(cli: Cli, key_files: list[KeyFiles], tmp_path: Path) -> None:
    missing = cli("seal", "--cert", key_files[0].cert, "-f", tmp_path / "absent.yaml")
    assert missing.code == 2
    assert "absent.yaml: cannot read: No such file or directory" in missing.stderr
    empty = cli("seal", "--cert", key_files[0].cert, stdin="---\n")
    assert empty.code == 2
    assert "<stdin>: no document found" in empty.stderr
    directory = cli("unseal", "--recovery-private-key", tmp_path, stdin="{}")
    assert directory.code == 2
    assert "is a directory" in directory.stderr
    nothing = cli("validate", "--recovery-private-key", key_files[0].private_key,
                  stdin='{"kind": "ConfigMap"}')
    assert nothing.code == 2
    assert "no SealedSecret found" in nothing.stderr
