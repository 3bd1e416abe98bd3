"""`sealfleet run` with credentials laid out as systemd's ``LoadCredential=`` lays them out.

With ``DynamicUser=`` (the shipped unit), systemd writes each credential root-owned with
mode 0400 and grants the service user read access with a POSIX ACL entry, so ``stat``
shows mode 0440 (the ACL mask in the group bits).  A mode-bits-only "owner only" check
refused the KEK there; the ACL itself is what must be checked: access for us is fine,
for another user or a group it is not.  The ACLs are written as the kernel stores them
(the ``system.posix_acl_access`` attribute), so no setfacl is needed.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sealfleet.adapters.store import generate_kek_file

DEAD_KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: dead, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: dead, context: {cluster: dead, user: u}}]
current-context: dead
"""
UNDEFINED_ID = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, MASK, OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
READ = 4


def grant_read_by_acl(path: Path, uid: int) -> None:
    """``chmod 0400; setfacl -m u:<uid>:r``, as systemd's credential writer does."""
    path.chmod(0o400)
    entries = [(USER_OBJ, READ, UNDEFINED_ID), (USER, READ, uid), (GROUP_OBJ, 0, UNDEFINED_ID),
               (MASK, READ, UNDEFINED_ID), (OTHER, 0, UNDEFINED_ID)]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    try:
        os.setxattr(path, "system.posix_acl_access", acl)
    except OSError as exc:  # the file system under the temp directory has no ACLs
        pytest.skip(f"no POSIX ACLs on {path.parent}: {exc.strerror}")
    assert path.stat().st_mode & 0o777 == 0o440  # what a mode-bits check would refuse


def credentials_dir(tmp_path: Path, uid: int) -> Path:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    generate_kek_file(credentials / "kek")
    (credentials / "read-token").write_text("read-token-0123456789abcdef\n")
    (credentials / "admin-token").write_text("admin-token-0123456789abcdef\n")
    for name in ("kek", "read-token", "admin-token"):
        grant_read_by_acl(credentials / name, uid)
    return credentials


def write_config(tmp_path: Path, port: int) -> Path:
    (tmp_path / "kubeconfig").write_text(DEAD_KUBECONFIG)
    config = tmp_path / "sealfleet.toml"
    config.write_text(f"""
[store]
database = "state/inventory.db"
kek_file = "kek"
[api]
socket = ""
listen = "127.0.0.1:{port}"
read_token_file = "read-token"
admin_token_file = "admin-token"
[logging]
format = "json"
[[clusters]]
name = "alpha"
kubeconfig = "kubeconfig"
""")
    return config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sealfleet(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sealfleet", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.mark.slow
def test_systemd_credentials_with_an_acl_for_us_are_accepted(tmp_path: Path) -> None:
    credentials = credentials_dir(tmp_path, os.geteuid())
    config = write_config(tmp_path, free_port())
    env = {**{k: v for k, v in os.environ.items() if k != "SEALFLEET_DEBUG"},
           "CREDENTIALS_DIRECTORY": str(credentials), "NOTIFY_SOCKET": str(tmp_path / "notify")}
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.5)
    process = subprocess.Popen([sys.executable, "-m", "sealfleet", "run", "-c", str(config)],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "no READY=1 from the daemon"
            try:
                if "READY=1" in notify.recv(4096).decode().split("\n"):
                    break
            except TimeoutError:
                continue
        # The client reads the read token from the same credentials, through TCP.
        status = sealfleet("status", "-c", config, "-o", "json", env=env)
        assert status.returncode == 0, status.stderr
        assert '"name": "alpha"' in status.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
        notify.close()


def test_an_acl_that_lets_another_user_read_the_kek_is_refused(tmp_path: Path) -> None:
    other = 65534 if os.geteuid() != 65534 else 65533
    credentials = credentials_dir(tmp_path, other)
    config = write_config(tmp_path, free_port())
    kek = credentials / "kek"
    env = {**{k: v for k, v in os.environ.items() if k != "SEALFLEET_DEBUG"},
           "CREDENTIALS_DIRECTORY": str(credentials)}
    result = sealfleet("run", "-c", config, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"sealfleet: error: {config}: store.kek_file: key-encryption key {kek}: its ACL lets "
        f"other users or groups access it; run: setfacl -b {kek} && chmod 600 {kek}")
