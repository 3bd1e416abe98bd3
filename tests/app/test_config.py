"""Config loading: typed settings, defaults from systemd's directories, one-line errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sealfleet.app.config import load_settings, parse_duration
from sealfleet.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
FP = "SHA256:" + "A" * 43


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sealfleet.toml"
    path.write_text(text)
    return path


def error_of(path: Path, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env or {})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_example_config_loads() -> None:
    settings = load_settings(REPO / "config" / "sealfleet.example.toml", env={})
    assert [c.name for c in settings.clusters] == ["prod-eu", "prod-us"]
    assert settings.clusters[1].read_key_secrets is False
    assert settings.policy.key_renew_period == dt.timedelta(days=30)
    assert settings.clusters[0].kubeconfig == REPO / "config" / "kubeconfig"


def test_contract_config_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
[store]
database = "inventory.db"
kek_file = "kek"
[api]
socket = "api.sock"
listen = "[::1]:8780"
read_token_file = "read-token"
admin_token_file = "/abs/admin-token"
[policy]
key_renew_period = "720h"
cert_expiry_warning = "15m"
[fleet]
master_keys = ["{FP}"]
[logging]
format = "json"
level = "debug"
[[clusters]]
name = "sandbox-1"
kubeconfig = "kubeconfig"
context = "sandbox-1"
""")
    s = load_settings(path, env={"RUNTIME_DIRECTORY": "/run/x"})
    assert s.store.database == tmp_path / "inventory.db"
    assert s.store.kek_file == tmp_path / "kek"
    assert s.api.socket == tmp_path / "api.sock"
    assert s.api.listen_address == ("::1", 8780)
    assert s.api.read_token_file == tmp_path / "read-token"
    assert s.api.admin_token_file == Path("/abs/admin-token")
    assert s.policy.cert_expiry_warning == dt.timedelta(minutes=15)
    assert s.fleet.master_keys == (FP,)
    cluster = s.clusters[0]
    assert (cluster.kubeconfig, cluster.context) == (tmp_path / "kubeconfig", "sandbox-1")
    assert cluster.controller_namespace == "kube-system"
    assert cluster.controller_name == "sealed-secrets-controller"
    assert s.config_path == path


def test_defaults_follow_systemd_directories(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "kek").write_bytes(b"x" * 32)
    path = write(tmp_path, "")
    s = load_settings(path, env={"STATE_DIRECTORY": "/var/lib/sealfleet",
                                 "RUNTIME_DIRECTORY": "/run/sealfleet",
                                 "CREDENTIALS_DIRECTORY": str(creds)})
    assert s.store.database == Path("/var/lib/sealfleet/inventory.db")
    assert s.api.socket == Path("/run/sealfleet/api.sock")
    assert s.store.kek_file == creds / "kek"
    assert s.clusters == ()


def test_defaults_without_systemd_stay_next_to_the_config(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[api]\nsocket = ""\n'), env={})
    assert s.store.database == tmp_path / "sealfleet-state" / "inventory.db"
    assert s.store.kek_file == tmp_path / "kek"
    assert s.api.socket is None


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""), env={})
    with pytest.raises(Exception, match="frozen"):
        s.policy.key_renew_period = dt.timedelta(0)  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected"), [
    ('[[clusters]]\nname = "a"\nkubeconfig = "k"\n[[clusters]]\nname = "b"\n',
     "sealfleet.toml: clusters[1].kubeconfig: field required"),
    ('[policy]\nkey_renew_period = "30 days"\n', "policy.key_renew_period: invalid duration"),
    ('[policy]\nkey_renewal_period = "30d"\n', "policy.key_renewal_period: unknown key"),
    ('[stor]\n', "stor: unknown key"),
    ('[api]\nlisten = "127.0.0.1:8780"\n', "api: listen is set but read_token_file is not"),
    ('[api]\nlisten = "nonsense"\nread_token_file = "t"\n', "api.listen: invalid listen address"),
    ('[logging]\nformat = "xml"\n', "logging.format: input should be"),
    ('[fleet]\nmaster_keys = ["abc"]\n', "fleet.master_keys: \"abc\" is not a key fingerprint"),
    ('[[clusters]]\nname = "a b"\nkubeconfig = "k"\n', "clusters[0].name: invalid cluster name"),
    ('[[clusters]]\nname = "a"\nkubeconfig = "k"\n[[clusters]]\nname = "a"\nkubeconfig = "k"\n',
     'clusters: duplicate cluster name "a"'),
    ("[store\n", "sealfleet.toml: invalid TOML"),
])
def test_errors_name_the_file_and_key_path(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in error_of(write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    assert "cannot read config" in error_of(tmp_path / "nope.toml")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30d", 30 * 86400), ("720h", 720 * 3600), ("15m", 900), ("90s", 90), ("1h30m", 5400)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "1.5h", "-1d", "30 d", "1w"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
