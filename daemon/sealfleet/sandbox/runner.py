"""Starting and stopping a whole sandbox, and the files it leaves in its state directory.

Order matters and is what a real fleet looks like when a client arrives: the objects
(install manifests, key Secrets, seeded SealedSecrets with their Secrets) exist first,
then the apiservers listen, then the controllers start and load their keys, and only
when every controller serves is ``DIR/ready`` written.  On exit ``ready`` goes first,
then the controllers and apiservers stop.

With ``SeedSpec.gitops_fraction`` the seeded objects Flux applies are also written to a
GitOps repository (``DIR/gitops/remote.git``, bare, and ``DIR/gitops/clone``, the
user's checkout; :mod:`sealfleet.sandbox.gitops`), each cluster runs an emulated Flux
(:mod:`sealfleet.sandbox.flux`) on it, whose first pass is done before ``ready``, and
``sealfleet.toml`` gets the repository as ``[[repos]]``.

A thousand clusters fit in one process (one listener each; measured with
``bench/fleet.py``: start time is the seeding's RSA key generation, on every core).
Their apiservers share one :class:`ConnectionGauge`; :meth:`Sandbox.set_faults` reaches
them all at once (a fleet-wide outage), and ``sealfleet sandbox`` serves both on its
control socket (:mod:`sealfleet.sandbox.control`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from asyncio import sslproto
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from sealfleet.sandbox.apiserver.context import DEFAULT_BOOKMARK_INTERVAL
from sealfleet.sandbox.apiserver.listener import ConnectionGauge
from sealfleet.sandbox.cluster import SandboxCluster
from sealfleet.sandbox.control import ControlClient, process_memory_mb
from sealfleet.sandbox.controller import ControllerFlags
from sealfleet.sandbox.controller.workload import DEFAULT_STARTUP_DELAY
from sealfleet.sandbox.gitops import (
    FLUX_NAME_LABEL,
    GitOpsRepo,
    create_repository,
    repository_files,
)
from sealfleet.sandbox.kubeconfig import KubeconfigContext, write_kubeconfig
from sealfleet.sandbox.seeding import Seeder, SeedSpec
from sealfleet.sandbox.tls import CertificateAuthority

_log = structlog.get_logger(__name__)

RSA_THREADS = 2
SEALED = "sealedsecrets.bitnami.com"
REPO_NAME = "gitops"
FLUX_INTERVAL = 600.0        # the Kustomization's spec.interval: 10m, as flux bootstrap
FLUX_SOURCE_INTERVAL = 60.0  # the GitRepository's: 1m, as flux bootstrap
# asyncio gives every TLS connection a receive buffer of ``SSLProtocol.max_size`` bytes
# (256 KiB in CPython 3.11 to 3.13) for as long as it is open; a daemon holds two or
# three connections to each cluster, so a 1,000-cluster sandbox held 0.7 GB of buffers
# for requests of a few hundred bytes.  16 KiB is one TLS record.
TLS_RECEIVE_BUFFER = 16 * 1024


def _write_private(path: Path, data: bytes) -> None:
    """Create (or replace) a file readable by its owner only, never wider in between."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_parts(path: Path, parts: Sequence[bytes]) -> None:
    with path.open("wb") as handle:
        handle.writelines(parts)


def repo_config(cluster_names: Sequence[str], path: str) -> list[str]:
    """The ``[[repos]]`` entry of the GitOps repository: ``clusters/<name>/`` is meant
    for that cluster alone (its key opens it), so one rule per cluster."""
    lines = ["", "[[repos]]", f'name = "{REPO_NAME}"', f"path = {json.dumps(path)}",
             'remote = "origin"', "push = true", 'base_branch = "main"',
             "clusters = [" + ", ".join(json.dumps(n) for n in cluster_names) + "]"]
    for name in cluster_names:
        lines += ["", "[[repos.rules]]", f"paths = [{json.dumps(f'clusters/{name}/**')}]",
                  f"clusters = [{json.dumps(name)}]"]
    return lines


