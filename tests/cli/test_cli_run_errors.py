"""`sealfleet run` refuses a bad configuration with exit 2 and one line naming file and key.

Each case is a finding of the hostile review (issue 11): a value the daemon accepted and
then misbehaved with (a 0s resync relisting in a loop), an internal error, or a problem
with a file the config names (KEK, tokens, database, state directory, API address) that
exited 1 as if it were a runtime failure.  Exit 1 stays for failures at run time.
"""

from __future__ import annotations

import ctypes
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sealfleet.adapters.store import generate_kek_file

if TYPE_CHECKING:  # fixtures' types only; conftest modules are not importable
    from tests.cli.conftest import Cli, Run

TOKEN = "Sentinel-Token-3c9e7d1f-0123456789"
OTHER_TOKEN = "Other-Token-77ab3e5d-9876543210"
DEAD_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: dead, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: dead, context: {cluster: dead, user: u}}]
current-context: dead
"""


def config_dir(tmp_path: Path, extra: str = "", *, store: str = "", api: str = "") -> Path:
    """A config that would start: a KEK, a database path, a socket, one dead cluster."""
    if not (tmp_path / "kek").exists():
        generate_kek_file(tmp_path / "kek")
    (tmp_path / "kubeconfig").write_text(DEAD_KUBECONFIG)
    config = tmp_path / "sealfleet.toml"
    config.write_text(f'[store]\ndatabase = "state/inventory.db"\nkek_file = "kek"\n{store}\n'
                      f'[api]\nsocket = "api.sock"\n{api}\n[logging]\nformat = "json"\n'
                      f'{extra}\n[[clusters]]\nname = "a"\nkubeconfig = "kubeconfig"\n')
    return config


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def refused(run: Run, *expected: str) -> str:
    """Exit 2, one line on stderr containing every *expected* part, no token in it."""
    assert run.code == 2, (run.code, run.stderr[-2000:])
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    for part in expected:
        assert part in lines[0], lines[0]
    assert TOKEN not in run.stdout + run.stderr
    assert OTHER_TOKEN not in run.stdout + run.stderr
    return lines[0]


def test_zero_periods_are_refused(cli: Cli, tmp_path: Path) -> None:
    """Every period and timeout: tests/app/test_config.py; here the command's answer."""
    config = config_dir(tmp_path, '[fleet]\nresync_interval = "0s"\nrequest_timeout = "0s"\n')
    refused(cli("run", "-c", config), f"{config}: fleet.resync_interval: must be longer than "
                                      "0s; fleet.request_timeout: must be longer than 0s")


def test_an_overflowing_duration_is_a_config_error_not_an_internal_error(
        cli: Cli, tmp_path: Path) -> None:
    config = config_dir(tmp_path, '[policy]\nkey_renew_period = "99999999999999d"\n')
    refused(cli("run", "-c", config),
            f"{config}: policy.key_renew_period: must be at most 36500d (100 years)")


def test_a_non_boolean_flag_is_refused(cli: Cli, tmp_path: Path) -> None:
    config = config_dir(tmp_path)
    config.write_text(config.read_text() + 'read_key_secrets = "yes"\n')
    refused(cli("run", "-c", config), f"{config}: clusters[0].read_key_secrets: "
                                      "expected true or false")


def test_a_token_file_others_can_read_is_refused(cli: Cli, tmp_path: Path) -> None:
    token = write_private(tmp_path / "read-token", TOKEN, mode=0o644)
    config = config_dir(tmp_path, api='read_token_file = "read-token"')
    refused(cli("run", "-c", config), f"api.read_token_file: {token}: mode 0644",
            f"chmod 600 {token}")
    write_private(tmp_path / "admin-token", OTHER_TOKEN, mode=0o640)
    token.chmod(0o600)
    config = config_dir(tmp_path, api='read_token_file = "read-token"\n'
                                      'admin_token_file = "admin-token"')
    refused(cli("run", "-c", config), f"{config}: api.admin_token_file: ", "mode 0640")


