"""The daemon's configuration: one TOML file, validated once into a frozen settings tree.

Why a typed tree rather than a dict: a bad value must stop the daemon at start with one
line naming the file and the key path (``sealfleet.toml: clusters[1].kubeconfig: field
required``), never surface as a KeyError minutes later in a worker.  Unknown keys are
errors too, so a typo cannot silently fall back to a default.

Paths are resolved against the directory of the config file, so a config and its
kubeconfig/KEK/token files can move together.  Defaults follow systemd's directories:
``$STATE_DIRECTORY`` for the database, ``$RUNTIME_DIRECTORY`` for the API socket, and
``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``) for the KEK and tokens.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sealfleet.adapters.git import globs
from sealfleet.app.config_values import (
    Duration,
    PositiveDuration,
    parse_duration,
    quoted,
    split_listen,
)
from sealfleet.errors import ConfigError

__all__ = [  # the value helpers are re-exported: callers import settings from one place
    "ApiSettings", "BackupSettings", "ClusterSettings", "Duration", "FleetSettings",
    "LoggingSettings", "PolicySettings", "PositiveDuration", "RepoRule", "RepoSettings",
    "ServiceSettings", "Settings",
    "StoreSettings", "format_validation_error", "load_settings", "parse_duration",
    "settings_from_mapping", "split_listen"]

_FALLBACK_STATE_DIR = "sealfleet-state"  # next to the config file when not under systemd

_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
# Cluster names appear in URLs, metric labels and log context: keep them DNS-label-like.
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _context(info: ValidationInfo) -> Mapping[str, Any]:
    return info.context or {}


def _base_dir(info: ValidationInfo) -> Path:
    return Path(_context(info).get("base_dir", "."))


def _env(info: ValidationInfo, name: str) -> str | None:
    env: Mapping[str, str] = _context(info).get("env", {})
    value = env.get(name)
    return value or None


def _path_text(value: object) -> str:
    if not isinstance(value, str | Path):
        raise ValueError("expected a file path string")
    text = str(value)
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    return text


def _resolve(value: str | Path, info: ValidationInfo) -> Path:
    path = Path(os.path.expanduser(_path_text(value)))
    return path if path.is_absolute() else (_base_dir(info) / path).resolve()


def _resolve_credential(value: str | Path, info: ValidationInfo) -> Path:
    """Where a credential file (KEK, token) really is: the one place this is decided.

    A bare file name is looked up in ``$CREDENTIALS_DIRECTORY`` first (systemd
    ``LoadCredential=``), when that directory holds it; anything else, and a bare name
    not found there, resolves like every other path (against the config's directory).
    The KEK loader and the token reader take the resolved path as given.
    """
    text = _path_text(value)
    credentials = _env(info, "CREDENTIALS_DIRECTORY")
    if credentials and os.sep not in text and text not in (".", ".."):
        candidate = Path(credentials) / text
        if candidate.exists():
            return candidate
    return _resolve(text, info)


class StoreSettings(_Section):
    """``[store]``: where the inventory lives and the key that encrypts private keys in it."""

    database: Path = Field(default=None, validate_default=True)
    """SQLite file.  Default ``$STATE_DIRECTORY/inventory.db`` (systemd ``StateDirectory=``),
    else ``sealfleet-state/inventory.db`` next to the config file."""

    kek_file: Path = Field(default=Path("kek"), validate_default=True)
    """Key-encryption key: 32 random bytes, owner-only (mode 0600, or systemd's credential
    ACL), checked at start.  Default ``kek``: ``$CREDENTIALS_DIRECTORY/kek`` under systemd
    ``LoadCredential=``, else next to the config file."""

    @field_validator("database", mode="before")
    @classmethod
    def _database(cls, value: str | Path | None, info: ValidationInfo) -> Path:
        if value is None:
            state = _env(info, "STATE_DIRECTORY")
            # systemd may pass several colon-separated directories; the first is ours.
            base = Path(state.split(":")[0]) if state else _base_dir(info) / _FALLBACK_STATE_DIR
            return (base / "inventory.db").resolve()
        if str(value) == "":
            raise ValueError("must not be empty")
        return _resolve(value, info)

    @field_validator("kek_file", mode="before")
    @classmethod
    def _kek(cls, value: str | Path, info: ValidationInfo) -> Path:
        if str(value) == "":
            raise ValueError("must not be empty")
        return _resolve_credential(value, info)


class ApiSettings(_Section):
    """``[api]``: where the read API listens and which tokens guard TCP access."""

    socket: Path | None = Field(default=None, validate_default=True)
    """Unix socket (mode 0660, no token: file permissions are the access control).
    Default ``$RUNTIME_DIRECTORY/api.sock`` (systemd ``RuntimeDirectory=``), else
    ``sealfleet-state/api.sock`` next to the config file.  ``""`` disables it."""

    listen: str | None = None
    """Optional TCP listener ``host:port`` (``[::1]:8780`` for IPv6).  Off by default:
    TCP is reachable by every local user, so it requires ``read_token_file``."""

    read_token_file: Path | None = None
    """Bearer token for GET requests over TCP.  A bare name is looked up in
    ``$CREDENTIALS_DIRECTORY`` first.  Owner-only like the KEK, at least 16 printable
    ASCII characters; checked at start (:mod:`sealfleet.app.preflight`)."""

    admin_token_file: Path | None = None
    """Bearer token reserved for mutating endpoints (later releases).  Same rules, and
    never the read token's file or value: the read token must not grant admin."""

    @field_validator("socket", mode="before")
    @classmethod
    def _socket(cls, value: str | Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            runtime = _env(info, "RUNTIME_DIRECTORY")
            base = (Path(runtime.split(":")[0]) if runtime
                    else _base_dir(info) / _FALLBACK_STATE_DIR)
            return (base / "api.sock").resolve()
        if str(value) == "":
            return None
        return _resolve(value, info)

    @field_validator("read_token_file", "admin_token_file", mode="before")
    @classmethod
    def _token(cls, value: str | Path | None, info: ValidationInfo) -> Path | None:
        if value is None or str(value) == "":
            return None
        return _resolve_credential(value, info)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        split_listen(value)
        return value

    @model_validator(mode="after")
    def _tcp_needs_token(self) -> ApiSettings:
        if self.listen is not None and self.read_token_file is None:
            raise ValueError("listen is set but read_token_file is not: "
                             "a TCP listener requires a bearer token")
        return self

    @model_validator(mode="after")
    def _tokens_are_separate(self) -> ApiSettings:
        read, admin = self.read_token_file, self.admin_token_file
        if read is not None and admin is not None \
                and os.path.realpath(read) == os.path.realpath(admin):
            raise ValueError(f"read_token_file and admin_token_file are the same file "
                             f"({read}): the read token would also grant admin")
        return self

    @property
    def listen_address(self) -> tuple[str, int] | None:
        return split_listen(self.listen) if self.listen else None


class PolicySettings(_Section):
    """``[policy]``: when a key counts as stale."""

    key_renew_period: PositiveDuration = dt.timedelta(days=30)
    """A sealing key older than this is stale.  Default 30d: the controller's own
    ``--key-renew-period`` default (720h)."""

    cert_expiry_warning: Duration = dt.timedelta(days=30)
    """A sealing certificate expiring within this window is stale.  Default 30d: enough
    time to renew and reseal before kubeseal starts refusing the certificate."""


class FleetSettings(_Section):
    """``[fleet]``: the key set every cluster should hold, and how workers pace themselves."""

    master_keys: tuple[str, ...] = ()
    """Fingerprints (``SHA256:...``) of the fleet master key set.  Empty (default) turns
    the drift check off: without a declared set there is nothing to drift from.  Not with
    ``master = true``, where sealfleet makes and renews the master keys itself."""

    master: StrictBool = False
    """Master mode: every cluster holds every fleet master key as a key Secret, and the
    newest one is every controller's sealing key.  sealfleet generates the first one
    (``keys sync``), renews it every ``[policy] key_renew_period`` and keeps the clusters
    in step.  Default false: sealfleet observes and backs up, renews nothing."""

    auto_reseal: StrictBool = False
    """After each renewal, reseal every stale SealedSecret with the new key (a reseal job).
    Default false: a reseal is a user's decision."""

    auto_relabel: StrictBool = True
    """Master mode: when a reseal's relabel of a compromised key was skipped because
    in-cluster SealedSecrets still used it (GitOps-managed ones, resealed on a pending
    branch), relabel it ``compromised`` by itself (a ``relabel`` job, actor
    ``scheduler``) once the inventory shows none in the clusters (the branch was merged
    and applied).  Default true: it finishes the compromise response the reseal began;
    false leaves the key loaded until the next reseal."""

    key_bits: Literal[2048, 3072, 4096] = 4096
    """RSA size of the master keys sealfleet generates.  Default 4096: the controller's."""

    restart_concurrency: int = Field(default=64, ge=1, le=256)
    """Clusters whose key Secrets are written and controllers restarted at once after a
    key change.  A restart re-unseals every SealedSecret of its own cluster (its load is
    that cluster's), never two controllers of one cluster at once; the bound protects
    the daemon, which mostly waits meanwhile (about 25 ms of its CPU per cluster).
    Default 64: a renewal of 50 clusters is one round of restarts, not two
    (bench/keys.py)."""

    connect_concurrency: int = Field(default=32, ge=1, le=1024)
    """Clusters connecting and scanning at once, fleet-wide: from a cluster's first
    connection attempt until its watches stream (fewer while the event loop runs late:
    ``app.connect_gate``).  Default 32: enough to keep the RSA workers fed and hide
    apiserver round trips, few enough that a first pass over 1,000 clusters, or all of
    them reconnecting after an outage, keeps the API and the watchdog responsive.  16
    measured 12-15 % slower first passes and 10 % more CPU (bench/fleet.py, 300 and
    1,000 clusters: with more clusters in flight each turn of the loop and each RSA job
    does more), with the API's p99 under 10 ms either way.  Read at start."""

    resync_interval: PositiveDuration = dt.timedelta(minutes=10)
    """Full relist period on top of watches, seconds-precision.  Default 10m: cheap with
    the attribution cache and bounds how long a missed watch event can hide."""

    backoff_initial: PositiveDuration = dt.timedelta(seconds=1)
    """First retry delay after a cluster fails.  Default 1s."""

    backoff_max: PositiveDuration = dt.timedelta(minutes=5)
    """Cap of the exponential backoff.  Default 5m: a dead cluster is retried often
    enough to notice recovery, rarely enough not to flood logs or the apiserver."""

    request_timeout: PositiveDuration = dt.timedelta(seconds=30)
    """Per-request timeout towards an apiserver (not watches).  Default 30s."""

    @field_validator("master_keys")
    @classmethod
    def _fingerprints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if not _FINGERPRINT.match(item):
                raise ValueError(f"{quoted(item)} is not a key fingerprint "
                                 "(SHA256:<43 base64 chars>)")
        return value

    @model_validator(mode="after")
    def _backoff_in_order(self) -> FleetSettings:
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must not be shorter than backoff_initial")
        if self.master and self.master_keys:
            raise ValueError("master_keys cannot be set with master = true: in master mode "
                             "sealfleet makes and keeps the master key set")
        return self

    # Seconds as floats, for the workers and the retry helper (which count in seconds):
    # the defaults above are the only ones, so callers never repeat them.

    @property
    def resync_interval_seconds(self) -> float:
        return self.resync_interval.total_seconds()

    @property
    def request_timeout_seconds(self) -> float:
        return self.request_timeout.total_seconds()

    @property
    def backoff_initial_seconds(self) -> float:
        return self.backoff_initial.total_seconds()

    @property
    def backoff_max_seconds(self) -> float:
        return self.backoff_max.total_seconds()


class LoggingSettings(_Section):
    """``[logging]``."""

    format: Literal["auto", "json", "console"] = "auto"
    """``auto`` (default): JSON lines when stdout is not a terminal or under systemd
    (journald), the console renderer on a terminal."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Minimum level.  Default info: one line per state change and per scan summary."""


class ServiceSettings(_Section):
    """``[service]``: lifecycle bounds."""

    shutdown_timeout: PositiveDuration = dt.timedelta(seconds=20)
    """Total budget of the staged shutdown.  Default 20s: under systemd's
    ``TimeoutStopSec=30`` in the shipped unit, leaving room before SIGKILL."""

    @property
    def shutdown_timeout_seconds(self) -> float:
        return self.shutdown_timeout.total_seconds()


class ClusterSettings(_Section):
    """One ``[[clusters]]`` entry."""

    name: str
    """Unique name; used in URLs, metric labels and logs."""

    kubeconfig: Path
    """Kubeconfig file (relative to the config file)."""

    context: str | None = None
    """Kubeconfig context; default: the file's current-context."""

    controller_namespace: str = "kube-system"
    """Namespace of the sealed-secrets controller.  Default: the upstream manifest's."""

    controller_name: str = "sealed-secrets-controller"
    """Deployment and Service name of the controller.  Default: the upstream manifest's."""

    read_key_secrets: StrictBool = True
    """``false`` = least-privilege mode: never read key Secrets; ask ``/v1/verify``
    instead.  A TOML boolean: ``"yes"`` or ``0`` is an error, not a guess."""

    restart: Literal["rollout", "delete-pods", "none"] = "rollout"
    """How the controller is made to load changed key Secrets: ``rollout`` (default, a
    ``kubectl rollout restart``), ``delete-pods`` where Flux or Argo CD manage the
    Deployment (they undo a restartedAt annotation), ``none`` when the controller runs
    with ``--watch-for-secrets`` and only keys are added."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CLUSTER_NAME.match(value):
            raise ValueError(f'invalid cluster name {quoted(value)}: use letters, digits, ".", "_" '
                             'and "-" (at most 63 characters)')
        return value

    @field_validator("kubeconfig", mode="before")
    @classmethod
    def _kubeconfig(cls, value: str | Path, info: ValidationInfo) -> Path:
        if str(value) == "":
            raise ValueError("must not be empty")
        return _resolve(value, info)


class BackupSettings(_Section):
    """``[backup]``: an encrypted backup of every key after each new key (app/backups.py).

    Off unless ``recipients_file`` or ``passphrase_file`` says how to encrypt."""

    dir: Path = Field(default=None, validate_default=True)
    """Where backups go (created mode 0700).  Default ``$STATE_DIRECTORY/backups``, else
    ``sealfleet-state/backups`` next to the config file."""

    keep: int = Field(default=10, ge=1, le=10000, strict=True)
    """How many backups to keep; older ones are deleted, oldest first.  Default 10:
    a key set rarely changes, so ten files reach far back."""

    recipients_file: Path | None = None
    """age recipients (``age1...``, ``ssh-ed25519``, ``ssh-rsa`` lines), not writable by
    group or others.  A bare name is looked up in ``$CREDENTIALS_DIRECTORY`` first."""

    passphrase_file: Path | None = None
    """A passphrase (at least 12 characters) in an owner-only file, instead of
    recipients.  A bare name is looked up in ``$CREDENTIALS_DIRECTORY`` first."""

    @field_validator("dir", mode="before")
    @classmethod
    def _dir(cls, value: str | Path | None, info: ValidationInfo) -> Path:
        if value is None:
            state = _env(info, "STATE_DIRECTORY")
            base = Path(state.split(":")[0]) if state else _base_dir(info) / _FALLBACK_STATE_DIR
            return (base / "backups").resolve()
        if str(value) == "":
            raise ValueError("must not be empty")
        return _resolve(value, info)

    @field_validator("recipients_file", "passphrase_file", mode="before")
    @classmethod
    def _encryption_file(cls, value: str | Path | None, info: ValidationInfo) -> Path | None:
        if value is None or str(value) == "":
            return None
        return _resolve_credential(value, info)

    @model_validator(mode="after")
    def _one_way_to_encrypt(self) -> BackupSettings:
        if self.recipients_file is not None and self.passphrase_file is not None:
            raise ValueError("recipients_file and passphrase_file are both set: an age file "
                             "is encrypted either to recipients or to a passphrase")
        if "dir" in self.model_fields_set and not self.enabled:
            raise ValueError("dir is set but neither recipients_file nor passphrase_file: "
                             "backups need one of them to be encrypted")
        return self

    @property
    def enabled(self) -> bool:
        return self.recipients_file is not None or self.passphrase_file is not None


def _globs(value: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in value:
        try:
            globs.compile_glob(pattern)
        except globs.GlobError as exc:
            raise ValueError(f"invalid pattern: {exc}") from None
    return value


# Git ref names (git check-ref-format), as far as a config needs them checked.
_REF_NAME = re.compile(r"^(?![/.-])(?!.*(?:\.\.|//|@\{|\.lock$|/$|\.$))"
                       r"[^\x00-\x20~^:?*\[\\\x7f]+$")


class RepoRule(_Section):
    """One ``[[repos.rules]]`` entry: files matching *paths* are meant for *clusters*
    instead of the repo's (the first rule that matches wins)."""

    paths: tuple[str, ...] = Field(min_length=1)
    """Patterns relative to the tree (``**`` for any depth)."""

    clusters: tuple[str, ...] = Field(min_length=1)
    """Names of ``[[clusters]]`` entries."""

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _globs(value)


class RepoSettings(_Section):
    """One ``[[repos]]`` entry: a GitOps working tree whose SealedSecrets are inventoried
    (read only: sealfleet never writes to it while scanning)."""

    name: str
    """Unique name; in the API, metrics and logs (``repo:<name>`` as attribution owner)."""

    path: Path
    """The working tree (relative to the config file); must exist.  A git work tree is
    listed with ``git ls-files`` (index and .gitignore respected), anything else walked."""

    remote: str | None = None
    """Name of one of the tree's remotes (e.g. ``origin``), for those that push reseals."""

    push: StrictBool = False
    """Whether reseals may be pushed to *remote*.  Default false."""

    base_branch: str | None = None
    """Branch the tree must have checked out to be scanned; another checkout is not
    scanned (the last inventory is kept, the report says why).  Default: any."""

    paths: tuple[str, ...] = ("**/*.yaml", "**/*.yml", "**/*.json")
    """Files to read, as patterns relative to the tree (``**`` matches any depth)."""

    clusters: tuple[str, ...] = Field(min_length=1)
    """``[[clusters]]`` whose keys open these files; their sealing key (or the fleet master
    key in master mode) reseals them.  A document's state is judged against them."""

    rules: tuple[RepoRule, ...] = ()
    """Finer rules per path: the first whose patterns match a file names its clusters."""

    ssh_key_file: Path | None = None
    """A deploy key (SSH private key, owner-only) for *remote*: passed to git by its path
    in ``GIT_SSH_COMMAND``, host keys checked (``known_hosts_file``, else ssh's own).  A
    bare name is looked up in systemd's ``$CREDENTIALS_DIRECTORY`` first."""

    known_hosts_file: Path | None = None
    """The SSH host keys *remote* must present (``UserKnownHostsFile``)."""

    token_file: Path | None = None
    """A token (first line of an owner-only file) for an HTTPS *remote*: git asks for it
    through ``GIT_ASKPASS``, so it is never in an argv, a URL or a log."""

    token_username: str = "x-access-token"  # noqa: S105 - a user name, not a secret
    """The user name sent with *token_file* (GitHub's; GitLab and Gitea take any name)."""

    rescan_interval: PositiveDuration = dt.timedelta(minutes=1)
    """How often the tree is listed again (also on SIGHUP).  Default 1m: listing costs one
    ``git ls-files`` and a stat per file; only changed files are read."""

    @field_validator("paths")
    @classmethod
    def _paths(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _globs(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CLUSTER_NAME.match(value):
            raise ValueError(f'invalid repo name {quoted(value)}: use letters, digits, ".", "_" '
                             'and "-" (at most 63 characters)')
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: str | Path, info: ValidationInfo) -> Path:
        if str(value) == "":
            raise ValueError("must not be empty")
        path = _resolve(value, info)
        if not path.is_dir():
            raise ValueError(f"{quoted(str(path))} is not an existing directory")
        return path

    @field_validator("ssh_key_file", "known_hosts_file", "token_file", mode="before")
    @classmethod
    def _credential(cls, value: str | Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        return _resolve_credential(value, info)

    @field_validator("remote", "base_branch")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None and not _REF_NAME.match(value):
            raise ValueError(f"{quoted(value)} is not a valid git name")
        return value

    @model_validator(mode="after")
    def _push_needs_remote(self) -> RepoSettings:
        if self.push and self.remote is None:
            raise ValueError("push is true but no remote is named")
        return self

    def clusters_for(self, path: str) -> tuple[str, ...]:
        """The clusters a file of this tree is meant for (first matching rule, else the
        repo's own)."""
        for rule in self.rules:
            if globs.matcher(rule.paths)(path):
                return rule.clusters
        return self.clusters

    @property
    def rescan_interval_seconds(self) -> float:
        return self.rescan_interval.total_seconds()


class Settings(_Section):
    """The whole validated configuration."""

    config_path: Path | None = None
    """The file these settings came from (set by :func:`load_settings`)."""

    store: StoreSettings = Field(default_factory=lambda: StoreSettings())
    api: ApiSettings = Field(default_factory=lambda: ApiSettings())
    policy: PolicySettings = Field(default_factory=PolicySettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    service: ServiceSettings = Field(default_factory=ServiceSettings)
    backup: BackupSettings = Field(default_factory=lambda: BackupSettings())
    clusters: tuple[ClusterSettings, ...] = ()
    repos: tuple[RepoSettings, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _sections_see_context(cls, data: Any) -> Any:
        # Default factories do not see the validation context; give every section an
        # explicit (possibly empty) table so its env-dependent defaults are validated.
        if isinstance(data, dict):
            data = dict(data)
            for section in ("store", "api", "backup"):
                data.setdefault(section, {})
        return data

    @field_validator("clusters")
    @classmethod
    def _unique(cls, value: tuple[ClusterSettings, ...]) -> tuple[ClusterSettings, ...]:
        seen: set[str] = set()
        for cluster in value:
            if cluster.name in seen:
                raise ValueError(f"duplicate cluster name {quoted(cluster.name)}")
            seen.add(cluster.name)
        return value

    @model_validator(mode="after")
    def _repos_name_clusters(self) -> Settings:
        known = {c.name for c in self.clusters}
        seen: set[str] = set()
        for index, repo in enumerate(self.repos):
            if repo.name in seen:
                raise ValueError(f"repos[{index}].name: duplicate repo name {quoted(repo.name)}")
            seen.add(repo.name)
            named = [(f"repos[{index}].clusters", repo.clusters)] + [
                (f"repos[{index}].rules[{r}].clusters", rule.clusters)
                for r, rule in enumerate(repo.rules)]
            for key, clusters in named:
                for name in clusters:
                    if name not in known:
                        raise ValueError(f"{key}: {quoted(name)} is not a configured cluster")
        return self

    def cluster(self, name: str) -> ClusterSettings | None:
        return next((c for c in self.clusters if c.name == name), None)


def load_settings(path: str | Path, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate *path*.  Raises :class:`ConfigError` with one line on any problem."""
    path = Path(path)
    label = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read config: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from exc
    return settings_from_mapping(data, base_dir=path.resolve().parent, env=env,
                                 label=label, config_path=path.resolve())


def settings_from_mapping(data: Mapping[str, Any], *, base_dir: Path,
                          env: Mapping[str, str] | None = None, label: str = "<config>",
                          config_path: Path | None = None) -> Settings:
    """Validate an already-parsed TOML table (used by tests and by the demo)."""
    if "config_path" in data:
        raise ConfigError(f"{label}: config_path: unknown key")
    context = {"base_dir": base_dir, "env": dict(os.environ if env is None else env)}
    try:
        return Settings.model_validate({**data, "config_path": config_path}, context=context)
    except ValidationError as exc:
        raise ConfigError(f"{label}: {format_validation_error(exc)}") from None


def format_validation_error(exc: ValidationError) -> str:
    """All problems on one line: ``clusters[1].kubeconfig: field required; ...``."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        key = _key_path(error["loc"])
        problems.append(f"{key}: {_message(error['type'], error['msg'])}" if key
                        else _message(error["type"], error["msg"]))
    # Key names come from the file and may hold anything TOML allows: keep one line.
    return "; ".join(problems).replace("\r", "\\r").replace("\n", "\\n")


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "literal[")) or part in {"is-instance[Path]"}:
            continue  # pydantic's internal branch names, not config keys
        else:
            out += f".{part}" if out else part
    return out


def _message(kind: str, msg: str) -> str:
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "field required"
    if kind == "bool_type":
        return "expected true or false (a TOML boolean, without quotes)"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg[:1].lower() + msg[1:]