def daemon_config(cluster_names: Sequence[str], *, master_keys: Sequence[str] = (),
                  key_renew_period: str = "30d", repo_path: str | None = None) -> str:
    """``sealfleet.toml`` for these clusters (the daemon config), paths relative to DIR."""
    lines = [
        "# Written by `sealfleet sandbox`: a daemon config for the sandbox clusters.",
        "# Paths are relative to this file's directory.",
        "[store]",
        'database = "inventory.db"',
        'kek_file = "kek"',
        "",
        "[api]",
        'socket = "api.sock"',
        'read_token_file = "read-token"',
        'admin_token_file = "admin-token"',
        "",
        "[policy]",
        f'key_renew_period = "{key_renew_period}"',
        'cert_expiry_warning = "30d"',
        "",
        "[fleet]",
        "master_keys = [" + ", ".join(json.dumps(k) for k in master_keys) + "]",
        "",
        "[logging]",
        'format = "auto"',
        'level = "info"',
    ]
    for name in cluster_names:
        lines += ["", "[[clusters]]", f'name = "{name}"', 'kubeconfig = "kubeconfig"',
                  f'context = "{name}"', 'controller_namespace = "kube-system"',
                  'controller_name = "sealed-secrets-controller"', "read_key_secrets = true"]
    if repo_path is not None:
        lines += repo_config(cluster_names, repo_path)
    return "\n".join(lines) + "\n"


class Sandbox:
    """N emulated clusters in this event loop; an async context manager."""

    def __init__(self, state_dir: str | os.PathLike[str], *, clusters: int = 1,
                 seed: SeedSpec | None = None, flags: ControllerFlags | None = None,
                 cluster_flags: dict[str, ControllerFlags] | None = None,
                 crash_backoff: tuple[float, float] = (10.0, 300.0),
                 seed_processes: int | None = None,
                 bookmark_interval: float = DEFAULT_BOOKMARK_INTERVAL,
                 startup_delay: float = DEFAULT_STARTUP_DELAY,
                 flux_interval: float = FLUX_INTERVAL,
                 flux_source_interval: float = FLUX_SOURCE_INTERVAL,
                 flux_prune: bool = True) -> None:
        if clusters < 1:
            raise ValueError("a sandbox needs at least one cluster")
        self.state_dir = Path(state_dir)
        self.names = [f"sandbox-{i + 1}" for i in range(clusters)]
        self._seed = seed
        self._flags = flags
        self._cluster_flags = cluster_flags or {}
        self._crash_backoff = crash_backoff
        self._seed_processes = seed_processes
        self._bookmark_interval = bookmark_interval
        self._startup_delay = startup_delay
        self._flux = (flux_interval, flux_source_interval, flux_prune)
        self.gitops: GitOpsRepo | None = None
        self.clusters: dict[str, SandboxCluster] = {}
        self.connections = ConnectionGauge()  # every cluster's apiserver counts here
        self.seed_record: dict[str, Any] | None = None
        self.timings: dict[str, float] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------- file paths

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def config(self) -> Path:
        return self.state_dir / "sealfleet.toml"

    @property
    def ready_file(self) -> Path:
        return self.state_dir / "ready"

    @property
    def seed_file(self) -> Path:
        return self.state_dir / "seed.json"

    def cluster(self, name: str) -> SandboxCluster:
        return self.clusters[name]

    def requests(self) -> Counter[tuple[str, str]]:
        """Requests every apiserver received, by (verb, resource)."""
        total: Counter[tuple[str, str]] = Counter()
        for cluster in self.clusters.values():
            total.update(cluster.api.ctx.requests)
        return total

    async def set_faults(self, changes: Mapping[str, Any], *,
                         clusters: Sequence[str] | None = None) -> None:
        """Apply fault settings to every cluster (or those named) at once.

        All or nothing: settings one cluster rejects are rejected before any applies
        (``ApiError``); an unknown cluster name is a ``KeyError``.
        """
        targets = [self.clusters[name] for name in clusters] if clusters is not None \
            else list(self.clusters.values())
        for cluster in targets:
            cluster.api.faults.updated(dict(changes))  # validates; raises ApiError
        await asyncio.gather(*(c.api.set_faults(**changes) for c in targets))

    def stats(self) -> dict[str, Any]:
        rss, peak = process_memory_mb()
        return {"clusters": len(self.clusters), **{k: round(v, 2) for k, v in
                                                   self.timings.items()},
                "rss_mb": round(rss, 1), "peak_rss_mb": round(peak, 1)}

    # --------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Sandbox:
        started = time.perf_counter()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        self.timings["start_seconds"] = time.perf_counter() - started
        self.ready_file.write_text(f"{os.getpid()}\n")
        rss, peak = process_memory_mb()
        _log.info("sandbox_ready", clusters=len(self.clusters), state_dir=str(self.state_dir),
                  seconds=round(self.timings["start_seconds"], 2),
                  seed_seconds=round(self.timings.get("seed_seconds", 0.0), 2),
                  rss_mb=round(rss), peak_rss_mb=round(peak))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.ready_file.unlink(missing_ok=True)
        await self._stack.aclose()

    async def _start(self) -> None:
        if sslproto.SSLProtocol.max_size > TLS_RECEIVE_BUFFER:  # process-wide; only lowered
            sslproto.SSLProtocol.max_size = TLS_RECEIVE_BUFFER
        self._executor = ThreadPoolExecutor(max_workers=RSA_THREADS,
                                            thread_name_prefix="sandbox-rsa")
        self._stack.callback(self._executor.shutdown, wait=False, cancel_futures=True)
        ca = await asyncio.to_thread(CertificateAuthority.create)
        for name in self.names:
            self.clusters[name] = SandboxCluster(
                name, ca=ca, executor=self._executor,
                flags=self._cluster_flags.get(name, self._flags),
                crash_backoff=self._crash_backoff, bookmark_interval=self._bookmark_interval,
                startup_delay=self._startup_delay, connections=self.connections)
        if self._seed is not None:
            seeding_started = time.perf_counter()
            seeder = Seeder(self._seed, processes=self._seed_processes)
            self.seed_record = await seeder.seed([c.seed_target for c in self.clusters.values()])
            self.timings["seed_seconds"] = time.perf_counter() - seeding_started
            await asyncio.to_thread(_write_parts, self.seed_file,
                                    seeder.encoded(self.seed_record))
            if self._seed.gitops_fraction > 0:
                await self._start_gitops()
        for cluster in self.clusters.values():
            await self._stack.enter_async_context(cluster)
        await asyncio.gather(*(c.wait_serving() for c in self.clusters.values()))
        await asyncio.to_thread(self._write_files, ca)

    async def _start_gitops(self) -> None:
        """The repository of what Flux applies (the seeded objects with Flux's labels, as
        they are in the clusters), and each cluster's Flux on its remote."""
        applied = {}
        for name, cluster in self.clusters.items():
            objects, _ = cluster.store.list(SEALED, None)
            applied[name] = [o for o in objects
                             if FLUX_NAME_LABEL in (o["metadata"].get("labels") or {})]
        files = repository_files(applied)
        self.gitops = await asyncio.to_thread(create_repository, self.state_dir / "gitops",
                                              files)
        interval, source_interval, prune = self._flux
        for cluster in self.clusters.values():
            cluster.enable_flux(self.gitops.url, interval=interval,
                                source_interval=source_interval, prune=prune)

    def _write_files(self, ca: CertificateAuthority) -> None:
        contexts = []
        for name, cluster in self.clusters.items():
            contexts.append(KubeconfigContext(name, cluster.url, ca.cert_pem,
                                              cluster.tokens.admin))
        for name, cluster in self.clusters.items():
            contexts.append(KubeconfigContext(f"{name}-restricted", cluster.url, ca.cert_pem,
                                              cluster.tokens.restricted))
        write_kubeconfig(self.kubeconfig, contexts, current=self.names[0])
        for credential, size in (("kek", 32), ("read-token", 0), ("admin-token", 0)):
            path = self.state_dir / credential
            if not path.exists():
                data = os.urandom(32) if size else secrets.token_urlsafe(32).encode()
                _write_private(path, data)
        master = []
        if self._seed is not None and self._seed.shared_key and self.seed_record:
            first = next(iter(self.seed_record["clusters"].values()))
            master = [first["sealing_key"]]
        repo_path = (str(self.gitops.clone.relative_to(self.state_dir))
                     if self.gitops is not None else None)
        self.config.write_text(daemon_config(self.names, master_keys=master,
                                             repo_path=repo_path))


