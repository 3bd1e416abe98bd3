"""The shipped Prometheus alert rules: valid, unit-tested by promtool, and complete.

``promtool check rules`` and ``promtool test rules`` (Debian's prometheus package ships
promtool; ``.ci/run`` installs it, and in CI a missing promtool fails these tests).  The
rule tests are themselves checked: without its ``for:``, every alert must fail them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CONFIG = Path(__file__).resolve().parents[2] / "config"
RULES = CONFIG / "sealfleet.rules.yml"
RULE_TESTS = CONFIG / "sealfleet.rules.test.yml"
PROMTOOL = Path("/usr/bin/promtool")
# What the key-lifecycle issue asks alerts for, by the name each has here.
REQUIRED = {"SealfleetSealingKeyStale", "SealfleetClusterDrifting", "SealfleetKeyRenewalFailing",
            "SealfleetBackupMissingAfterNewKey", "SealfleetControllerCrashLooping"}


@pytest.fixture(scope="module")
def promtool() -> Path:
    if not PROMTOOL.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PROMTOOL} is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return PROMTOOL


def run(promtool: Path, *args: str, cwd: Path = CONFIG) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules(promtool: Path) -> None:
    result = run(promtool, "check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_the_rules_pass_their_promtool_unit_tests(promtool: Path) -> None:
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_waits_has_a_severity_and_says_what_to_do() -> None:
    alerts = rules()
    assert {rule["alert"] for rule in alerts} >= REQUIRED
    for rule in alerts:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) >= {"summary", "description"}, rule["alert"]


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert fired == names
    assert quiet == names


@pytest.mark.parametrize("alert", sorted({rule["alert"] for rule in rules()}))
def test_the_unit_tests_catch_an_alert_that_fires_too_early(promtool: Path, tmp_path: Path,
                                                            alert: str) -> None:
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                del rule["for"]
    (tmp_path / RULES.name).write_text(yaml.safe_dump(document))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert f"alertname: {alert}," in result.stdout + result.stderr