def test_one_token_cannot_serve_as_read_and_admin_token(cli: Cli, tmp_path: Path) -> None:
    write_private(tmp_path / "read-token", TOKEN)
    same_file = config_dir(tmp_path, api='read_token_file = "read-token"\n'
                                         'admin_token_file = "./read-token"')
    refused(cli("run", "-c", same_file), "api: read_token_file and admin_token_file are "
                                         "the same file")
    write_private(tmp_path / "admin-token", TOKEN + "\n")  # a copy: the same token
    copy = config_dir(tmp_path, api='read_token_file = "read-token"\n'
                                    'admin_token_file = "admin-token"')
    refused(cli("run", "-c", copy), f"{copy}: api.read_token_file and api.admin_token_file "
                                    "hold the same token")


def test_token_problems_name_the_file_never_the_token(cli: Cli, tmp_path: Path) -> None:
    config = config_dir(tmp_path, api='read_token_file = "read-token"')
    token = tmp_path / "read-token"
    refused(cli("run", "-c", config), f"{config}: api.read_token_file: {token}: cannot read")
    write_private(token, TOKEN[:20] + " " + TOKEN[20:])
    refused(cli("run", "-c", config), f"{token}: the token may hold only printable ASCII")


@pytest.mark.parametrize("problem", ["missing", "mode 0644", "16 bytes"])
def test_kek_file_problems_are_config_errors(cli: Cli, tmp_path: Path, problem: str) -> None:
    config = config_dir(tmp_path)
    kek = tmp_path / "kek"
    expected = {"missing": "cannot read (No such file or directory)",
                "mode 0644": "mode 0644 lets group or others access it",
                "16 bytes": "expected 32 bytes, found 16"}[problem]
    if problem == "missing":
        kek.unlink()
    elif problem == "mode 0644":
        kek.chmod(0o644)
    else:
        write_private(kek, "k" * 16)
    refused(cli("run", "-c", config), f"{config}: store.kek_file: key-encryption key {kek}: "
                                      f"{expected}")


def test_a_database_that_is_not_sqlite_is_a_config_error(cli: Cli, tmp_path: Path) -> None:
    config = config_dir(tmp_path)
    database = tmp_path / "state" / "inventory.db"
    database.parent.mkdir()
    database.write_text("these are not the droids you are looking for\n")
    refused(cli("run", "-c", config),
            f"{config}: store.database: {database} is not an SQLite database")
    assert database.read_text().startswith("these are not")  # left as it was


def test_db_commands_name_a_file_that_is_not_sqlite(cli: Cli, tmp_path: Path) -> None:
    config = config_dir(tmp_path)
    database = tmp_path / "state" / "inventory.db"
    database.parent.mkdir()
    database.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    refused(cli("db", "status", "--database", database),
            f"sealfleet: error: {database} is not an SQLite database")
    refused(cli("db", "migrate", "-c", config),
            f"{config}: store.database: {database} is not an SQLite database")


def _without_root_privileges() -> None:
    """In the child, before exec: drop root's licence to ignore file modes.

    Runs only when the tests run as root (as in containers), where a mode 0555
    directory would otherwise still be writable.  Capabilities leave the bounding set
    (prctl PR_CAPBSET_DROP), so the exec'd daemon does not get them back.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_state_directory_is_a_config_error(tmp_path: Path) -> None:
    config = config_dir(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # 0550
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sealfleet", "run", "-c", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
            env={k: v for k, v in os.environ.items() if k != "SEALFLEET_DEBUG"},
            preexec_fn=_without_root_privileges if os.geteuid() == 0 else None)
    finally:
        state.chmod(0o700)
    assert "Traceback" not in result.stderr
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"sealfleet: error: {config}: store.database: directory {state} "
                           "is not writable (Permission denied)"), line
    assert list(state.iterdir()) == []


def test_an_api_port_in_use_is_a_config_error(cli: Cli, tmp_path: Path) -> None:
    write_private(tmp_path / "read-token", TOKEN)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = config_dir(tmp_path, api=f'listen = "127.0.0.1:{port}"\n'
                                          'read_token_file = "read-token"')
        line = refused(cli("run", "-c", config), f"{config}: api: cannot listen on "
                                                 f"127.0.0.1:{port}")
    assert "in use" in line
    assert not (tmp_path / "api.sock").exists()  # the socket bound first was cleaned up