class SandboxProcess:
    """``sealfleet sandbox`` in a child process; a (sync) context manager for benchmarks."""

    def __init__(self, state_dir: str | os.PathLike[str], args: Sequence[str] = (),
                 *, timeout: float = 300.0) -> None:
        self.state_dir = Path(state_dir)
        self._args = list(args)
        self._timeout = timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_after: float | None = None
        self._log: Any = None

    def __enter__(self) -> SandboxProcess:
        (self.state_dir / "ready").unlink(missing_ok=True)
        command = [sys.executable, "-m", "sealfleet", "sandbox", "--state-dir",
                   str(self.state_dir), *self._args]
        started = time.perf_counter()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._log = (self.state_dir / "sandbox.log").open("wb")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        while not (self.state_dir / "ready").exists():
            if self.process.poll() is not None:
                self._log.close()
                error = (self.state_dir / "sandbox.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"sandbox exited with {self.process.returncode}: {error}")
            if time.perf_counter() - started > self._timeout:
                self.__exit__()
                raise TimeoutError("sandbox did not become ready")
            time.sleep(0.05)
        self.ready_after = time.perf_counter() - started
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def control(self) -> ControlClient:
        """The running sandbox's control socket (faults everywhere, counters, stats)."""
        return ControlClient.for_state_dir(self.state_dir)
