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


@pytest.mark.parametrize("text", ["", "30", "d", "1.5h", "-1d", "30 d", "1w", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("section", "key"), [
    ("fleet", "resync_interval"), ("fleet", "request_timeout"), ("fleet", "backoff_initial"),
    ("fleet", "backoff_max"), ("policy", "key_renew_period"), ("service", "shutdown_timeout")])
def test_a_zero_period_or_timeout_is_refused(tmp_path: Path, section: str, key: str) -> None:
    """A 0s resync relisted 36 times in 10 s; a 0s timeout or delay would spin likewise."""
    assert error_of(write(tmp_path, f'[{section}]\n{key} = "0s"\n')) == (
        f"{tmp_path / 'sealfleet.toml'}: {section}.{key}: must be longer than 0s")


def test_a_zero_warning_window_is_allowed(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[policy]\ncert_expiry_warning = "0s"\n'), env={})
    assert s.policy.cert_expiry_warning == dt.timedelta(0)


@pytest.mark.parametrize("value", ["99999999999999d", "36501d", "876001h",
                                   "9" * 5000 + "s", "36500d1s"])
def test_durations_beyond_100_years_are_one_clear_error(tmp_path: Path, value: str) -> None:
    """99999999999999d gave ``internal error (OverflowError)``."""
    assert error_of(write(tmp_path, f'[policy]\nkey_renew_period = "{value}"\n')) == (
        f"{tmp_path / 'sealfleet.toml'}: policy.key_renew_period: "
        "must be at most 36500d (100 years)")


def test_the_longest_duration_is_100_years(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[service]\nshutdown_timeout = "36500d"\n'), env={})
    assert s.service.shutdown_timeout == dt.timedelta(days=36500)


def test_backoff_cap_below_its_first_step_is_refused(tmp_path: Path) -> None:
    text = '[fleet]\nbackoff_initial = "5m"\nbackoff_max = "1m"\n'
    assert "fleet: backoff_max must not be shorter than backoff_initial" in error_of(
        write(tmp_path, text))


@pytest.mark.parametrize("value", ['"yes"', '"true"', "0", "1", '"false"'])
def test_booleans_are_strict(tmp_path: Path, value: str) -> None:
    """``read_key_secrets = "yes"`` or ``0`` was coerced silently."""
    text = f'[[clusters]]\nname = "a"\nkubeconfig = "k"\nread_key_secrets = {value}\n'
    assert error_of(write(tmp_path, text)) == (
        f"{tmp_path / 'sealfleet.toml'}: clusters[0].read_key_secrets: "
        "expected true or false (a TOML boolean, without quotes)")


@pytest.mark.parametrize(("read", "admin"), [
    ("token", "token"), ("token", "./token"), ("token", "{dir}/token"), ("link", "token")])
def test_one_file_cannot_be_both_read_and_admin_token(tmp_path: Path, read: str,
                                                      admin: str) -> None:
    (tmp_path / "token").write_text("x" * 32)
    (tmp_path / "link").symlink_to(tmp_path / "token")
    text = (f'[api]\nread_token_file = "{read}"\n'
            f'admin_token_file = "{admin.format(dir=tmp_path)}"\n')
    message = error_of(write(tmp_path, text))
    assert message.startswith(f"{tmp_path / 'sealfleet.toml'}: api: read_token_file and "
                              "admin_token_file are the same file")
    assert "x" * 16 not in message


def test_values_in_errors_are_quoted_on_one_line(tmp_path: Path) -> None:
    text = '"odd\\nkey" = 1\n[[clusters]]\nname = "a\\nb"\nkubeconfig = "k"\n'
    message = error_of(write(tmp_path, text))  # error_of asserts there is no newline
    assert 'clusters[0].name: invalid cluster name "a\\nb"' in message
    assert "odd\\nkey: unknown key" in message


@pytest.mark.parametrize("value", ["5", "true", "[\"k\"]"])
def test_paths_must_be_strings(tmp_path: Path, value: str) -> None:
    text = f'[[clusters]]\nname = "a"\nkubeconfig = {value}\n'
    assert "clusters[0].kubeconfig: expected a file path string" in error_of(
        write(tmp_path, text))


def test_pacing_in_seconds_comes_from_the_settings_defaults(tmp_path: Path) -> None:
    """The one source of the workers' pacing defaults (fleet.py, retry.py repeat none)."""
    fleet = load_settings(write(tmp_path, ""), env={}).fleet
    assert (fleet.resync_interval_seconds, fleet.request_timeout_seconds,
            fleet.backoff_initial_seconds, fleet.backoff_max_seconds) == (600.0, 30.0, 1.0,
                                                                          300.0)
    custom = load_settings(write(tmp_path, '[fleet]\nresync_interval = "1h30m"\n'
                                           'request_timeout = "5s"\n[service]\n'
                                           'shutdown_timeout = "12s"\n'), env={})
    assert custom.fleet.resync_interval_seconds == 5400.0
    assert custom.fleet.request_timeout_seconds == 5.0
    assert custom.service.shutdown_timeout_seconds == 12.0


def test_bare_credential_names_resolve_in_credentials_directory_first(tmp_path: Path) -> None:
    """The one place credential files are looked up (the KEK loader takes the result)."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("kek", "read-token"):
        (credentials / name).write_bytes(b"x")
    env = {"CREDENTIALS_DIRECTORY": str(credentials)}
    text = '[api]\nread_token_file = "read-token"\nadmin_token_file = "admin-token"\n'
    s = load_settings(write(tmp_path, text), env=env)
    assert s.store.kek_file == credentials / "kek"
    assert s.api.read_token_file == credentials / "read-token"
    assert s.api.admin_token_file == tmp_path / "admin-token"   # not there: next to config
    dotted = load_settings(write(tmp_path, '[store]\nkek_file = "./kek"\n'), env=env)
    assert dotted.store.kek_file == tmp_path / "kek"             # not a bare name
    assert load_settings(write(tmp_path, ""), env={}).store.kek_file == tmp_path / "kek"


def test_repo_credentials_are_credential_files(tmp_path: Path) -> None:
    """A [[repos]] deploy key or token: a bare name from systemd's credentials first."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "deploy-key").write_bytes(b"x")
    (tmp_path / "tree").mkdir()
    text = ('[[clusters]]\nname = "prod"\nkubeconfig = "kc"\n'
            '[[repos]]\nname = "gitops"\npath = "tree"\nclusters = ["prod"]\n'
            'remote = "origin"\npush = true\nssh_key_file = "deploy-key"\n'
            'known_hosts_file = "known_hosts"\ntoken_file = "token"\n')
    repo, = load_settings(write(tmp_path, text),
                          env={"CREDENTIALS_DIRECTORY": str(credentials)}).repos
    assert repo.ssh_key_file == credentials / "deploy-key"
    assert repo.known_hosts_file == tmp_path / "known_hosts"
    assert repo.token_file == tmp_path / "token"
    assert repo.token_username == "x-access-token"
