"""The real ``age`` CLI (Debian's package), for tests that prove a backup opens without
sealfleet.  CI installs it (``.ci/run``: ``apt-get install age``), so there a missing
binary fails the test; elsewhere it skips with the command that installs it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest


def age_binary(name: str = "age") -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed, but .ci/run installs it (apt-get install age)")
        pytest.skip(f"{name} is not installed (apt-get install age)")
    return found


def age_decrypt(encrypted: Path, out: Path, *, identity: Path) -> subprocess.CompletedProcess[str]:
    """``age -d -i IDENTITY -o OUT FILE``, as a user recovering without sealfleet would."""
    return subprocess.run([age_binary(), "-d", "-i", str(identity), "-o", str(out),
                           str(encrypted)], capture_output=True, text=True, timeout=60,
                          check=False)


def age_decrypt_with_passphrase(encrypted: Path, out: Path, *,
                                passphrase: str) -> subprocess.CompletedProcess[str]:
    """``age -d`` typing the passphrase at a terminal: age reads it only from a tty,
    so ``script`` (util-linux) gives it a pseudo-terminal fed from our stdin."""
    script = shutil.which("script")
    if script is None:
        pytest.fail("script (util-linux, essential in Debian) is not installed")
    command = shlex.join([age_binary(), "-d", "-o", str(out), str(encrypted)])
    return subprocess.run([script, "-qec", command, "/dev/null"], input=passphrase + "\n",
                          capture_output=True, text=True, timeout=60, check=False)


def age_keygen(directory: Path) -> tuple[Path, str]:
    """A fresh age identity file (mode 0600, as age-keygen writes it) and its recipient."""
    identity = directory / "identity.txt"
    subprocess.run([age_binary("age-keygen"), "-o", str(identity)], capture_output=True,
                   check=True, timeout=30)
    recipient = subprocess.run([age_binary("age-keygen"), "-y", str(identity)],
                               capture_output=True, text=True, check=True, timeout=30)
    return identity, recipient.stdout.strip()
