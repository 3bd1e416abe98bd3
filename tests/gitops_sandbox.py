"""The GitOps end-to-end tests' sandbox: two clusters, part of each applied by the
emulated Flux from the sandbox's repository, and the daemon's settings for it."""

from __future__ import annotations

import contextlib
import subprocess
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

from sealfleet.app import config
from sealfleet.sandbox import Sandbox, SeedSpec
from sealfleet.sandbox.gitops import git_env

SPEC = SeedSpec(namespaces=2, sealed_secrets=6, keys=2, seed=11, key_bits=2048,
                gitops_fraction=0.5)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=git_env(), check=True,
                          capture_output=True).stdout.decode()


@contextlib.asynccontextmanager
async def flux_sandbox(root: Path) -> AsyncIterator[Sandbox]:
    """Quick Flux and controller timings, so a merge reaches the clusters in seconds."""
    async with Sandbox(root, clusters=2, seed=SPEC, seed_processes=0,
                       bookmark_interval=0.3, crash_backoff=(0.1, 0.5), startup_delay=0.2,
                       flux_interval=0.5, flux_source_interval=0.2) as started:
        yield started


def settings_of(sandbox: Sandbox) -> config.Settings:
    """The sandbox's own config (its [[repos]] entry included), in master mode, with the
    tree rescanned every second rather than every minute."""
    data = tomllib.loads(sandbox.config.read_text())
    data["fleet"] = {"master": True, "key_bits": 2048}
    (repo,) = data["repos"]
    repo["rescan_interval"] = "1s"
    return config.settings_from_mapping(data, base_dir=sandbox.config.parent)
