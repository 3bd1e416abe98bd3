"""Emulated Kubernetes clusters with a sealed-secrets controller, for tests, demos, benchmarks.

``Sandbox`` runs N :class:`~sealfleet.sandbox.cluster.SandboxCluster` s in the current
event loop and writes, into its state directory, everything a user or the daemon needs
to talk to them::

    async with Sandbox(state_dir, clusters=3, seed=SeedSpec(sealed_secrets=50)) as sandbox:
        ...  # DIR/kubeconfig (contexts sandbox-1..N), DIR/sealfleet.toml, DIR/seed.json

``DIR/ready`` exists exactly while every cluster serves.  For benchmarks that must not
share a process (and a GIL) with the sandbox, :class:`SandboxProcess` runs
``sealfleet sandbox`` in a child process and waits for ``ready``.

Nothing in the daemon's runtime path imports this package (import-linter enforces it).
"""

from __future__ import annotations

from sealfleet.sandbox.runner import Sandbox, SandboxProcess
from sealfleet.sandbox.seeding import SeedSpec

__all__ = ["Sandbox", "SandboxProcess", "SeedSpec"]
